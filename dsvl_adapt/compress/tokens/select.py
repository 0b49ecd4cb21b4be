"""``select``: VisionZip-style dominant tokens plus merged contextual tokens, after the aligner.

Of the ``N`` aligned image tokens, ``K`` reach the language model:

* ``K - C`` **dominant** tokens: those that receive the most attention in the vision tower's last encoder
  layer (softmax(q kᵀ / √d) of that layer, averaged over its heads and over the queries; SigLIP has no CLS
  token, so "received attention" stands in for VisionZip's CLS attention), kept in image order;
* ``C`` **contextual** tokens (``C ≈ K · 10/64``, VisionZip's 54 + 10 split): the remaining tokens are
  grouped around ``C`` centres taken at even steps among them, each joining the centre it is most similar to
  (cosine of the vision features), and every group is averaged in the language model's space.

Why VisionZip rather than DivPrune: its selection is one TopK over scores the tower already computes plus a
matrix product for the merge, all with static shapes (``K`` is fixed), so it exports to ONNX/OpenVINO as
plain TopK/Gather/MatMul; DivPrune's greedy max-min selection is ``K`` sequential steps (a loop of ``K``
iterations in the graph) and drops, rather than merges, what it does not keep.

The attention is recomputed from the last layer's input (captured by a forward pre-hook) with that layer's
own ``layer_norm1``, ``q_proj`` and ``k_proj``: no weights are added and none are saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .aligner import install
from .contract import TokenBudget, tokens_for_keep

#: VisionZip keeps 54 dominant + 10 contextual tokens of 64.
CONTEXTUAL_SHARE = 10 / 64


def contextual_count(image_tokens: int, source_tokens: int) -> int:
    """How many of ``K`` tokens are merged contextual ones (0 when nothing is dropped or K is tiny)."""
    if image_tokens >= source_tokens or image_tokens < 4:
        return 0
    return max(1, round(image_tokens * CONTEXTUAL_SHARE))


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(B, L, W) tokens at (B, K) indices -> (B, K, W), as one flat Gather (no Expand: ONNX Runtime's symbolic
    shape inference, which its quantizer runs, cannot follow an Expand to a data-dependent shape)."""
    batch, length, width = tokens.shape
    offsets = (torch.arange(batch, device=tokens.device) * length).unsqueeze(1)
    flat = tokens.reshape(batch * length, width)[(indices + offsets).reshape(-1)]
    return flat.reshape(batch, indices.shape[1], width)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, written out with ops ONNX Runtime's shape inference follows (``F.normalize``
    lowers to an Expand, ``norm`` to a ReduceL2 it cannot)."""
    x = x.float()
    return x / (x * x).sum(dim=-1, keepdim=True).clamp(min=1e-12).sqrt()


class LastLayerAttention:
    """Captures the input of the vision tower's last encoder layer and recomputes its attention received."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.hidden: torch.Tensor | None = None
        self.handle = layer.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.hidden = args[0] if args else kwargs["hidden_states"]

    def received(self) -> torch.Tensor:
        """(B, N): attention each token receives, averaged over heads and queries."""
        if self.hidden is None:
            raise RuntimeError("the vision tower's last layer did not run before the token reducer")
        attention = self.layer.self_attn
        x = self.layer.layer_norm1(self.hidden)
        head_dim = attention.head_dim
        batch, length, _ = x.shape
        q = attention.q_proj(x).view(batch, length, -1, head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(batch, length, -1, head_dim).transpose(1, 2)
        probs = torch.softmax((q @ k.transpose(-1, -2)) * head_dim ** -0.5, dim=-1)
        return probs.mean(dim=1).mean(dim=1)


class DominantContextualSelect(nn.Module):
    """Keeps ``K`` of ``N`` aligned tokens: dominant by received attention, the rest merged into contexts."""

    def __init__(self, vision_layer: nn.Module, image_tokens: int, source_tokens: int) -> None:
        super().__init__()
        self.image_tokens = image_tokens
        self.source_tokens = source_tokens
        self.contextual = contextual_count(image_tokens, source_tokens)
        self.dominant = image_tokens - self.contextual
        # not a submodule: the layer belongs to the vision tower, its weights are saved there once
        object.__setattr__(self, "_attention", LastLayerAttention(vision_layer))

    def extra_repr(self) -> str:
        return f"N={self.source_tokens}, K={self.image_tokens} (dominant {self.dominant}, contextual {self.contextual})"

    def forward(self, vision_encodings: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        if self.image_tokens >= self.source_tokens:
            return aligned
        batch, length, width = aligned.shape
        positions = torch.arange(length, device=aligned.device)
        scores = self._attention.received()  # (B, N)
        dominant = torch.topk(scores, self.dominant, dim=1).indices
        # image order: the smallest position first (TopK on negated positions keeps shapes static)
        dominant = torch.topk(-dominant, self.dominant, dim=1).values.neg()
        kept = gather_tokens(aligned, dominant)
        if self.contextual == 0:
            return kept
        rest_count = length - self.dominant
        # 1 where a dominant token sits (indices are distinct; a sum, as ONNX Runtime's shape inference
        # cannot follow ReduceMax-based `any`)
        chosen = (positions.view(1, length, 1) == dominant.unsqueeze(1)).to(aligned.dtype).sum(dim=-1)
        # the unchosen positions in image order: largest key = unchosen and earliest
        key = (1.0 - chosen) * (2 * length) - positions.to(aligned.dtype)
        rest = torch.topk(key, rest_count, dim=1).indices
        rest_aligned = gather_tokens(aligned, rest)
        rest_vision = gather_tokens(vision_encodings, rest)
        step = max(1, rest_count // self.contextual)
        centres = rest_vision[:, torch.arange(self.contextual, device=aligned.device) * step]
        assignment = (_unit(rest_vision) @ _unit(centres).transpose(1, 2)).argmax(dim=-1)
        groups = torch.arange(self.contextual, device=aligned.device)
        one_hot = (assignment.unsqueeze(-1) == groups).to(aligned.dtype)  # (B, R, C)
        sums = one_hot.transpose(1, 2) @ rest_aligned
        counts = one_hot.sum(dim=1).clamp(min=1.0).unsqueeze(-1)
        return torch.cat([kept, sums / counts], dim=1)


def _last_vision_layer(model: Any) -> nn.Module:
    config = model.config
    if getattr(config, "high_res_vision_config", None) is not None:
        raise ValueError("prune.tokens.method=select supports DeepSeek-VL (SigLIP) models; the SigLIP+SAM hybrid "
                         "merges two towers before its aligner and is not supported yet: use "
                         "prune.tokens.method=resolution or a plain DeepSeek-VL checkpoint")
    return model.model.vision_model.encoder.layers[-1]


class SelectReducer:
    """The registered ``select`` method."""

    name = "select"
    description = ("VisionZip-style: dominant tokens by the vision tower's last-layer attention, the rest merged "
                   "into contextual tokens, after the aligner; static shapes, exports with K tokens")
    deploys = "graphs"

    def image_tokens(self, source_tokens: int, keep: float) -> int:
        return tokens_for_keep(source_tokens, keep)

    def apply(self, model: Any, processor: Any, image_tokens: int) -> dict[str, Any]:
        source = int(processor.num_image_tokens)
        module = DominantContextualSelect(_last_vision_layer(model), image_tokens, source)
        install(model, module)
        processor.num_image_tokens = image_tokens
        return {"dominant_tokens": module.dominant, "contextual_tokens": module.contextual}

    def restore(self, model: Any, budget: TokenBudget) -> None:
        install(model, DominantContextualSelect(_last_vision_layer(model), budget.image_tokens,
                                                budget.source_image_tokens))


__all__ = ["CONTEXTUAL_SHARE", "DominantContextualSelect", "SelectReducer", "contextual_count"]
