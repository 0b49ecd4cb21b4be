"""``text-guided``: FastV-style, the prompt picks the image tokens after layer L of the language model (PyTorch only).

FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", 2024) ranks the image tokens by the attention
the last prompt token gives them in layer ``L`` (averaged over heads) and drops all but the top ``K`` for the
layers after ``L``. ``L = 2`` as in FastV (the last layer for a shallower model). Here the drop is FastV's
masking form: the dropped tokens stay in the sequence and no query reads them in the layers after ``L``, so the
accuracy is FastV's but the time is not (the sequence is not shortened). K depends on the prompt, so graphs
with a fixed layout cannot express it (a KV cache whose length differs per layer): ``deploys="torch"``.

The rater is the last prompt token: in training (``labels`` given) the last position whose label is ignored,
so the answer tokens never choose what the prompt reads; at inference the prefill's last token. The choice is
made once per prefill and kept for the decode steps. See :mod:`dsvl_adapt.compress.tokens.masking`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .contract import tokens_for_keep
from .masking import ImageTokenMask, MaskingReducer

#: FastV's layer: image tokens are ranked in layer 2 and dropped after it.
RANK_LAYER = 2
IGNORE_INDEX = -100


def rank_layer(model: Any) -> int:
    return min(RANK_LAYER, int(model.config.text_config.num_hidden_layers) - 1)


class TextGuidedMask(ImageTokenMask):
    """Ranks image tokens by the last prompt token's attention in layer L; later layers read the top K."""

    def __init__(self, model: Any, image_tokens: int, source_tokens: int) -> None:
        super().__init__(model, image_tokens, source_tokens)
        layers = model.model.language_model.layers
        self.layer = rank_layer(model)
        object.__setattr__(self, "_ranked_layer", layers[self.layer])
        self._handles.append(layers[self.layer].register_forward_pre_hook(self._rank, with_kwargs=True))
        for later in layers[self.layer + 1:]:
            self._handles.append(later.register_forward_pre_hook(self._drop, with_kwargs=True))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()} after layer {self.layer}"

    def _raters(self, length: int) -> torch.Tensor:
        """(B,) the last prompt position of each row."""
        if self._labels is None:
            return torch.full((self._image.shape[0],), length - 1, device=self._image.device)
        prompt = self._labels == IGNORE_INDEX
        positions = torch.arange(length, device=prompt.device).expand_as(prompt)
        # the last ignored position before the first answer token
        answer_start = torch.where(~prompt, positions, length).min(dim=1).values
        return (answer_start - 1).clamp(min=0)

    def _rank(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._fresh:
            return
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        hidden = args[0] if args else kwargs["hidden_states"]
        attention = module.self_attn
        x = module.input_layernorm(hidden)
        batch, length, _ = x.shape
        head_dim = attention.head_dim
        q = attention.q_proj(x).view(batch, length, -1, head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(batch, length, -1, head_dim).transpose(1, 2)
        cos, sin = kwargs["position_embeddings"]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, attention.num_key_value_groups)
        raters = self._raters(length)
        rows = torch.arange(batch, device=x.device)
        q_last = q[rows, :, raters].unsqueeze(2)  # (B, H, 1, D)
        logits = (q_last @ k.transpose(-1, -2)) * head_dim ** -0.5  # (B, H, 1, T)
        allowed = self.base[rows, :, raters - (self._image.shape[1] - length)]  # (B, 1, T)
        logits = logits.masked_fill(~allowed.unsqueeze(2), torch.finfo(logits.dtype).min)
        received = torch.softmax(logits.float(), dim=-1).mean(dim=1)[:, 0]  # (B, T)
        received = received.masked_fill(~self._image, -1.0)
        kept = torch.topk(received, self.image_tokens, dim=1).indices
        keep = torch.zeros_like(self._image)
        keep[rows.unsqueeze(1), kept] = True
        self.dropped = self._image & ~keep

    def _drop(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.dropped is None:
            raise RuntimeError("text-guided: the ranking layer did not run before the later layers")
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs["attention_mask"] = self.drop_mask(hidden.dtype)
        return args, kwargs


class TextGuidedReducer(MaskingReducer):
    """The registered ``text-guided`` method."""

    name = "text-guided"
    description = ("FastV-style: the last prompt token's attention in layer 2 of the language model picks K image "
                   "tokens, the later layers read only those (masking); PyTorch only")
    mask_type = TextGuidedMask

    def image_tokens(self, source_tokens: int, keep: float) -> int:
        return tokens_for_keep(source_tokens, keep)

    def apply(self, model: Any, processor: Any, image_tokens: int) -> dict[str, Any]:
        if getattr(model.config, "high_res_vision_config", None) is not None:
            raise ValueError("prune.tokens.method=text-guided supports DeepSeek-VL (SigLIP) models, not the hybrid yet")
        self.install(model, image_tokens, int(processor.num_image_tokens))
        return {"rank_layer": rank_layer(model)}


__all__ = ["RANK_LAYER", "TextGuidedMask", "TextGuidedReducer"]
