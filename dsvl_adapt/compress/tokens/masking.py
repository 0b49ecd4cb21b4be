"""Token budgets kept as attention masks: all ``N`` image tokens stay in the sequence, the text reads ``K``.

The two methods built on this, ``window`` (the seed's dynamic attention masking) and ``text-guided`` (FastV), are
the comparison points of issue 17: they decide per image (and, for FastV, per prompt) which image tokens count,
but a mask does not shorten the sequence, so prefill still computes all ``N`` positions. They run in **PyTorch
only** (``deploys="torch"``): the exported graphs and their KV cache take the mask-free layout.

:class:`ImageTokenMask` puts forward pre-hooks on the DeepSeek-VL model and its language model. It remembers,
per batch row, where the image tokens sit (from ``input_ids`` at prefill, extended by the new tokens at each
decode step) and gives the language model a 4D additive mask: causal, padding, and the method's rule. A row
always keeps its own position, so no query is left with nothing to attend to.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ImageTokenMask(nn.Module):
    """The shared state and hooks. A method sets, once per prefill, :attr:`text_visible` ((B, T): the image keys
    that queries which are not image tokens may read; ``window``) in :meth:`choose`, and/or :attr:`dropped`
    ((B, T): image keys no query reads in the layers that apply :meth:`with_drops`; ``text-guided``)."""

    def __init__(self, model: Any, image_tokens: int, source_tokens: int) -> None:
        super().__init__()
        self.image_tokens = image_tokens
        self.source_tokens = source_tokens
        self.image_token_id = int(model.config.image_token_id)
        self._image: torch.Tensor | None = None  # (B, T) bool: image positions of the sequence so far
        self._labels: torch.Tensor | None = None
        self._call_labels: torch.Tensor | None = None
        self._fresh = False
        self.text_visible: torch.Tensor | None = None  # (B, T) image keys the text may read
        self.dropped: torch.Tensor | None = None  # (B, T) image keys dropped in the later layers
        self.base: torch.Tensor | None = None  # (B, 1, q, T) the current call's causal + padding + text rule
        self._drop_mask: torch.Tensor | None = None  # the current call's additive mask without the dropped keys
        inner = model.model
        self._handles = [model.register_forward_pre_hook(self._on_top, with_kwargs=True),
                         inner.register_forward_pre_hook(self._on_model, with_kwargs=True),
                         inner.language_model.register_forward_pre_hook(self._on_language_model, with_kwargs=True)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def extra_repr(self) -> str:
        return f"N={self.source_tokens}, K={self.image_tokens} read by the text"

    # -- what a subclass decides ---------------------------------------------------------------------------------------

    def choose(self, image: torch.Tensor, kwargs: dict[str, Any]) -> None:
        """At prefill, before the language model runs: set :attr:`text_visible` for the rows' image positions
        (``image``, (B, T)). Nothing by default: a method that decides inside the language model (FastV, after
        layer L) sets :attr:`dropped` from its own layer hook."""

    # -- hooks ---------------------------------------------------------------------------------------------------------

    def _on_top(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # the labels stop at the top-level model (it computes the loss): a training batch's answer positions
        self._call_labels = kwargs.get("labels")

    def _on_model(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError(f"{type(self).__name__}: the model must be called with input_ids (the image tokens' "
                             "places are read from them)")
        image = input_ids == self.image_token_id
        # a prefill: the image is encoded in this call, or was just encoded by generate (transformers 5)
        self._fresh = (kwargs.get("pixel_values") is not None
                       or (kwargs.get("mm_encoder_outputs") or {}).get("image") is not None)
        if self._fresh:
            counts = image.sum(dim=1)
            if bool((counts != self.source_tokens).any()):
                raise ValueError(f"{type(self).__name__}: every row must hold one image of {self.source_tokens} "
                                 f"image tokens; got {counts.tolist()}")
            self._image = image
            self._labels = self._call_labels
        elif self._image is None or self._image.shape[0] != image.shape[0]:
            raise ValueError(f"{type(self).__name__}: a decode step came before any prefill with an image")
        else:  # a decode step: the new tokens are text
            self._image = torch.cat([self._image, image], dim=1)
            if self.text_visible is not None:
                self.text_visible = torch.cat([self.text_visible, torch.zeros_like(image)], dim=1)
            if self.dropped is not None:
                self.dropped = torch.cat([self.dropped, torch.zeros_like(image)], dim=1)

    def _on_language_model(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        embeds = kwargs.get("inputs_embeds")
        if self._fresh:
            self.text_visible = self.dropped = None
            self.choose(self._image, kwargs)
        padding = kwargs.get("attention_mask")
        total = self._image.shape[1]
        queries = embeds.shape[1]
        if padding is None:
            padding = torch.ones(embeds.shape[0], total, dtype=torch.bool, device=embeds.device)
        padding = padding[:, -total:].bool()
        self.base = self._allowed(padding, queries, total)
        self._drop_mask = None
        kwargs["attention_mask"] = self.additive(self.base, embeds.dtype)
        return args, kwargs

    def _allowed(self, padding: torch.Tensor, queries: int, total: int) -> torch.Tensor:
        """(B, 1, q, T) bool: causal, padding, and the text rule."""
        device = padding.device
        key = torch.arange(total, device=device)
        query = key[total - queries:]
        allowed = (key.view(1, 1, 1, total) <= query.view(1, 1, queries, 1)) & padding[:, None, None, :]
        if self.text_visible is not None:
            text_query = ~self._image[:, total - queries:]  # (B, q)
            hidden_image = self._image & ~self.text_visible  # (B, T)
            allowed = allowed & ~(text_query[:, None, :, None] & hidden_image[:, None, None, :])
        return allowed | (key.view(1, 1, 1, total) == query.view(1, 1, queries, 1))

    def with_drops(self, allowed: torch.Tensor) -> torch.Tensor:
        """``allowed`` without the :attr:`dropped` image keys (a position still reads itself)."""
        total = allowed.shape[-1]
        queries = allowed.shape[-2]
        key = torch.arange(total, device=allowed.device)
        own = key.view(1, 1, 1, total) == key[total - queries:].view(1, 1, queries, 1)
        return (allowed & ~self.dropped[:, None, None, :]) | own

    def drop_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask of :meth:`with_drops`, built once per call and shared by every layer that applies it."""
        if self._drop_mask is None:
            self._drop_mask = self.additive(self.with_drops(self.base), dtype)
        return self._drop_mask

    @staticmethod
    def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The float mask the attention adds: 0 where allowed, the dtype's lowest value elsewhere (eager and SDPA
        both take it)."""
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)


class MaskingReducer:
    """What the masking reducers share: PyTorch only, N tokens kept in the sequence, and their mask installed on
    ``model.model.token_mask`` (a module with no weights) when K < N, at apply and again at load."""

    deploys = "torch"
    masks = True
    mask_type: type[ImageTokenMask]

    def install(self, model: Any, image_tokens: int, source_tokens: int) -> None:
        if image_tokens < source_tokens:
            model.model.token_mask = self.mask_type(model, image_tokens, source_tokens)

    def restore(self, model: Any, budget: Any) -> None:
        self.install(model, budget.image_tokens, budget.source_image_tokens)


def grid_side(tokens: int) -> int:
    side = round(tokens ** 0.5)
    if side * side != tokens:
        raise ValueError(f"the image gives {tokens} tokens, not a square grid")
    return side


__all__ = ["ImageTokenMask", "MaskingReducer", "grid_side"]
