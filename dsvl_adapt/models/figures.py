"""Measured facts about a model: parameters per component, bytes of weights, size on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

COMPONENTS = (
    ("vision", ("model.vision_model.", "model.high_res_vision_model.", "model.vision_tower.")),
    ("aligner", ("model.aligner.",)),
    ("language_model", ("model.language_model.", "lm_head.")),
)


def component_of(name: str) -> str:
    for component, prefixes in COMPONENTS:
        if name.startswith(prefixes):
            return component
    return "other"


def model_figures(model: torch.nn.Module, directory: str | Path | None = None) -> dict[str, Any]:
    """Parameter counts (tied weights counted once), weight bytes per component, disk size."""
    seen: set[int] = set()
    params: dict[str, int] = {}
    weight_bytes: dict[str, int] = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        component = component_of(name)
        if isinstance(tensor, torch.nn.Parameter):
            params[component] = params.get(component, 0) + tensor.numel()
        weight_bytes[component] = weight_bytes.get(component, 0) + tensor.numel() * tensor.element_size()
    figures: dict[str, Any] = {
        "params": sum(params.values()),
        "params_by_component": params,
        "weight_bytes_by_component": weight_bytes,
    }
    if directory is not None:
        figures["size_bytes"] = size_on_disk(directory)
    return figures


def size_on_disk(directory: str | Path) -> int:
    """Bytes of the model's weight files (safetensors, ONNX, IR, …) in a directory."""
    suffixes = (".safetensors", ".bin", ".onnx", ".onnx_data", ".data", ".xml", ".pt")
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file() and p.name.endswith(suffixes))
