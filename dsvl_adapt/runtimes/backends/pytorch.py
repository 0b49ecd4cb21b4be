"""The PyTorch backend (``torch``): a Hugging Face checkpoint directory run in PyTorch eager, fp32 or int8 dynamic.

``prepare`` writes the checkpoint (fp32 plan) or quantizes its ``nn.Linear`` layers to int8 dynamic
(:func:`dsvl_adapt.compress.quantize.quantize_torch_dynamic`, saved with :func:`~dsvl_adapt.compress.quantize.
save_quantized`) and checks that the saved directory reloads to identical logits. ``load`` gives a
:class:`~dsvl_adapt.runtimes.TorchRuntimeModel`. Its artifacts are checkpoint directories
(:func:`dsvl_adapt.models.checkpoint_files.is_checkpoint_dir`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ...quantization import SUPPORTED, QuantizeConfig
from ..contract import Artifact, Capabilities, GenerativeModel, Inventory, PrepareRequest
from . import file_inventory, has_kv_cache, load_fp32, prepared_batches

__all__ = ["TorchBackend"]

_SAFETENSORS_DTYPES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16", "F64": "fp64", "I8": "int8", "U8": "uint8",
                       "I32": "int32", "I64": "int64", "BOOL": "bool"}


def _safetensors_dtypes(path: Path) -> dict[str, int]:
    """Tensor dtype -> bytes, from a safetensors file's header alone."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    out: dict[str, int] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"].lower())
        out[dtype] = out.get(dtype, 0) + int(end - start)
    return out


class TorchBackend:
    """PyTorch eager on the CPU: fp32 checkpoints, or int8 dynamic quantization of the linear layers."""

    name = "torch"
    description = "PyTorch eager (transformers): fp32 checkpoints, int8 dynamic quantization of nn.Linear"

    def available(self) -> str | None:
        return None  # torch and transformers are core dependencies

    def capabilities(self) -> Capabilities:
        from .. import TorchRuntimeModel

        return Capabilities(weight_formats=("fp32", "int8"), quantization_modes=tuple(SUPPORTED[self.name]),
                            devices=("cpu",), kv_cache=has_kv_cache(TorchRuntimeModel),
                            streaming=callable(getattr(TorchRuntimeModel, "stream", None)),
                            notes="int8 dynamic runs on the CPU only")

    def prepare(self, request: PrepareRequest) -> Artifact:
        import torch

        from ...compress.quantize import load_quantized, quantize_torch_dynamic, save_quantized
        from ...models.checkpoint import save_checkpoint

        config = QuantizeConfig.from_plan(self.name, request.plan)
        model, processor, cast_from = load_fp32(request)
        out = Path(request.out_dir)
        if config is None:
            save_checkpoint(model, processor, out, role="deploy", runtime=self.name)
            return Artifact(directory=out, runtime=self.name, weights="fp32",
                            report={"size_bytes": self.inventory(out).model_bytes, "cast_from": cast_from})
        batches = prepared_batches(request, self.name)
        quantized = quantize_torch_dynamic(model, config)
        save_quantized(quantized, out, config)
        processor.save_pretrained(out)
        reloaded = load_quantized(out)
        probe = {k: torch.as_tensor(v) for k, v in batches[0].items() if k != "labels"}
        with torch.no_grad():
            diff = float((quantized(**probe).logits - reloaded(**probe).logits).abs().max())
        if diff != 0.0:
            raise ValueError(f"{out} does not reload to identical outputs (max abs diff {diff:.3g})")
        figures = {"bits": config.bits, "mode": config.mode, "reload_max_abs_diff": diff,
                   "size_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()), "cast_from": cast_from}
        return Artifact(directory=out, runtime=self.name, weights=f"int{config.bits}", report=figures)

    def load(self, directory: Path, *, threads: int | None = None) -> GenerativeModel:
        from ...models.checkpoint import load_checkpoint

        model, _processor = load_checkpoint(directory)
        return self.wrap(model, threads=threads)

    def wrap(self, model: Any, *, threads: int | None = None) -> GenerativeModel:
        """A transformers model already in memory as a GenerativeModel (prefill/decode with transformers' cache).
        PyTorch only: the score stage holds the model it measures and must not load it twice."""
        from .. import TorchRuntimeModel

        runtime = TorchRuntimeModel(model, threads=threads)
        runtime.threads = threads
        return runtime

    def owns(self, directory: Path) -> bool:
        from ...models.checkpoint_files import is_checkpoint_dir

        return Path(directory).is_dir() and is_checkpoint_dir(directory)

    def inventory(self, directory: Path) -> Inventory:
        directory = Path(directory)
        files = file_inventory(directory)
        dtypes: dict[str, int] = {}
        for path in sorted(directory.glob("*.safetensors")):
            for dtype, size in _safetensors_dtypes(path).items():
                dtypes[dtype] = dtypes.get(dtype, 0) + size
        weights = "fp32"
        if (directory / "quantization.json").is_file():
            recipe: dict[str, Any] = json.loads((directory / "quantization.json").read_text())
            weights = f"int{recipe.get('config', {}).get('bits', 8)}"
        elif dtypes:
            floats = {k: v for k, v in dtypes.items() if k in ("fp32", "bf16", "fp16")}
            weights = max(floats, key=floats.__getitem__) if floats else "fp32"
        return Inventory(files=files, dtypes=dtypes, weights=weights, label=f"{self.name}-{weights}")
