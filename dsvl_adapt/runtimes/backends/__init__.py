"""The core's runtime backends: PyTorch (:mod:`.pytorch`), ONNX Runtime (:mod:`.onnxruntime`) and OpenVINO
(:mod:`.openvino`), each a :class:`~dsvl_adapt.runtimes.contract.RuntimeBackend` registered from
:mod:`dsvl_adapt.builtins` through the ``dsvl_adapt_register_runtimes`` hook, as a plugin's backend would be.

Layering: a backend wraps the algorithms that already exist - the exporter (:mod:`dsvl_adapt.export.onnx`), PyTorch
quantization (:mod:`dsvl_adapt.compress.quantize`), the runtime libraries (:mod:`dsvl_adapt.runtimes.onnxruntime`,
:mod:`dsvl_adapt.runtimes.openvino`) - and the neutral types (:mod:`dsvl_adapt.runtimes.contract`,
:mod:`dsvl_adapt.quantization`). It never imports a stage module (``engine``, ``compress.stages``, ``export.stage``,
``score.*``), and no stage imports it: stages find a backend in the registry (``tests/test_import_layers.py``).

Constructing a backend imports nothing heavy; torch, onnxruntime and openvino are imported when a method needs them.
This module holds what the three share.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..contract import InventoryFile, PrepareRequest

__all__ = ["file_inventory", "file_role", "has_kv_cache", "load_fp32", "missing_modules", "prepared_batches",
           "scratch_directory"]

_PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
                    "processor_config.json", "chat_template.json", "chat_template.jinja", "added_tokens.json",
                    "tokenizer.model", "vocab.json", "merges.txt")
_REPORT_FILES = ("export.json", "openvino.json", "quantization.json", "dsvl_adapt.json")


def missing_modules(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def has_kv_cache(model_class: type) -> bool:
    """Whether a model class offers cached decoding (``prefill`` and ``decode``)."""
    return callable(getattr(model_class, "prefill", None)) and callable(getattr(model_class, "decode", None))


def file_role(path: Path) -> str:
    """The :data:`~dsvl_adapt.runtimes.contract.ROLES` role of an artifact file, from its name."""
    name = path.name
    if name.endswith(".inventory.json") or name in _REPORT_FILES:
        return "report"
    if name in ("config.json", "generation_config.json"):
        return "config"
    if name in _PROCESSOR_FILES:
        return "processor"
    if name.startswith("embed_tokens."):
        return "embedding"
    if path.suffix in (".onnx", ".xml"):
        return "graph"
    if path.suffix in (".data", ".bin", ".safetensors") or name.endswith(".safetensors.index.json"):
        return "weights"
    return "other"


def file_inventory(directory: Path, role: Callable[[Path], str] = file_role) -> tuple[InventoryFile, ...]:
    """Every file under ``directory`` with its bytes and role, sorted by path."""
    return tuple(InventoryFile(path=p.relative_to(directory).as_posix(), bytes=p.stat().st_size, role=role(p))
                 for p in sorted(directory.rglob("*")) if p.is_file())


def prepared_batches(request: PrepareRequest, backend: str) -> list[Mapping[str, Any]]:
    """The request's calibration batches as a list; the ONNX export needs at least one (its example and check)."""
    batches = list(request.calibration)
    if not batches:
        raise ValueError(f"backend {backend!r} needs at least one batch in PrepareRequest.calibration: the export "
                         "traces the graphs on it and checks them against PyTorch")
    return batches


def load_fp32(request: PrepareRequest) -> tuple[Any, Any, str | None]:
    """``(model, processor, cast_from)``: the request's model if it carries one (float32, as the pipeline holds it),
    otherwise the checkpoint loaded exactly and cast to float32 (what ONNX Runtime, OpenVINO and torch int8 take)."""
    from transformers import AutoProcessor

    from ...models.checkpoint import load_checkpoint
    from ...models.dtype import for_runtime

    options = request.options
    if request.model is not None:
        processor = AutoProcessor.from_pretrained(request.checkpoint_dir, local_files_only=True,
                                                  trust_remote_code=bool(options.get("trust_remote_code", False)))
        model, cast_from = for_runtime(request.model)
        return model, processor, cast_from
    model, processor = load_checkpoint(request.checkpoint_dir, allow_pickle=bool(options.get("allow_pickle", False)),
                                       trust_remote_code=bool(options.get("trust_remote_code", False)))
    model, cast_from = for_runtime(model)
    return model, processor, cast_from


@contextmanager
def scratch_directory(request: PrepareRequest, name: str) -> Iterator[tuple[Path, bool]]:
    """``(directory, kept)``: ``scratch_dir / name`` when the request gives a scratch directory (kept for the
    caller), else a temporary directory removed on exit."""
    if request.scratch_dir is not None:
        directory = Path(request.scratch_dir) / name
        directory.mkdir(parents=True, exist_ok=True)
        yield directory, True
        return
    with tempfile.TemporaryDirectory(prefix=f"dsvl-{name}-") as tmp:
        yield Path(tmp), False
