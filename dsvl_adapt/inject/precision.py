"""Which precision a training phase runs in, and the autocast context that applies it.

``precision: auto`` is decided on the machine the run is on, not from a CPU flag: on a CPU with
native bf16 instructions, forward + backward passes of the phase's own model on its own first
batch are timed in fp32 and under bf16 autocast (a warm-up each, then the fastest of five alternated
passes each), and bf16 is chosen only when it is at least :data:`BF16_MIN_SPEEDUP` times faster. The optimizer step, the
same in both, is left out: it cannot turn a slower forward + backward into a faster step. Measured
on these machines: bf16 autocast was 1.5x faster per step on an AMD EPYC with AVX512-BF16, and 1.39x
*slower* on an Intel Xeon with AVX512-BF16 but no AMX. A CPU without native bf16 (no AVX512-BF16,
no AMX) runs fp32 without measuring; a GPU runs bf16 where it supports it, else fp16 with loss
scaling. The decision is cached per process (one measurement per model, phase kind and batch
size) and recorded in the stage's figures with the measured times.

Precision is applied with :func:`torch.autocast` per phase rather than through accelerate's
process-wide ``mixed_precision``, so the phases of one process may differ (``finetune.full``
in fp32 while LoRA runs ``auto``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, ContextManager, Hashable

import torch

#: bf16 autocast must be at least this much faster than fp32 per forward + backward to be chosen by ``auto``.
BF16_MIN_SPEEDUP = 1.15
#: Timed forward + backward passes per precision (after one warm-up pass each), alternated fp32 / bf16.
MEASURE_ROUNDS = 5

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionChoice:
    """What a phase runs in and why: recorded in the stage's figures."""

    requested: str  # the config's value: auto, fp32, bf16 or fp16
    chosen: str  # fp32, bf16 or fp16
    reason: str
    fp32_ms: float | None = None  # measured forward + backward (fastest pass), when ``auto`` measured
    bf16_ms: float | None = None

    @property
    def bf16_speedup(self) -> float | None:
        if self.fp32_ms is None or not self.bf16_ms:
            return None
        return round(self.fp32_ms / self.bf16_ms, 3)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bf16_speedup": self.bf16_speedup, "min_speedup": BF16_MIN_SPEEDUP}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "PrecisionChoice":
        return cls(**{k: record.get(k) for k in ("requested", "chosen", "reason", "fp32_ms", "bf16_ms")})


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16 or AMX); without them bf16 is emulated, slowly."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_DECISIONS: dict[Hashable, PrecisionChoice] = {}


def choose_precision(requested: str, device: torch.device, *, key: Hashable = None,
                     measure: Callable[[], tuple[float, float]] | None = None) -> PrecisionChoice:
    """Resolve the config's ``precision`` for a phase on ``device``.

    ``measure`` times one forward + backward pass in fp32 and under bf16 autocast and returns both
    in milliseconds; it is called only for ``auto`` on a CPU with native bf16, once per ``key`` in
    this process.
    """
    if requested != "auto":
        return PrecisionChoice(requested, requested, "set in the configuration")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(requested, "bf16", "GPU with bf16 support")
        return PrecisionChoice(requested, "fp16", "GPU without bf16 support: fp16 with loss scaling")
    if device.type != "cpu":
        return PrecisionChoice(requested, "fp32", f"no automatic choice for device type {device.type!r}")
    if not cpu_has_native_bf16():
        return PrecisionChoice(requested, "fp32", "this CPU has no native bf16 instructions (AVX512-BF16 or AMX)")
    if measure is None:
        return PrecisionChoice(requested, "fp32", "bf16 speed could not be measured")
    if key is not None and key in _DECISIONS:
        return _DECISIONS[key]
    fp32_ms, bf16_ms = measure()
    speedup = fp32_ms / bf16_ms if bf16_ms > 0 else 0.0
    faster = speedup >= BF16_MIN_SPEEDUP
    reason = (f"measured on this CPU: bf16 autocast {speedup:.2f}x the speed of fp32 per forward + backward "
              f"({'>=' if faster else '<'} {BF16_MIN_SPEEDUP}x needed)")
    choice = PrecisionChoice(requested, "bf16" if faster else "fp32", reason, round(fp32_ms, 3), round(bf16_ms, 3))
    if key is not None:
        _DECISIONS[key] = choice
    return choice


def autocast(precision: str, device: torch.device) -> ContextManager[Any]:
    """The autocast context of a resolved precision (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def time_forward_backward(run_once: Callable[[str], None], rounds: int = MEASURE_ROUNDS) -> tuple[float, float]:
    """Milliseconds of ``run_once(precision)`` (a forward pass under :func:`autocast` of that precision, then a
    backward pass) for ``fp32`` and ``bf16``: the fastest of ``rounds`` passes each, after a warm-up of each.

    fp32 and bf16 alternate, so a change in the machine's load hits both alike, and the fastest pass counts (as
    in :mod:`timeit`): other work on a shared machine only adds time. Random number generators are restored
    afterwards, so the measurement does not change what the training then draws (dropout).
    """
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.random.fork_rng(devices=[]):
        for round_index in range(rounds + 1):
            for precision in ("fp32", "bf16"):
                started = time.perf_counter()
                run_once(precision)
                if round_index:  # round 0 warms both up
                    times[precision].append((time.perf_counter() - started) * 1000)
    return min(times["fp32"]), min(times["bf16"])
