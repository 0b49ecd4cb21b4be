"""One generation loop for every backend: ``prefill`` once, then ``decode`` one token per row per step.

A model that offers ``prefill(batch) -> (logits (B, vocab), state)`` and ``decode(state, tokens (B,)) -> (logits,
state)`` (:class:`dsvl_adapt.runtimes.contract.GenerativeModel`) generates through :func:`stream_tokens` /
:func:`generate_tokens`; the backend only decides how the KV cache is held (transformers' ``DynamicCache``, ONNX
Runtime ``OrtValue`` buffers, the state inside an OpenVINO infer request).

Rules the loop applies, the same on every backend:

* **left padding**: every row's last ``attention_mask`` entry is 1 (a ``ValueError`` otherwise); position ids come
  from the mask (``cumsum - 1``, :func:`positions_from_mask`), and the mask grows by one column per step;
* **greedy** (``argmax``) unless ``settings.do_sample``; sampling divides the logits by ``temperature``, keeps the
  smallest set of tokens whose probability reaches ``top_p`` (nucleus) and draws with ``numpy``'s PCG64 seeded by
  ``settings.seed`` - the same seed gives the same tokens, on every backend whose logits agree;
* **stop** when every row has produced one of ``eos_token_id`` or after ``max_new_tokens`` steps; a row that has
  stopped gets ``pad_token_id`` (default: the first EOS id, else 0) and is still fed (its tokens are ignored), so the
  batch keeps its shape. ``eos_token_id=None`` never stops early: a fixed-length continuation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .contract import DecodeState, GenerationSettings

__all__ = [
    "CacheState",
    "Decoder",
    "check_left_padded",
    "eos_ids",
    "generate_tokens",
    "next_tokens",
    "positions_from_mask",
    "settings_from_arguments",
    "stream_tokens",
]


class Decoder(Protocol):
    """What the loop needs from a model (a subset of :class:`~dsvl_adapt.runtimes.contract.GenerativeModel`)."""

    def prefill(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, DecodeState]:
        ...

    def decode(self, state: DecodeState, next_tokens: np.ndarray) -> tuple[np.ndarray, DecodeState]:
        ...


@dataclass
class CacheState:
    """The state between decode steps that every backend shares: the attention mask so far (B, length), each row's
    last position id (B,), and ``cache`` - however the backend holds keys and values (None where the compiled model
    holds them). ``request`` ties an OpenVINO state to the infer request run it belongs to."""

    attention_mask: np.ndarray
    last_position: np.ndarray
    cache: Any = None
    request: int = 0

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])

    def advanced(self, cache: Any) -> CacheState:
        """The state after one more token per row: the mask one column longer, positions one further."""
        ones = np.ones((self.batch_size, 1), dtype=self.attention_mask.dtype)
        return CacheState(np.concatenate([self.attention_mask, ones], axis=1), self.last_position + 1, cache,
                          self.request)


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """``cumsum(mask) - 1`` clipped at 0 (int64): positions that skip left padding."""
    mask = np.asarray(attention_mask, dtype=np.int64)
    return np.maximum(mask.cumsum(-1) - 1, 0)


def check_left_padded(input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
    """Raise ``ValueError`` unless ids and mask are both (batch, sequence) and every row ends with a real token."""
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must both be "
                         "(batch, sequence)")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: generation needs a prompt")
    if (attention_mask[:, -1] == 0).any():
        raise ValueError("generation needs left padding: every row's last attention_mask entry must be 1 "
                         "(encode with padding_side='left')")


def eos_ids(eos_token_id: int | Sequence[int] | None) -> np.ndarray:
    if eos_token_id is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(eos_token_id, (int, np.integer)):
        return np.array([int(eos_token_id)], dtype=np.int64)
    return np.array([int(t) for t in eos_token_id], dtype=np.int64)


def _check_settings(settings: GenerationSettings) -> None:
    if settings.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {settings.max_new_tokens}")
    if settings.do_sample:
        if not settings.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {settings.temperature}")
        if not 0 < settings.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {settings.top_p}")


def next_tokens(logits: np.ndarray, settings: GenerationSettings, rng: np.random.Generator | None) -> np.ndarray:
    """The next token of every row (B,) int64 from last-position logits (B, vocab): argmax, or a top-p sample."""
    logits = np.asarray(logits, dtype=np.float64)
    if not settings.do_sample:
        return logits.argmax(-1).astype(np.int64)
    assert rng is not None
    scaled = logits / float(settings.temperature)
    scaled -= scaled.max(-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(-1, keepdims=True)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the tokens ranked above each one
    keep = before < float(settings.top_p)  # the first token is always kept
    sorted_probs = np.where(keep, sorted_probs, 0.0)
    sorted_probs /= sorted_probs.sum(-1, keepdims=True)
    draws = rng.random(logits.shape[0])
    picked = (np.cumsum(sorted_probs, axis=-1) < draws[:, None]).sum(-1)
    picked = np.minimum(picked, keep.sum(-1) - 1)
    return np.take_along_axis(order, picked[:, None], axis=-1)[:, 0].astype(np.int64)


def stream_tokens(model: Decoder, batch: Mapping[str, Any], settings: GenerationSettings) -> Iterator[np.ndarray]:
    """Yield each step's new tokens (B,) int64: one prefill, then one decode per further token."""
    _check_settings(settings)
    eos = eos_ids(settings.eos_token_id)
    pad = int(settings.pad_token_id) if settings.pad_token_id is not None else (int(eos[0]) if eos.size else 0)
    if settings.max_new_tokens == 0:
        return
    rng = np.random.Generator(np.random.PCG64(settings.seed)) if settings.do_sample else None
    logits, state = model.prefill(batch)
    done = np.zeros(np.asarray(logits).shape[0], dtype=bool)
    for step in range(int(settings.max_new_tokens)):
        token = np.where(done, pad, next_tokens(logits, settings, rng)).astype(np.int64)
        done |= np.isin(token, eos)
        yield token
        if done.all() or step == settings.max_new_tokens - 1:
            return
        logits, state = model.decode(state, token)


def generate_tokens(model: Decoder, batch: Mapping[str, Any], settings: GenerationSettings) -> np.ndarray:
    """New token ids (B, steps) int64, ``steps <= settings.max_new_tokens`` (:func:`stream_tokens` collected)."""
    steps = list(stream_tokens(model, batch, settings))
    if steps:
        return np.stack(steps, axis=1)
    rows = np.asarray(batch["input_ids"]).shape[0]
    return np.zeros((rows, 0), dtype=np.int64)


def settings_from_arguments(settings: GenerationSettings | int | None, *, max_new_tokens: int | None = None,
                            eos_token_id: int | Sequence[int] | None = None,
                            pad_token_id: int | None = None) -> GenerationSettings:
    """``generate(batch, settings)`` or the older ``generate(batch, max_new_tokens, eos_token_id=, pad_token_id=)``
    (greedy), as one :class:`GenerationSettings`."""
    if isinstance(settings, GenerationSettings):
        if max_new_tokens is not None or eos_token_id is not None or pad_token_id is not None:
            raise TypeError("pass either GenerationSettings or max_new_tokens/eos_token_id/pad_token_id, not both")
        return settings
    if settings is not None and max_new_tokens is not None:
        raise TypeError("max_new_tokens given twice")
    count = settings if settings is not None else max_new_tokens
    if count is None:
        raise TypeError("generate needs GenerationSettings (or max_new_tokens)")
    return GenerationSettings(max_new_tokens=int(count), eos_token_id=eos_token_id, pad_token_id=pad_token_id)
