"""Which dtype the model's weights live in during a run, and the dtype the export runtimes accept.

``model.dtype`` decides the weights' dtype from the ``load`` stage on (every later stage
saves its model in the dtype it loaded it in):

* ``float32`` / ``bfloat16`` / ``float16``: that dtype;
* ``auto`` (the default): on a GPU, the checkpoint's own dtype. On the CPU, float32 (training
  in half-precision weights loses updates, and fp16 is slow there), except a bfloat16
  checkpoint in a pipeline that trains nothing (no ``finetune`` or ``distill`` stage): it stays
  bfloat16 on disk and between stages, which halves the memory and the disk traffic of pruning
  and exporting a large checkpoint (the ``load`` stage links the checkpoint's files, no copy).

The dtype weights are *stored* in is not always the dtype to *compute* in: on a CPU without
bfloat16 in hardware (AVX-512 BF16, AMX) bf16 arithmetic is emulated and several times slower
than fp32 (see ``dsvl_adapt.machine``). Stages that compute on the weights (tracing and scoring
for pruning, the reload check) cast to :func:`compute_dtype` while they work and save in the
stored dtype.

ONNX Runtime, OpenVINO and PyTorch's dynamic int8 quantization take float32 models (ONNX
Runtime rejects a graph whose Conv reads bfloat16): :func:`for_runtime` casts a model to the
runtime dtype, and the quantize and export stages call it through :func:`load_for_runtime`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from ..engine import RunContext

TRAINING_STAGES = ("finetune", "distill")
RUNTIME_DTYPE = torch.float32


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda`` for a config's ``device`` (``auto`` = cuda when available)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(setting: str, checkpoint_dtype: str | None, *, device: str,
                  stages: Sequence[str] = TRAINING_STAGES) -> torch.dtype:
    """The dtype the run keeps the weights in (see the module docstring for ``auto``).

    ``checkpoint_dtype``: the dtype most of the checkpoint's weights are stored in (None: unknown,
    taken as float32); ``stages``: the pipeline's stage names.
    """
    if setting != "auto":
        return getattr(torch, setting)
    own = getattr(torch, checkpoint_dtype) if checkpoint_dtype else torch.float32
    if resolve_device(device) == "cuda":
        return own
    trains = any(stage in TRAINING_STAGES for stage in stages)
    if own == torch.bfloat16 and not trains:
        return own
    return torch.float32


def compute_dtype(stored: torch.dtype, *, device: str = "cpu", native_bf16: bool | None = None) -> torch.dtype:
    """The dtype to compute in for weights stored in ``stored``: the same on a GPU; on the CPU float32 for
    float16 (slow there) and for bfloat16 unless the CPU has bf16 in hardware."""
    if resolve_device(device) == "cuda" or stored == torch.float32:
        return stored
    if stored == torch.bfloat16:
        if native_bf16 is None:
            from ..machine import has_native_bf16

            native_bf16 = has_native_bf16()
        return stored if native_bf16 else torch.float32
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of most of the model's floating parameters."""
    counts: dict[torch.dtype, int] = {}
    for param in model.parameters():
        if param.is_floating_point():
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.__getitem__) if counts else torch.float32


def for_runtime(model: torch.nn.Module) -> tuple[torch.nn.Module, str | None]:
    """``model`` with every floating parameter and buffer in the runtime dtype (float32), cast in place.

    Returns the model and the dtype it was cast from (None when it already was float32).
    """
    cast_from = None
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point() and tensor.dtype != RUNTIME_DTYPE:
            cast_from = cast_from or dtype_name(tensor.dtype)
    if cast_from is None:
        return model, None
    model = model.to(RUNTIME_DTYPE)
    config = getattr(model, "config", None)
    for part in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if part is not None and hasattr(part, "dtype"):
            part.dtype = RUNTIME_DTYPE  # what a saved config.json then says
    return model, cast_from


def load_for_runtime(context: "RunContext", name: str = "student") -> tuple[Any, Any, str | None]:
    """Load artifact ``name`` as the export runtimes need it: ``(model, processor, cast_from)``.

    The one place where the quantize and export stages get their model: whatever dtype the run
    trained or pruned in, ONNX, OpenVINO and torch int8 see float32.
    """
    model, processor = context.load_model(name)
    model, cast_from = for_runtime(model)
    return model, processor, cast_from
