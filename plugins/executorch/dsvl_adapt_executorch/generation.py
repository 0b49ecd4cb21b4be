"""The decoding loop over a model's ``prefill`` and ``decode`` (greedy, or sampling with temperature / top-p / seed).

A small stand-in until the core's shared loop (issue 16's KV-cache work, ``dsvl_adapt.runtimes.generation``) lands on
main; then :func:`stream_tokens` should be replaced by it. It follows :class:`GenerationSettings` exactly: stop on any
EOS or after ``max_new_tokens``, rows that stopped are filled with ``pad_token_id`` (default: the first EOS, else 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from dsvl_adapt.runtimes.contract import DecodeState, GenerationSettings

__all__ = ["eos_ids", "next_tokens", "stream_tokens"]


def eos_ids(eos_token_id: int | Sequence[int] | None) -> np.ndarray:
    if eos_token_id is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(eos_token_id, (int, np.integer)):
        return np.array([int(eos_token_id)], dtype=np.int64)
    return np.array([int(t) for t in eos_token_id], dtype=np.int64)


def next_tokens(logits: np.ndarray, settings: GenerationSettings, rng: np.random.Generator) -> np.ndarray:
    """One token per row from ``logits`` (B, vocab): argmax, or a draw from the temperature / top-p distribution."""
    if not settings.do_sample:
        return logits.argmax(-1).astype(np.int64)
    if settings.temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {settings.temperature}")
    if not 0 < settings.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {settings.top_p}")
    scaled = logits.astype(np.float64) / settings.temperature
    probs = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.empty(logits.shape[0], dtype=np.int64)
    for row, p in enumerate(probs):
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cumulative, settings.top_p) + 1)]  # smallest set reaching top_p
        kept = p[keep] / p[keep].sum()
        out[row] = keep[rng.choice(len(keep), p=kept)]
    return out


def stream_tokens(prefill: Callable[[Mapping[str, Any]], tuple[np.ndarray, DecodeState]],
                  decode: Callable[[DecodeState, np.ndarray], tuple[np.ndarray, DecodeState]],
                  batch: Mapping[str, Any], settings: GenerationSettings) -> Iterator[np.ndarray]:
    """Yields each step's new tokens (B,): one prefill of image + prompt, then one decode per token."""
    eos = eos_ids(settings.eos_token_id)
    pad = int(settings.pad_token_id) if settings.pad_token_id is not None else (int(eos[0]) if eos.size else 0)
    rng = np.random.default_rng(settings.seed)
    if settings.max_new_tokens <= 0:
        return
    logits, state = prefill(batch)
    done = np.zeros(logits.shape[0], dtype=bool)
    for step in range(int(settings.max_new_tokens)):
        token = np.where(done, pad, next_tokens(logits, settings, rng))
        yield token
        done |= np.isin(token, eos)
        if done.all() or step + 1 == settings.max_new_tokens:
            return
        logits, state = decode(state, token)
