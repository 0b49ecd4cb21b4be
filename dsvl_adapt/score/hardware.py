"""Hardware fit: checks a model against a target's memory, dtypes, ops, opset and objectives.

Latency is taken from a measurement when the target's runtime runs on this machine's kind of
device; otherwise it is estimated with a roofline (MACs against peak throughput, bytes moved
against memory bandwidth) and marked ``estimated`` with its inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from ..schemas import HardwareTarget
from .scorecard import FitCheck, Latency, TargetFit, Throughput

BYTES_PER_DTYPE = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}


@torch.no_grad()
def count_linear_macs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Multiply-accumulates of every Linear/Conv call in one forward (attention score products excluded)."""
    total = 0

    def linear_hook(module: torch.nn.Linear, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        nonlocal total
        total += inputs[0].numel() // module.in_features * module.in_features * module.out_features

    def conv_hook(module: torch.nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * kernel

    handles = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, torch.nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
    try:
        model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return total


def kv_cache_bytes(config: Any, sequence_length: int, batch_size: int, bytes_per_value: float) -> int:
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return int(2 * text.num_hidden_layers * kv_heads * head_dim * sequence_length * batch_size * bytes_per_value)


def roofline_ms(macs: int, bytes_moved: int, target: HardwareTarget, dtype: str) -> tuple[float | None, str]:
    peak = target.peak_tops.get(dtype)  # type: ignore[call-overload]
    if not peak or not target.memory_bandwidth_gbps:
        return None, f"target gives no peak_tops[{dtype}] or memory_bandwidth_gbps"
    compute_ms = 2 * macs / (peak * 1e12) * 1e3
    memory_ms = bytes_moved / (target.memory_bandwidth_gbps * 1e9) * 1e3
    how = (f"roofline: max(2 x {macs:,} MACs / {peak} TOPS = {compute_ms:.3f} ms, {bytes_moved:,} bytes / "
           f"{target.memory_bandwidth_gbps} GB/s = {memory_ms:.3f} ms)")
    return max(compute_ms, memory_ms), how


def estimate_throughput(target: HardwareTarget, *, macs: int, weight_bytes: int, dtype: str) -> Throughput:
    """Roofline throughput at the target's batch size: the batch's MACs against peak compute, the weights read once
    per batch against memory bandwidth."""
    batch = target.batch_size
    ms, how = roofline_ms(macs * batch, weight_bytes, target, dtype if dtype in target.dtypes else target.dtypes[0])
    return Throughput(target=target.name, runtime=target.runtime, batch_size=batch, measured=False,
                      requests_per_s=None if not ms else round(batch / ms * 1000.0, 2),
                      batch_p50_ms=None if ms is None else round(ms, 3),
                      how=f"{how}; MACs of batch 1 x {batch}")


def check_target(
    target: HardwareTarget,
    *,
    model_dtype: str,
    weight_bytes: int,
    config: Any,
    macs: int,
    measured: dict[str, Latency],
    inventory: dict[str, Any] | None,
    throughput: Throughput | None = None,
) -> TargetFit:
    """All fit checks for one target. ``measured`` maps a runtime name to a measured latency; ``throughput`` is
    the student's at this target's batch size (measured or estimated)."""
    checks: list[FitCheck] = []
    value_bytes = BYTES_PER_DTYPE.get(model_dtype, 4)
    kv = kv_cache_bytes(config, target.sequence_length, target.batch_size, max(value_bytes, 1))
    total_gb = (weight_bytes + kv) / 1e9
    checks.append(FitCheck(
        name="memory", ok=total_gb <= target.memory_gb, value=round(total_gb, 4), limit=target.memory_gb, unit="GB",
        note=f"weights {weight_bytes:,} B (measured) + KV cache {kv:,} B (estimated for {target.sequence_length} "
             f"tokens x batch {target.batch_size}); activations not included",
    ))
    checks.append(FitCheck(name="dtype", ok=model_dtype in target.dtypes, value=model_dtype,
                           limit=", ".join(target.dtypes)))
    if inventory is None:
        note = "no exported graph to inspect: add the `export` stage to pipeline.stages"
        checks.append(FitCheck(name="opset", ok=None, limit=f"{target.opset_min}-{target.opset_max}", note=note))
        if target.supported_ops is not None:
            checks.append(FitCheck(name="ops", ok=None, note=note))
    else:
        opset = int(inventory["opset"])
        checks.append(FitCheck(name="opset", ok=target.opset_min <= opset <= target.opset_max, value=opset,
                               limit=f"{target.opset_min}-{target.opset_max}"))
        if target.supported_ops is not None:
            missing = sorted(set(inventory["op_types"]) - set(target.supported_ops))
            checks.append(FitCheck(name="ops", ok=not missing, value=", ".join(missing) or "all supported",
                                   note="unsupported op types listed" if missing else ""))
    if target.latency_p90_ms is not None:
        runtime_here = measured.get(target.runtime) if target.device == "cpu" else None
        if runtime_here is not None:
            p90, estimated, how = runtime_here.p90_ms, False, f"measured on {runtime_here.cpu} ({target.runtime})"
        else:
            p90, how = roofline_ms(macs, weight_bytes, target, model_dtype if model_dtype in target.dtypes
                                   else target.dtypes[0])
            estimated = True
        checks.append(FitCheck(name="latency_p90", ok=None if p90 is None else p90 <= target.latency_p90_ms,
                               value=None if p90 is None else round(p90, 3), limit=target.latency_p90_ms,
                               unit="ms", estimated=estimated, note=how))
    if target.throughput_rps is not None:
        rps = throughput.requests_per_s if throughput is not None else None
        checks.append(FitCheck(name="throughput", ok=None if rps is None else rps >= target.throughput_rps,
                               value=rps, limit=target.throughput_rps, unit="req/s",
                               estimated=throughput is not None and not throughput.measured,
                               note=(f"batch {target.batch_size}: {throughput.how}" if throughput is not None
                                     else "not measured")))
    fits = all(c.ok is not False for c in checks)
    return TargetFit(name=target.name, device=target.device, runtime=target.runtime, fits=fits, checks=checks)
