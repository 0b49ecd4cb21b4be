"""``window``: the seed's dynamic attention masking, for comparison (PyTorch only).

The seed restricts the text tokens to a local window of image tokens. Here the window is a ``g × g`` block of the
image's ``n × n`` patch grid (``K = g²``), centred on the patch that receives the most attention in the vision
tower's last layer (the saliency ``select`` ranks by; clamped to the grid), chosen per image at prefill. Every
text token (prompt and answer) reads only those ``K`` image tokens; the image tokens themselves attend as before.
All ``N`` image tokens stay in the sequence, so prefill computes all of them: this method saves no time and no
prefill memory, which is the point of comparing it with the methods that shorten the sequence. See
:mod:`dsvl_adapt.compress.tokens.masking`.
"""

from __future__ import annotations

from typing import Any

import torch

from .contract import square_tokens_for_keep
from .masking import ImageTokenMask, MaskingReducer, grid_side
from .select import LastLayerAttention, _last_vision_layer


class WindowMask(ImageTokenMask):
    """Text reads a ``g × g`` window of the image's patches around its most attended patch."""

    def __init__(self, model: Any, image_tokens: int, source_tokens: int) -> None:
        super().__init__(model, image_tokens, source_tokens)
        self.side, self.window = grid_side(source_tokens), grid_side(image_tokens)
        object.__setattr__(self, "_attention", LastLayerAttention(_last_vision_layer(model)))

    def window_of(self, received: torch.Tensor) -> torch.Tensor:
        """(B, N) attention received -> (B, N) bool: the window's patches."""
        n, g = self.side, self.window
        peak = received.argmax(dim=1)
        top = (peak // n - g // 2).clamp(0, n - g)
        left = (peak % n - g // 2).clamp(0, n - g)
        rows = torch.arange(n, device=received.device).repeat_interleave(n)
        cols = torch.arange(n, device=received.device).repeat(n)
        return ((rows >= top[:, None]) & (rows < top[:, None] + g)
                & (cols >= left[:, None]) & (cols < left[:, None] + g))

    def choose(self, image: torch.Tensor, kwargs: dict[str, Any]) -> None:
        inside = self.window_of(self._attention.received())  # (B, N), in image order
        visible = torch.zeros_like(image)
        visible[image] = inside.reshape(-1)  # each row holds its image's N tokens in order
        self.text_visible = visible


class WindowReducer(MaskingReducer):
    """The registered ``window`` method."""

    name = "window"
    description = ("the seed's dynamic attention masking: text reads a g x g window of image patches around the most "
                   "attended one; all N tokens stay in the sequence; PyTorch only, for comparison")
    mask_type = WindowMask

    def image_tokens(self, source_tokens: int, keep: float) -> int:
        return square_tokens_for_keep(source_tokens, keep)

    def apply(self, model: Any, processor: Any, image_tokens: int) -> dict[str, Any]:
        self.install(model, image_tokens, int(processor.num_image_tokens))
        side = grid_side(image_tokens)
        return {"window": f"{side}x{side}"}


__all__ = ["WindowMask", "WindowReducer"]
