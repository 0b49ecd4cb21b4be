"""Generation speed through a model's own runtime: time to first token, time per output token, tokens/s, and the
KV cache's bytes per token (scorecard ``generation.<model>``).

Everything is timed around the runtime's :meth:`stream` (the same prefill/decode loop that answers are generated
with, :mod:`dsvl_adapt.runtimes.generation`), on one request (batch 1):

* ``ttft_ms``: from the call to the first token - image encoding, the prompt's prefill and the first token's choice;
* ``tpot_ms``: the time per further token (decode steps), ``(whole - ttft) / (tokens - 1)``;
* ``tokens_per_s``: tokens / whole time at the vertical's answer length (``max_answer_tokens``, greedy, stopping at
  EOS as answers do), and ``tokens_per_s_64`` at a fixed 64-token continuation (EOS ignored): the first is what a
  user of this vertical waits for, the second compares runtimes on equal work;
* ``kv_cache_bytes_per_token``: the cache the runtime holds after the prefill, divided by the positions cached
  (None where the runtime keeps no cache).

Medians over ``repeats`` runs after ``warmup`` runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..runtimes.contract import GenerationSettings

__all__ = ["CONTINUATION_TOKENS", "kv_bytes_per_token", "measure_generation", "time_stream"]

CONTINUATION_TOKENS = 64


def time_stream(model: Any, batch: Mapping[str, Any], settings: GenerationSettings) -> tuple[float, float, int]:
    """One generation through ``model.stream``: (ms to the first token, ms in all, tokens per row)."""
    start = time.perf_counter()
    first = None
    steps = 0
    for _ in model.stream(batch, settings):
        steps += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - start) * 1000.0, (end - start) * 1000.0, steps


def kv_bytes_per_token(model: Any, batch: Mapping[str, Any]) -> int | None:
    """Bytes the runtime's cache holds per cached position per row after a prefill of ``batch``; None without one."""
    measure = getattr(model, "kv_cache_bytes", None)
    if measure is None or getattr(model, "has_kv_cache", True) is False:
        return None
    _, state = model.prefill(batch)
    cached = int(measure(state))
    return cached // max(1, state.length * state.batch_size) if cached else None


def measure_generation(model: Any, batch: Mapping[str, Any], *, answer_tokens: int, eos_token_id: Any,
                       pad_token_id: int | None, warmup: int = 1, repeats: int = 3) -> dict[str, Any]:
    """The figures of the module docstring for ``model`` (a :class:`~dsvl_adapt.runtimes.contract.GenerativeModel`)
    on ``batch`` (one request)."""
    answer = GenerationSettings(max_new_tokens=answer_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    fixed = GenerationSettings(max_new_tokens=CONTINUATION_TOKENS, eos_token_id=None, pad_token_id=pad_token_id)
    for _ in range(warmup):
        time_stream(model, batch, fixed)
    runs = [time_stream(model, batch, fixed) for _ in range(max(1, repeats))]
    ttft = float(np.median([r[0] for r in runs]))
    whole = float(np.median([r[1] for r in runs]))
    tpot = (whole - ttft) / (CONTINUATION_TOKENS - 1)
    answers = [time_stream(model, batch, answer) for _ in range(max(1, repeats))]
    answer_ms = float(np.median([r[1] for r in answers]))
    produced = int(np.median([r[2] for r in answers]))
    return {"ttft_ms": round(ttft, 3), "tpot_ms": round(tpot, 3),
            "tokens_per_s": round(produced / answer_ms * 1000.0, 3) if answer_ms > 0 else None,
            "answer_tokens": produced, "max_answer_tokens": int(answer_tokens),
            "tokens_per_s_64": round(CONTINUATION_TOKENS / whole * 1000.0, 3) if whole > 0 else None,
            "kv_cache_bytes_per_token": kv_bytes_per_token(model, batch),
            "batch_size": int(np.asarray(batch["input_ids"]).shape[0]), "warmup": warmup, "repeats": repeats}
