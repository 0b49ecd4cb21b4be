"""The place a token reducer sits: a DeepSeek-VL aligner followed by a reduction of its output tokens.

:class:`ReducingAligner` subclasses transformers' ``DeepseekVLAligner`` and keeps its parameters under the
same names (``linear1``, ``linear2``), so the saved weights are exactly the aligner's and plain transformers
loads them; the reducer itself holds no saved state. ``get_image_features`` (and so ``forward``,
``generate`` and the exported vision graph) then returns ``K`` embeddings per image instead of ``N``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ReducingAligner(nn.Module):
    """``aligner`` (its own modules, moved here) then ``reducer(vision_encodings, aligned) -> (B, K, D)``."""

    def __init__(self, aligner: nn.Module, reducer: nn.Module) -> None:
        super().__init__()
        self.config = getattr(aligner, "config", None)
        for name, child in aligner.named_children():
            self.add_module(name, child)
        self._aligner_forward = type(aligner).forward
        self.token_reducer = reducer

    def forward(self, vision_encodings: torch.Tensor) -> torch.Tensor:
        aligned = self._aligner_forward(self, vision_encodings)
        return self.token_reducer(vision_encodings, aligned)


def install(model: Any, reducer: nn.Module) -> None:
    """Put ``reducer`` after the aligner of ``model`` (a ``DeepseekVLForConditionalGeneration``)."""
    inner = model.model
    aligner = inner.aligner
    if isinstance(aligner, ReducingAligner):
        raise ValueError("this model already carries a token reducer after its aligner (config.token_budget); "
                         "apply one token budget to a model, from its unreduced form")
    inner.aligner = ReducingAligner(aligner, reducer)


def installed(model: Any) -> nn.Module | None:
    """The reducer after the aligner of ``model``, or None."""
    aligner = model.model.aligner
    return aligner.token_reducer if isinstance(aligner, ReducingAligner) else None


__all__ = ["ReducingAligner", "install", "installed"]
