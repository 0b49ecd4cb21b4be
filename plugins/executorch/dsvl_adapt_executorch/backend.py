"""The ExecuTorch runtime backend: :class:`dsvl_adapt.runtimes.contract.RuntimeBackend` on ExecuTorch + XNNPACK.

``prepare`` exports a Hugging Face checkpoint directory (or the same model already in memory) to ``vision.pte``,
``lm.pte`` (static KV cache inside) and the token table (:mod:`dsvl_adapt_executorch.export`), with XNNPACK's int8
(dynamic activations, per-channel weights) when the plan asks for ``int8``; ``load`` opens it as a
:class:`~dsvl_adapt_executorch.model.ExecuTorchModel`. Export options (``PrepareRequest.options``): ``batch_size``
(rows the cache holds, default 1) and ``max_len`` (cache slots: image tokens + prompt + answer, default 512); the
core's ONNX options (``opset``, ``graphs``, ``supported_ops``, ``precision``) have no meaning here and are ignored.

ExecuTorch and torch are imported inside the methods: constructing the backend is cheap.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from dsvl_adapt.errors import ConfigError
from dsvl_adapt.runtimes.contract import (
    Artifact,
    Capabilities,
    Inventory,
    InventoryFile,
    PrepareRequest,
)

from .model import RECORD_FILE, ExecuTorchModel, read_record

__all__ = ["INSTALL_HINT", "ExecuTorchBackend"]

INSTALL_HINT = 'pip install "dsvl-adapt[executorch]"'
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
PLAN_FORMATS = ("fp32", "int8")
PLAN_MODES = (None, "dynamic")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


class ExecuTorchBackend:
    """ExecuTorch with the XNNPACK delegate (CPU: x86 here, Arm on phones; the same ``.pte`` route leads to the
    Qualcomm / MediaTek / Core ML delegates, which are not exercised here)."""

    name = "executorch"
    description = "ExecuTorch .pte programs, XNNPACK delegate on CPU (phones, Arm boards), static KV cache, int8"

    def available(self) -> str | None:
        if importlib.util.find_spec("executorch") is None:
            return f"ExecuTorch is not installed: {INSTALL_HINT}"
        return None

    def capabilities(self) -> Capabilities:
        return Capabilities(
            weight_formats=PLAN_FORMATS, quantization_modes=("dynamic",), devices=("cpu",), kv_cache=True,
            streaming=True,
            notes="static KV cache inside lm.pte (batch size and length fixed at export: options batch_size, "
                  "max_len); int8 = XNNPACK per-channel weights with dynamic int8 activations; one live "
                  "generation per loaded model")

    # -- prepare ---------------------------------------------------------------------------------------------------
    def _check_plan(self, request: PrepareRequest) -> None:
        plan = request.plan
        if plan.weights not in PLAN_FORMATS:
            raise ConfigError(f"runtime 'executorch' cannot make {plan.weights!r} weights; it writes "
                              f"{' or '.join(PLAN_FORMATS)} (set quantize.weights accordingly)")
        if plan.mode not in PLAN_MODES:
            raise ConfigError(f"runtime 'executorch' quantizes with mode 'dynamic' only (XNNPACK int8 with dynamic "
                              f"activations), not {plan.mode!r}")
        if plan.per_layer:
            raise ConfigError("runtime 'executorch' has no per-layer precision; remove the per_layer entries")
        for key in ("batch_size", "max_len"):
            value = request.options.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"executorch option {key}={value!r} must be a positive integer")

    def prepare(self, request: PrepareRequest) -> Artifact:
        """Export (and with ``plan.weights == "int8"`` quantize) into ``request.out_dir``, which must be empty."""
        reason = self.available()
        if reason:
            raise ConfigError(reason)
        self._check_plan(request)
        out = Path(request.out_dir)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} is not empty; the executorch backend writes a new artifact into an empty "
                              "folder (choose another out_dir or remove this one)")
        import numpy as np
        import torch

        from dsvl_adapt.runtimes.embedding import FP32_FILE, write_int8_table

        from .export import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LEN, export_programs

        model = getattr(request, "model", None)
        if model is None:
            from dsvl_adapt.models.checkpoint import load_checkpoint

            model, _processor = load_checkpoint(request.checkpoint_dir, dtype=torch.float32)
        if request.threads is not None:
            torch.set_num_threads(int(request.threads))
        batch_size = int(request.options.get("batch_size") or DEFAULT_BATCH_SIZE)
        max_len = int(request.options.get("max_len") or DEFAULT_MAX_LEN)
        started = time.perf_counter()
        programs = export_programs(model, weights=request.plan.weights, batch_size=batch_size, max_len=max_len)
        out.mkdir(parents=True, exist_ok=True)
        for file_name, data in programs.items():
            (out / file_name).write_bytes(data)
        table = model.get_input_embeddings().weight.detach().float().numpy()
        np.save(out / FP32_FILE, table)
        embedding = FP32_FILE
        if request.plan.weights == "int8":
            embedding = write_int8_table(out / FP32_FILE, out)
            (out / FP32_FILE).unlink()
        self._copy_processor(Path(request.checkpoint_dir), out)
        record = {
            "format": "dsvl-adapt executorch artifact 1",
            "vision": "vision.pte", "lm": "lm.pte", "embedding": embedding,
            "weights": request.plan.weights,
            "quantization": None if request.plan.weights == "fp32" else
            {"scheme": "XNNPACKQuantizer symmetric per-channel int8 weights, dynamic int8 activations", "mode": "dynamic"},
            "image_token_id": int(model.config.image_token_id),
            "hybrid": getattr(model.config, "high_res_vision_config", None) is not None,
            "batch_size": batch_size, "max_len": max_len,
            "source": str(request.checkpoint_dir),
            "export_seconds": round(time.perf_counter() - started, 1),
            "versions": {"executorch": _version("executorch"), "torch": torch.__version__},
        }
        (out / RECORD_FILE).write_text(json.dumps(record, indent=2))
        return Artifact(directory=out, runtime=self.name, weights=request.plan.weights, report=record)

    @staticmethod
    def _copy_processor(source: Path, out: Path) -> None:
        """Config, tokenizer and processor files of the checkpoint (not its weights), so the artifact stands alone."""
        if not source.is_dir():
            return
        for path in source.iterdir():
            if path.is_file() and path.suffix not in WEIGHT_SUFFIXES and path.name != RECORD_FILE:
                shutil.copy2(path, out / path.name)

    # -- load, recognise, inventory ------------------------------------------------------------------------------
    def load(self, directory: Path, *, threads: int | None = None) -> ExecuTorchModel:
        reason = self.available()
        if reason:
            raise ConfigError(reason)
        return ExecuTorchModel(directory, threads=threads)

    def owns(self, directory: Path) -> bool:
        return (Path(directory) / RECORD_FILE).is_file()

    def inventory(self, directory: Path) -> Inventory:
        """Files with their roles and bytes; ops: kernel calls by operator name and delegate calls by backend (read
        from the ``.pte`` flatbuffers); dtypes: the token table's (the programs' weights are inside XNNPACK's
        blobs, in the format the record states)."""
        directory = Path(directory)
        record = read_record(directory)
        files = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = path.relative_to(directory).as_posix()
            if path.suffix == ".pte":
                role = "graph"
            elif rel == record["embedding"]:
                role = "embedding"
            elif rel == RECORD_FILE:
                role = "report"
            elif rel in ("config.json", "generation_config.json"):
                role = "config"
            else:
                role = "processor"
            files.append(InventoryFile(path=rel, bytes=path.stat().st_size, role=role))
        ops: dict[str, int] = {}
        for name in (record["vision"], record["lm"]):
            for op, count in _program_ops(directory / name).items():
                ops[op] = ops.get(op, 0) + count
        table_bytes = (directory / record["embedding"]).stat().st_size
        dtypes = {"int8" if record["embedding"].endswith(".int8.npz") else "float32": table_bytes}
        weights = str(record.get("weights", "fp32"))
        return Inventory(files=tuple(files), ops=ops, dtypes=dtypes, weights=weights, label=f"executorch-{weights}")


def _program_ops(path: Path) -> dict[str, int]:
    """Instruction counts of a ``.pte``: ``aten::<op>`` kernel calls and ``delegate:<backend>`` calls; empty when
    the installed ExecuTorch cannot read the file (then ops are unknown, not zero)."""
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary
    except ImportError:
        return {}
    try:
        program = deserialize_pte_binary(path.read_bytes())
        program = getattr(program, "program", program)
    except Exception:
        return {}
    counts: dict[str, int] = {}
    for plan in program.execution_plan:
        for chain in plan.chains:
            for instruction in chain.instructions:
                args: Any = instruction.instr_args
                if hasattr(args, "op_index"):
                    key = plan.operators[args.op_index].name
                elif hasattr(args, "delegate_index"):
                    key = "delegate:" + plan.delegates[args.delegate_index].id
                else:
                    continue
                counts[key] = counts.get(key, 0) + 1
    return counts
