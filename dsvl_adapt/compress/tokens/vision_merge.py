"""``vision-merge``: ToMe-style bipartite token merging inside the vision tower.

After each encoder layer of the SigLIP tower ``r`` tokens are merged away (Bolya et al., "Token Merging: Your ViT
but Faster", 2023), so the later layers, the aligner and the language model all see fewer tokens; after the last
layer exactly ``K`` remain:

* the current tokens are split alternately into two sets A and B; each A token finds its most similar B token
  (cosine of the layer's attention **keys**, averaged over heads, as ToMe does);
* the ``r`` A tokens with the most similar partners are averaged into them, weighted by how many source patches
  each already stands for (its *size*); the other A tokens stay;
* ``r`` per layer is spread evenly over the layers (at most half the tokens per step, the bipartite limit), and
  the K tokens that reach the aligner are put back in image order (each merged token sits at the first patch it
  covers).

Where this differs from ToMe: no proportional attention (``log(size)`` added to the attention logits), because
that would mean replacing SigLIP's attention; the merge happens after the whole layer (ToMe merges between the
attention and the MLP). Both keep the layers as transformers defines them, so the saved weights are exactly the
model's. Every step is a TopK, Gather or MatMul with shapes fixed by ``K``: the exported vision graph takes the
full image and gives ``K`` tokens, and the tower's later layers run on fewer tokens (the time it saves is the
tower's, which ``select`` cannot save).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .contract import TokenBudget, tokens_for_keep
from .select import _unit, gather_tokens


def merge_schedule(source_tokens: int, image_tokens: int, layers: int) -> list[int]:
    """Tokens merged after each of ``layers`` encoder layers to go from N to K: even, at most half per step.

    Raises ``ValueError`` when ``layers`` bipartite steps cannot reach K (each step at most halves the count).
    """
    schedule, count = [], source_tokens
    for layer in range(layers):
        left = layers - layer
        # the most tokens the remaining steps can still halve down to K
        reachable = image_tokens * 2 ** (left - 1)
        merge = min(count // 2, max(-(-(count - image_tokens) // left), count - reachable))
        schedule.append(merge)
        count -= merge
    if count != image_tokens:
        raise ValueError(f"vision-merge: {layers} vision layers can merge {source_tokens} tokens down to {count} at "
                         f"most (each step at most halves them), not to {image_tokens}; ask for more tokens "
                         "(prune.tokens.keep) or use prune.tokens.method=select")
    return schedule


def bipartite_merge(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, first: torch.Tensor,
                    merge: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ToMe step: ``merge`` of the A tokens (even places) averaged into their most similar B tokens (odd).

    ``x`` (B, L, W) tokens, ``metric`` (B, L, M) what similarity is measured on, ``size`` (B, L, 1) source patches
    per token, ``first`` (B, L) the first patch each covers. Returns the three for the ``L - merge`` tokens left:
    the unmerged A tokens, then the B tokens.
    """
    if merge <= 0:
        return x, size, first
    unit = _unit(metric)
    a_metric, b_metric = unit[:, ::2], unit[:, 1::2]
    similarity = a_metric @ b_metric.transpose(1, 2)  # (B, |A|, |B|)
    best, partner = similarity.max(dim=-1)  # (B, |A|)
    a_count, b_count = a_metric.shape[1], b_metric.shape[1]
    order = torch.topk(best, a_count, dim=1).indices  # most similar first
    merged, kept = order[:, :merge], order[:, merge:]

    weighted = x * size
    a_weighted, b_weighted = weighted[:, ::2], weighted[:, 1::2]
    a_size, b_size = size[:, ::2], size[:, 1::2]
    destination = torch.gather(partner, 1, merged)  # (B, r) indices into B
    one_hot = (destination.unsqueeze(-1) == torch.arange(b_count, device=x.device)).to(x.dtype)  # (B, r, |B|)
    b_weighted = b_weighted + one_hot.transpose(1, 2) @ gather_tokens(a_weighted, merged)
    b_size = b_size + one_hot.transpose(1, 2) @ gather_tokens(a_size, merged)
    # a merged token covers its partner's first patch or its own, whichever comes first
    a_first, b_first = first[:, ::2], first[:, 1::2]
    merged_first = torch.gather(a_first, 1, merged).to(x.dtype)
    # above every patch index (not the current count: a token can cover a patch far beyond it); exact in fp32
    big = float(2 ** 24)
    candidates = one_hot * merged_first.unsqueeze(-1) + (1.0 - one_hot) * big  # (B, r, |B|)
    b_first = torch.minimum(b_first.to(x.dtype), candidates.min(dim=1).values)
    kept_weighted = gather_tokens(a_weighted, kept)
    kept_size = gather_tokens(a_size, kept)
    kept_first = torch.gather(a_first, 1, kept)
    size = torch.cat([kept_size, b_size], dim=1)
    x = torch.cat([kept_weighted, b_weighted], dim=1) / size
    first = torch.cat([kept_first.to(x.dtype), b_first], dim=1)
    return x, size, first.to(torch.long)


class VisionTokenMerge(nn.Module):
    """Forward hooks on the vision tower's encoder layers that merge tokens after each one (see the module doc).

    Holds no weights: the similarity uses the keys each layer's attention computes anyway (captured from its
    ``k_proj`` by a forward hook, so nothing is computed twice).
    """

    def __init__(self, vision_model: nn.Module, image_tokens: int, source_tokens: int) -> None:
        super().__init__()
        layers = list(vision_model.encoder.layers)
        self.image_tokens = image_tokens
        self.source_tokens = source_tokens
        self.schedule = merge_schedule(source_tokens, image_tokens, len(layers))
        self._state: dict[str, torch.Tensor] = {}
        self._handles = [layers[0].register_forward_pre_hook(self._start, with_kwargs=True)]
        for layer, merge in zip(layers, self.schedule):
            if merge:
                self._handles.append(layer.self_attn.k_proj.register_forward_hook(self._keep_keys))
                self._handles.append(layer.register_forward_hook(self._after(layer.self_attn.head_dim, merge)))
        # the tokens reach post_layernorm (and the aligner) in image order
        self._handles.append(vision_model.post_layernorm.register_forward_pre_hook(self._in_image_order))

    def extra_repr(self) -> str:
        return f"N={self.source_tokens}, K={self.image_tokens}, merged per layer {self.schedule}"

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A new image batch: every token is one patch, at its own place."""
        hidden = args[0] if args else kwargs["hidden_states"]
        batch, length, _ = hidden.shape
        self._state = {"size": torch.ones(batch, length, 1, dtype=hidden.dtype, device=hidden.device),
                       "first": torch.arange(length, device=hidden.device).unsqueeze(0).repeat(batch, 1)}

    def _keep_keys(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._state["keys"] = output

    def _after(self, head_dim: int, merge: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            keys = self._state.pop("keys")
            batch, length, _ = keys.shape
            keys = keys.view(batch, length, -1, head_dim).mean(dim=2)
            merged, self._state["size"], self._state["first"] = bipartite_merge(
                hidden, keys, self._state["size"], self._state["first"], merge)
            return (merged, *output[1:]) if isinstance(output, tuple) else merged
        return hook

    def _in_image_order(self, module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        first = self._state.get("first")
        if first is None or first.shape[1] != hidden.shape[1]:
            return args
        order = torch.topk(-first, first.shape[1], dim=1).indices  # the smallest first patch first
        return (gather_tokens(hidden, order), *args[1:])


def _vision_model(model: Any) -> nn.Module:
    if getattr(model.config, "high_res_vision_config", None) is not None:
        raise ValueError("prune.tokens.method=vision-merge supports DeepSeek-VL (SigLIP) models; the SigLIP+SAM "
                         "hybrid's SAM branch always gives 576 tokens: use a plain DeepSeek-VL checkpoint")
    return model.model.vision_model


class VisionMergeReducer:
    """The registered ``vision-merge`` method."""

    name = "vision-merge"
    description = ("ToMe-style bipartite merging after each vision-tower layer (key similarity, size-weighted), so "
                   "the tower's later layers run on fewer tokens too; static shapes, exports with K tokens")
    deploys = "graphs"

    def image_tokens(self, source_tokens: int, keep: float) -> int:
        return tokens_for_keep(source_tokens, keep)

    def _install(self, model: Any, image_tokens: int, source_tokens: int) -> VisionTokenMerge:
        vision = _vision_model(model)
        if hasattr(vision, "token_merge"):
            raise ValueError("this model's vision tower already merges tokens (config.token_budget)")
        module = VisionTokenMerge(vision, image_tokens, source_tokens)
        # registered as a child for printing; it holds no parameters or buffers, so the saved weights are unchanged
        vision.token_merge = module
        return module

    def apply(self, model: Any, processor: Any, image_tokens: int) -> dict[str, Any]:
        module = self._install(model, image_tokens, int(processor.num_image_tokens))
        processor.num_image_tokens = image_tokens
        return {"merged_per_layer": module.schedule}

    def restore(self, model: Any, budget: TokenBudget) -> None:
        self._install(model, budget.image_tokens, budget.source_image_tokens)


__all__ = ["VisionMergeReducer", "VisionTokenMerge", "bipartite_merge", "merge_schedule"]
