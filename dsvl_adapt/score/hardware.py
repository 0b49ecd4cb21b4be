"""Hardware fit: checks a model against a target's memory, dtypes, ops, opset and objectives.

Latency is taken from a measurement when the target's runtime runs on this machine's kind of
device; otherwise it is estimated with a roofline (MACs against peak throughput, bytes moved
against memory bandwidth) and marked ``estimated`` with its inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from ..schemas import HardwareTarget
from .scorecard import FitCheck, Latency, Memory, TargetFit, Throughput

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


def activation_bytes(config: Any, sequence_length: int, batch_size: int, bytes_per_value: float) -> int:
    """A rough peak of the language model's activations in one forward: one layer's hidden and MLP tensors, eager
    attention scores and fp32 logits over the sequence (the vision tower and runtime overhead are left out)."""
    text = config.text_config
    hidden = text.hidden_size
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    tokens = batch_size * sequence_length
    layer = tokens * (2 * hidden + 2 * intermediate) * bytes_per_value
    scores = batch_size * text.num_attention_heads * sequence_length ** 2 * bytes_per_value
    logits = tokens * text.vocab_size * 4
    return int(layer + scores + logits)


FAR_BELOW = 10.0  # an estimate this many times below a measurement of the same model is called out
ESTIMATED_SHARE = 0.01  # a measured figure with more than this share estimated is marked estimated


def _far_below(estimate: float, measured: float, what: str) -> str:
    if estimate > 0 and measured / estimate >= FAR_BELOW:
        return (f"; NOTE: {measured / estimate:.0f}x below the {what} measured for the same model on this machine: "
                "an estimate that leaves out runtime overhead and kernel efficiency")
    return ""


def _memory_check(target: HardwareTarget, *, weight_bytes: int, config: Any, value_bytes: float,
                  serving: Memory | None, stand_in: bool, reference: Memory | None) -> FitCheck:
    """Measured peak RSS of the process serving the student when it ran here for this target (plus the KV cache
    for the target's context beyond the measured one; ``stand_in``: served through another runtime than the
    target's, so an estimate), else weights + KV cache + activations, estimated."""
    batch, context = target.batch_size, target.sequence_length
    if serving is not None and serving.peak_rss_bytes is not None:
        served = serving.prompt_tokens + serving.new_tokens
        extra = max(0, kv_cache_bytes(config, context, batch, value_bytes) -
                    kv_cache_bytes(config, served, batch, value_bytes))
        total = serving.peak_rss_bytes + extra
        note = f"peak RSS {serving.peak_rss_bytes:,} B measured: {serving.how}"
        if stand_in:
            note += f"; the target runs {target.runtime}, which did not serve this model here"
        if extra:
            note += f"; + KV cache for {context - served} more tokens up to {context} (estimated) {extra:,} B"
        return FitCheck(name="memory", ok=total / 1e9 <= target.memory_gb, value=round(total / 1e9, 4),
                        limit=target.memory_gb, unit="GB", note=note,
                        estimated=stand_in or extra > ESTIMATED_SHARE * total)
    kv = kv_cache_bytes(config, context, batch, value_bytes)
    activations = activation_bytes(config, context, batch, value_bytes)
    total = weight_bytes + kv + activations
    note = (f"weights {weight_bytes:,} B + KV cache {kv:,} B + activations {activations:,} B for {context} tokens x "
            f"batch {batch} (largest LM layer, attention scores, fp32 logits); runtime and vision tower not included")
    if reference is not None and reference.peak_rss_bytes and reference.baseline_rss_bytes is not None:
        own = reference.peak_rss_bytes - reference.baseline_rss_bytes  # the model's share, not the interpreter's
        note += _far_below(total, own, f"{own:,} B that serving it added to a process here ({reference.runtime}, "
                                       f"batch {reference.batch_size})")
    return FitCheck(name="memory", ok=total / 1e9 <= target.memory_gb, value=round(total / 1e9, 4),
                    limit=target.memory_gb, unit="GB", estimated=True, note=note)


def _latency_check(target: HardwareTarget, *, macs: int, weight_bytes: int, model_dtype: str,
                   measured: dict[str, Latency], deployed: str | None) -> FitCheck:
    """Measured through the target's runtime on this CPU when it ran here; for another CPU target, the figure
    measured here through another runtime (the deployed artifact's, when it ran), estimated; otherwise a roofline (estimated), called out when far below
    what this model measured here."""
    limit = target.latency_p90_ms
    assert limit is not None
    runtime_here = measured.get(target.runtime) if target.device == "cpu" else None
    if runtime_here is not None:
        p90, estimated, how = runtime_here.p90_ms, False, f"measured on {runtime_here.cpu} ({target.runtime})"
    elif target.device == "cpu" and measured:
        runtime = deployed if deployed in measured else min(measured, key=lambda name: measured[name].p90_ms)
        other = measured[runtime]
        p90, estimated = other.p90_ms, True
        how = (f"measured on {other.cpu} through {runtime} ({other.runtime}); the target runs {target.runtime}, "
               "which did not serve this model here")
    else:
        p90, how = roofline_ms(macs, weight_bytes, target, model_dtype if model_dtype in target.dtypes
                               else target.dtypes[0])
        estimated = True
        if p90 is not None and measured:
            runtime, fastest = min(measured.items(), key=lambda item: item[1].p90_ms)
            how += _far_below(p90, fastest.p90_ms, f"p90 {fastest.p90_ms:.3f} ms (through {runtime} on "
                                                  f"{fastest.cpu})")
    return FitCheck(name="latency_p90", ok=None if p90 is None else p90 <= limit,
                    value=None if p90 is None else round(p90, 3), limit=limit, unit="ms", estimated=estimated,
                    note=how)


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
    serving: Memory | None = None,
    serving_stand_in: bool = False,
    reference_memory: Memory | None = None,
    deployed_runtime: str | None = None,
) -> TargetFit:
    """All fit checks for one target. ``measured`` maps a runtime name to a latency measured here; ``throughput``
    is the student's at this target's batch size (measured or estimated); ``serving`` the peak memory of a process
    serving the student through this target's runtime here at its batch size (when it ran; through another runtime
    when ``serving_stand_in``, for a CPU target whose runtime did not run), ``reference_memory``
    any such measurement of the same model (to call out an estimate far below it); ``deployed_runtime`` the runtime
    of the deployed student (the stand-in for a CPU target whose runtime did not run here).

    ``fits`` is true only when every check was made and passed: an unknown check (``ok`` null) is not a pass."""
    checks: list[FitCheck] = []
    value_bytes = max(BYTES_PER_DTYPE.get(model_dtype, 4), 1)
    checks.append(_memory_check(target, weight_bytes=weight_bytes, config=config, value_bytes=value_bytes,
                                serving=serving, stand_in=serving_stand_in, reference=reference_memory))
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
        checks.append(_latency_check(target, macs=macs, weight_bytes=weight_bytes, model_dtype=model_dtype,
                                     measured=measured, deployed=deployed_runtime))
    if target.throughput_rps is not None:
        rps = throughput.requests_per_s if throughput is not None else None
        checks.append(FitCheck(name="throughput", ok=None if rps is None else rps >= target.throughput_rps,
                               value=rps, limit=target.throughput_rps, unit="req/s",
                               estimated=throughput is not None and not throughput.measured,
                               note=(f"batch {target.batch_size}: {throughput.how}" if throughput is not None
                                     else "not measured")))
    return fit_of(target, checks)


def fit_of(target: HardwareTarget, checks: list[FitCheck]) -> TargetFit:
    """``does not fit`` when a check failed, ``unknown`` when one could not be made, else ``fits``."""
    unknown = [c.name for c in checks if c.ok is None]
    status = "does not fit" if any(c.ok is False for c in checks) else "unknown" if unknown else "fits"
    return TargetFit(name=target.name, device=target.device, runtime=target.runtime, fits=status == "fits",
                     status=status, unknown=unknown, checks=checks)
