"""Single-library baselines, each set up the way its library's own documentation sets it up - not through the SDK.

A baseline that borrowed the SDK's choices (its skip policy, per-channel scales, pinned precision) would measure the
SDK against itself. Each function below names the documented call it makes, with the library's defaults:

* :func:`torch_dynamic_int8` - PyTorch's dynamic quantization tutorial:
  ``torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)`` (every Linear, vision tower
  included; per-tensor scales), saved with ``torch.save(model.state_dict(), ...)``.
* :func:`onnxruntime_dynamic_int8` - ONNX Runtime's "Quantize ONNX models" page: pre-process
  (``quant_pre_process``), then ``quantize_dynamic(model_input, model_output, weight_type=QuantType.QInt8)`` on each
  graph (its defaults: every supported op type, per-tensor scales).
* :func:`openvino_convert` - OpenVINO's conversion guide: ``ov.convert_model("model.onnx")`` then
  ``ov.save_model(model, "model.xml")`` (its default stores weights as fp16).
* :func:`nncf_quantize_defaults` - NNCF's basic post-training quantization flow for an OpenVINO model:
  ``nncf.quantize(ov.Core().read_model(xml), nncf.Dataset(samples))`` with every default (preset, model type,
  ``subset_size=300`` - capped by the samples given, fast bias correction), then ``ov.save_model``.
* :func:`nncf_int4_stateful_defaults` - what a user gets from OpenVINO + NNCF alone for an LLM with a KV cache, as
  Optimum-Intel's export does it: the LM made stateful (OpenVINO's make-stateful transformation), then
  ``nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM)`` with every other default (group 128,
  ratio 1, embeddings and the last layer int8 as NNCF decides); the vision graph
  ``nncf.compress_weights(model)`` (its default, INT8_ASYM), as Optimum-Intel treats a VLM's vision part.
* :class:`PlainOpenVinoModel` - ``ov.Core().compile_model(xml, "CPU")`` with OpenVINO's defaults (inference precision
  as the CPU plugin chooses: bf16 on CPUs with AVX512-BF16/AMX), only the thread count set, as every runtime in the
  benchmark gets the same number of threads.

The graphs are those of the SDK's ONNX export (full, or split into ``vision`` + ``lm`` on ``inputs_embeds`` with the
token table looked up by the caller), so every runtime sees the same graph; the fp32 token table of split exports is
copied as it is (a library-only user has no int8 table).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from dsvl_adapt.runtimes import GraphRuntimeModel, to_numpy

PLAIN_OPENVINO_FILE = "plain-openvino.json"


# ------------------------------------------------------------------------------------------------------------ PyTorch


def torch_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantized to int8, as PyTorch's tutorial does."""
    with warnings.catch_warnings():  # torch.ao.quantization warns that it is deprecated
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8).eval()


def save_torch_state(model: torch.nn.Module, directory: Path) -> Path:
    """``torch.save(model.state_dict(), ...)``, the tutorial's way of saving a quantized model."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.pt"
    torch.save(model.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------------------ exports


def _external_files(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def _copy_non_graph_files(export_dir: Path, destination: Path, graph_files: Sequence[Path]) -> None:
    """Copy the export's side files (report, inventories, config, token table), not its graphs or their data."""
    skip = {p.name for p in graph_files}
    for p in graph_files:
        skip |= _external_files(p)
    destination.mkdir(parents=True, exist_ok=True)
    for p in export_dir.iterdir():
        if p.is_file() and p.name not in skip and p.suffix not in (".onnx", ".xml", ".bin"):
            shutil.copyfile(p, destination / p.name)


def onnxruntime_dynamic_int8(export_dir: Path, destination: Path) -> Path:
    """ONNX Runtime's documented dynamic int8 of every graph of an SDK export; ``OnnxRuntimeModel.load`` reads it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from dsvl_adapt.export.onnx_format import read_report

    report = read_report(export_dir)
    graphs = [report.graph_path(name) for name in report.graphs]
    _copy_non_graph_files(Path(export_dir), destination, graphs)
    with tempfile.TemporaryDirectory(prefix="ort-pre-") as tmp:
        for src in graphs:
            pre = Path(tmp) / f"{src.stem}.pre.onnx"
            quant_pre_process(str(src), str(pre))
            quantize_dynamic(str(pre), str(destination / src.name), weight_type=QuantType.QInt8)
    return destination


def openvino_convert(export_dir: Path, destination: Path) -> Path:
    """OpenVINO IR of every graph of an SDK export, converted and saved with OpenVINO's defaults."""
    import openvino as ov

    from dsvl_adapt.export.onnx_format import read_report

    report = read_report(export_dir)
    graphs = [report.graph_path(name) for name in report.graphs]
    _copy_non_graph_files(Path(export_dir), destination, graphs)
    files = {}
    for name in report.graphs:
        xml = destination / f"{name}.xml"
        ov.save_model(ov.convert_model(str(report.graph_path(name))), str(xml))
        files[name] = xml.name
    meta = {"mode": report.mode, "graphs": files, "embed_file": report.embed_file, "hybrid": report.hybrid,
            "image_token_id": report.image_token_id, "converted_from": str(export_dir),
            "how": "ov.convert_model(onnx) + ov.save_model(model, xml) with defaults"}
    (destination / PLAIN_OPENVINO_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return destination


def _calibration_samples(ir_dir: Path, batches: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each graph's inputs for each batch (split graphs: the LM gets the merged fp32 embeddings)."""
    fp32 = PlainOpenVinoModel(ir_dir)
    samples: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in fp32.graphs}
    for batch in batches:
        ids = to_numpy(batch["input_ids"], np.int64)
        mask = to_numpy(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        pixels = fp32._pixel_feeds(batch)
        if "model" in samples:
            samples["model"].append({"input_ids": ids, "attention_mask": mask, **pixels})
        else:
            samples["vision"].append(pixels)
            samples["lm"].append(fp32.lm_feeds(fp32.inputs_embeds(ids, fp32.image_embeddings(batch)), mask))
    return samples


def nncf_quantize_defaults(ir_dir: Path, destination: Path, batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """NNCF's basic PTQ flow, every default, on each graph of an IR from :func:`openvino_convert`. Returns what ran."""
    import nncf
    import openvino as ov

    meta = json.loads((ir_dir / PLAIN_OPENVINO_FILE).read_text())
    samples = _calibration_samples(ir_dir, batches)
    _copy_non_graph_files(ir_dir, destination, [])
    core = ov.Core()
    # NNCF logs and draws progress bars on stdout, where the benchmarks print their JSON: send them to stderr.
    for handler in logging.getLogger("nncf").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    for name, file in meta["graphs"].items():
        model = core.read_model(str(ir_dir / file))
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(model, nncf.Dataset(samples[name]))
        ov.save_model(quantized, str(destination / file))
    meta.update({"quantized_from": str(ir_dir), "calibration_samples": len(batches),
                 "how": "nncf.quantize(model, nncf.Dataset(samples)) with every default; ov.save_model defaults"})
    (destination / PLAIN_OPENVINO_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return {"call": "nncf.quantize(model, nncf.Dataset(samples))", "calibration_samples": len(batches),
            "nncf": nncf.__version__}


class PlainOpenVinoModel(GraphRuntimeModel):
    """An IR directory from :func:`openvino_convert` / :func:`nncf_quantize_defaults`, compiled with OpenVINO's
    defaults (only ``INFERENCE_NUM_THREADS`` set), behind the SDK's runtime interface (``forward``, ``generate``)."""

    name = "openvino"
    graph_suffix = ".xml"

    def __init__(self, directory: Path, threads: int | None = None):
        import openvino as ov

        self.directory = Path(directory)
        meta = json.loads((self.directory / PLAIN_OPENVINO_FILE).read_text())
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        core = ov.Core()
        self.compiled = {name: core.compile_model(str(self.directory / file), "CPU", config)
                         for name, file in meta["graphs"].items()}
        self.requests = {name: c.create_infer_request() for name, c in self.compiled.items()}
        self.image_token_id = meta["image_token_id"]
        self.hybrid = meta["hybrid"]
        self._embed = self._embedding_table(SimpleNamespace(mode=meta["mode"], embed_file=meta["embed_file"]),
                                            self.directory)
        self._past = None  # an LM converted as it is from a KV-cache export: explicit past inputs, fed empty
        if meta.get("kv_cache"):  # a stateful LM: run it as the SDK's OpenVINO model does
            from dsvl_adapt.export.onnx_format import KvCacheInfo

            self.kv_cache = KvCacheInfo.model_validate(meta["kv_cache"])
            self._request = 0
        else:
            from dsvl_adapt.export.onnx_format import REPORT_FILE, read_report

            if (self.directory / REPORT_FILE).is_file():
                self._past = read_report(self.directory).kv_cache
        first = next(iter(self.compiled.values()))
        self.properties = {}
        for key in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
            try:
                value = first.get_property(key)
            except RuntimeError:  # pragma: no cover - property unknown to this OpenVINO
                continue
            if hasattr(value, "get_type_name"):
                value = value.get_type_name()
            self.properties[key] = value if isinstance(value, (int, float, str, bool)) else str(value)

    @property
    def graphs(self) -> dict[str, Any]:
        return self.requests

    def lm_feeds(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Every input the LM graph takes for a whole sequence: with a past (an export with a KV cache, converted
        as it is), positions from the mask and an empty past, i.e. a prefill; recomputed each step."""
        if self._past is None:
            return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        return self._past.prefill_feeds(inputs_embeds, attention_mask)

    def _infer(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if name == "lm" and self._past is not None and self._past.past_inputs[0] not in feeds:
            feeds = self.lm_feeds(feeds["inputs_embeds"], feeds["attention_mask"])
        result = self.requests[name].infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return np.array(result.to_tuple()[0], copy=True)

    def _lm_step(self, *args: Any, **kwargs: Any) -> Any:  # the stateful LM, as the SDK's OpenVINO model runs it
        from dsvl_adapt.runtimes.openvino import OpenVinoModel

        return OpenVinoModel._lm_step(self, *args, **kwargs)  # type: ignore[arg-type]

    def _run_lm(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        from dsvl_adapt.runtimes.openvino import OpenVinoModel

        return OpenVinoModel._run_lm(self, feeds)  # type: ignore[arg-type]

    def kv_cache_bytes(self, state: Any = None) -> int:
        from dsvl_adapt.runtimes.openvino import OpenVinoModel

        return OpenVinoModel.kv_cache_bytes(self, state)  # type: ignore[arg-type]


def nncf_int4_stateful_defaults(export_dir: Path, destination: Path) -> dict[str, Any]:
    """The int4 + stateful baseline of the module docstring from an SDK split export with a KV cache."""
    import nncf
    import openvino as ov

    from dsvl_adapt.export.onnx_format import read_report
    from dsvl_adapt.runtimes.openvino import make_stateful

    report = read_report(export_dir)
    if report.mode != "split" or report.kv_cache is None:
        raise ValueError(f"{export_dir}: the int4 stateful baseline needs a split export with a KV cache")
    graphs = [report.graph_path(name) for name in report.graphs]
    _copy_non_graph_files(Path(export_dir), destination, graphs)
    for handler in logging.getLogger("nncf").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    files = {}
    adjusted = False
    for name in report.graphs:
        model = ov.convert_model(str(report.graph_path(name)))
        with contextlib.redirect_stdout(sys.stderr):
            if name == "lm":
                make_stateful(model, report.kv_cache)
                try:
                    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM)
                except nncf.InvalidGroupSizeError:  # layers narrower than a group of 128: tiny presets only
                    from nncf.quantization.advanced_parameters import (
                        AdvancedCompressionParameters,
                        GroupSizeFallbackMode,
                    )

                    adjusted = True
                    model = nncf.compress_weights(
                        model,
                        mode=nncf.CompressWeightsMode.INT4_ASYM,
                        advanced_parameters=AdvancedCompressionParameters(
                            group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
            else:
                model = nncf.compress_weights(model)
        ov.save_model(model, str(destination / f"{name}.xml"))
        files[name] = f"{name}.xml"
    meta = {"mode": report.mode, "graphs": files, "embed_file": report.embed_file, "hybrid": report.hybrid,
            "image_token_id": report.image_token_id, "converted_from": str(export_dir),
            "kv_cache": report.kv_cache.model_dump(),
            "how": "lm: make stateful, nncf.compress_weights(mode=INT4_ASYM) defaults; vision: "
                   "nncf.compress_weights() defaults; ov.save_model defaults"}
    (destination / PLAIN_OPENVINO_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    if adjusted:
        meta["how"] += " (layers narrower than 128: group_size_fallback_mode=ADJUST, as NNCF's error advises)"
        (destination / PLAIN_OPENVINO_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return {"call": meta["how"], "nncf": nncf.__version__}


def openvino_available() -> str | None:
    """None when OpenVINO and NNCF import; else why not."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        return f"{e} (pip install \"dsvl-adapt[openvino]\")"
    return None


def nncf_int4(ir_dir: Path, destination: Path, batches: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """NNCF's int4 weight compression on each graph of an IR from :func:`openvino_convert`, as its weight
    compression guide shows it: ``nncf.compress_weights(model, mode=CompressWeightsMode.INT4_ASYM)`` with every
    other default (group size 128, ratio 1, int8 backup for embeddings and the last layer); with ``batches`` also
    ``dataset=nncf.Dataset(samples), awq=True, scale_estimation=True`` (the guide's data-aware recipe). A graph
    NNCF refuses (e.g. channels that group 128 does not divide) is kept as converted, and said so."""
    import nncf
    import openvino as ov

    meta = json.loads((ir_dir / PLAIN_OPENVINO_FILE).read_text())
    samples = _calibration_samples(ir_dir, batches) if batches else {}
    _copy_non_graph_files(ir_dir, destination, [])
    core = ov.Core()
    refused: dict[str, str] = {}
    for name, file in meta["graphs"].items():
        model = core.read_model(str(ir_dir / file))
        kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode.INT4_ASYM}
        if batches:
            kwargs.update(dataset=nncf.Dataset(samples[name]), awq=True, scale_estimation=True)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                model = nncf.compress_weights(model, **kwargs)
        except nncf.errors.InvalidGroupSizeError as e:
            # group 128 does not divide some layer's channels: do what NNCF's error message advises
            from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

            refused[name] = (f"{type(e).__name__}: {str(e).splitlines()[0]} -> retried with "
                             "group_size_fallback_mode=ADJUST")
            with contextlib.redirect_stdout(sys.stderr):
                model = nncf.compress_weights(core.read_model(str(ir_dir / file)), **kwargs,
                                              advanced_parameters=AdvancedCompressionParameters(
                                                  group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))
        ov.save_model(model, str(destination / file))
    call = ("nncf.compress_weights(model, mode=INT4_ASYM" + (", dataset=..., awq=True, scale_estimation=True)"
                                                            if batches else ")"))
    meta.update({"compressed_from": str(ir_dir), "how": call, "refused": refused})
    (destination / PLAIN_OPENVINO_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return {"call": call, "calibration_samples": len(batches or []), "refused": refused, "nncf": nncf.__version__}
