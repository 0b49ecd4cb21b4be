"""OpenVINO: convert an ONNX export (or a PyTorch model) to OpenVINO IR, compress it with NNCF, and run it.

Import this module freely; ``openvino`` and ``nncf`` are imported on first use and, when missing, raise
:class:`dsvl_adapt.errors.ConfigError` with the install command (``pip install "dsvl-adapt[openvino]"``).

Layout written by :func:`convert_export` (mirrors an ONNX export directory)::

    full   model.xml + model.bin         input_ids, attention_mask, pixel_values[, high_res_pixel_values] -> logits
    split  vision.xml/.bin, lm.xml/.bin  as the ONNX split graphs, with the token table for the caller's lookup;
                                         the LM is stateful when the export has a KV cache (below):
                                         embed_tokens.npy, or per-row int8 embed_tokens.int8.npz when compressed
                                         (``quantize.embedding``, :mod:`dsvl_adapt.runtimes.embedding`)
    both   config.json (HF config), openvino.json (:class:`OpenVinoReport`: what was converted, how it was
           compressed, the inference precision, the runtime properties, the accuracy checks)

The IR is converted from the ONNX graphs that :func:`dsvl_adapt.export.onnx.export_onnx` writes (``ov.convert_model``
on each ``.onnx``), so full and split layouts, dynamic batch/sequence axes and the position-ids-from-mask convention
are the same as in ONNX Runtime. Weights are saved as they are (``compress_to_fp16=False``: OpenVINO's default would
silently store fp32 weights as fp16).

Compression (a :class:`dsvl_adapt.quantization.QuantizeConfig` with ``backend="openvino"``):

* ``weight_only`` int8 / int4: ``nncf.compress_weights`` (INT8_ASYM per channel; INT4_ASYM in groups of
  ``block_size``, embeddings and the last layer int8 as NNCF decides). Activations stay in the inference precision:
  the CPU plugin's dynamic activation quantization is switched off (``DYNAMIC_QUANTIZATION_GROUP_SIZE=0``).
* ``dynamic`` int8 / int4: the same compressed weights, with the CPU plugin quantizing activations per call in groups
  of 32 (OpenVINO's own default for compressed weights). About 2x faster than ``weight_only`` on CPU.
* ``static`` int8: full post-training quantization, ``nncf.quantize`` (``ModelType.TRANSFORMER``: SmoothQuant, fast
  bias correction), calibrated on ``calibration_batches`` batches of the vertical's data.

The skip policy (``QuantizeConfig.skip``) is honoured through the torch module path that the exporter stores on every
ONNX node; OpenVINO keeps the ONNX node names as friendly names, which become NNCF's ``IgnoredScope``.

KV cache: when the ONNX LM takes ``past_key_values.<i>.*`` and returns ``present.<i>.*``, the IR is made stateful -
OpenVINO's ``MakeStateful`` pass (``openvino.passes``; Optimum-Intel calls the same transformation through
``openvino._offline_transformations.apply_make_stateful_transformation``) turns each past/present pair into a
ReadValue/Assign variable, so the cache lives inside the infer request and only ``inputs_embeds``,
``attention_mask`` (B, past + T) and ``position_ids`` (B, T) cross the boundary. Each variable starts as a
(B, kv_heads, 0, head_dim) zero-length tensor, B read from ``inputs_embeds`` (Optimum-Intel's
``build_state_initializer``); ``reset_state`` starts a request. No ``beam_idx`` input: it only reorders the cache
for beam search, which the loop does not do. Compression (NNCF) runs on the stateless graph, the transformation after.

Precision is explicit: OpenVINO's CPU plugin otherwise runs in bf16 wherever the CPU supports it (AVX512-BF16, AMX)
and in f32 elsewhere, so the same IR would give different numbers on different machines. ``precision`` ("f32" or
"bf16") is stored in the report and pinned as ``INFERENCE_PRECISION_HINT`` at every load; ``OpenVinoModel.properties``
holds what the plugin actually applied.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dsvl_adapt.errors import ConfigError
from dsvl_adapt.export.onnx_format import KvCacheInfo
from dsvl_adapt.runtimes import GraphRuntimeModel, to_numpy
from dsvl_adapt.runtimes.embedding import (
    copy_embedding_table,
    table_bytes,
    table_dtype,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from dsvl_adapt.quantization import QuantizeConfig

__all__ = [
    "INSTALL_HINT",
    "PRECISIONS",
    "REPORT_FILE",
    "OpenVinoModel",
    "OpenVinoReport",
    "convert_export",
    "convert_torch",
    "is_openvino_dir",
    "quantize_openvino",
    "read_openvino_report",
    "require_openvino",
]

INSTALL_HINT = 'pip install "dsvl-adapt[openvino]"'
REPORT_FILE = "openvino.json"
FORMAT = "dsvl-adapt/openvino-ir"
FORMAT_VERSION = 1
PRECISIONS = ("f32", "bf16")
Precision = Literal["f32", "bf16"]
DEVICE = "CPU"
DYNAMIC_GROUP = 32  # OpenVINO CPU's default group size for dynamic activation quantization
_LOW_PRECISION = {"i8", "u8", "i4", "u4", "nf4", "f4e2m1"}


def _ov():
    try:
        import openvino
    except ImportError as e:
        raise ConfigError(f"the OpenVINO runtime needs the 'openvino' extra ({e}); install it with: "
                          f"{INSTALL_HINT}") from None
    return openvino


def _nncf():
    try:
        import nncf
    except ImportError as e:
        raise ConfigError(f"OpenVINO compression needs NNCF from the 'openvino' extra ({e}); install it with: "
                          f"{INSTALL_HINT}") from None
    return nncf


def require_openvino(compression: bool = True) -> None:
    """Raise :class:`ConfigError` with the install command unless OpenVINO (and NNCF) import."""
    _ov()
    if compression:
        _nncf()


# --------------------------------------------------------------------------------------------------------------------
# report


class OvGraph(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="the .xml; its weights lie in the .bin of the same stem")
    inputs: list[str]
    outputs: list[str]
    bytes: int = Field(description=".xml + .bin on disk")
    op_types: dict[str, int]
    weights: dict[str, dict[str, int]] = Field(description="constant dtype -> {count, bytes}")
    quantized_ops: int = Field(0, description="MatMul/Convolution/Gather reading a low-precision (int8/int4) weight")
    activation_quantizers: int = Field(0, description="FakeQuantize nodes on activations (static mode)")
    skipped_ops: int = Field(0, description="weighted ops kept in full precision by the skip policy")

    @property
    def weights_file(self) -> str:
        return str(Path(self.file).with_suffix(".bin"))


class OpenVinoReport(BaseModel):
    """What :func:`convert_export` wrote. Saved as ``openvino.json`` beside the IR."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    directory: str
    source: str = Field(description="the ONNX export directory the IR was converted from")
    source_bytes: int
    mode: Literal["full", "split"]
    graphs: dict[str, OvGraph]
    precision: Precision = Field(description="inference precision pinned at load (INFERENCE_PRECISION_HINT)")
    dtype: Literal["fp32", "int8", "int4"] = Field(description="weight dtype of the compressed layers")
    runtime_properties: dict[str, Any] = Field(description="CPU plugin properties applied at every load")
    quantization: dict[str, Any] | None = Field(None, description="QuantizeConfig and NNCF call, when compressed")
    hybrid: bool
    image_token_id: int
    num_image_tokens: int
    embed_file: str | None = None
    config_file: str = "config.json"
    kv_cache: KvCacheInfo | None = Field(None, description="the ONNX LM's cache names; set when lm.xml is stateful")
    max_abs_diff: dict[str, float] = Field(default_factory=dict,
                                           description="logits vs the unquantized IR at f32, attended positions")
    top1_agreement: float | None = Field(None, description="share of attended positions with the same argmax")
    reload_max_abs_diff: float | None = Field(None, description="saved IR vs the in-memory model, same precision")
    versions: dict[str, str] = Field(default_factory=dict)
    seconds: float = 0.0

    def graph_path(self, name: str) -> Path:
        return Path(self.directory) / self.graphs[name].file

    @property
    def bytes(self) -> int:
        extra = table_bytes(self.directory, self.embed_file)
        return sum(g.bytes for g in self.graphs.values()) + extra

    @property
    def label(self) -> str:
        """``openvino-<weights dtype>-<precision>``, e.g. ``openvino-int8-f32``."""
        return f"openvino-{self.dtype}-{self.precision}"


def is_openvino_dir(directory: str | Path) -> bool:
    return (Path(directory) / REPORT_FILE).is_file()


def read_openvino_report(directory: str | Path) -> OpenVinoReport:
    directory = Path(directory)
    report = OpenVinoReport.model_validate_json((directory / REPORT_FILE).read_text())
    if report.format != FORMAT or report.format_version > FORMAT_VERSION:
        raise ValueError(f"{directory / REPORT_FILE}: not a {FORMAT} v<={FORMAT_VERSION} report")
    return report.model_copy(update={"directory": str(directory)})


def runtime_properties(precision: str, mode: str | None) -> dict[str, Any]:
    """CPU plugin properties for an artifact: pinned precision; dynamic activation quantization only in ``dynamic``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"INFERENCE_PRECISION_HINT": precision,
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": DYNAMIC_GROUP if mode == "dynamic" else 0,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


# --------------------------------------------------------------------------------------------------------------------
# runtime


def _compile(core, model, properties: dict[str, Any], threads: int | None):
    props = dict(properties)
    if threads is not None:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model if not isinstance(model, Path) else str(model), DEVICE, props)


def _effective(compiled) -> dict[str, Any]:
    """What the CPU plugin applied (the precision as OpenVINO's short type name: f32, bf16, f16)."""
    out: dict[str, Any] = {}
    for key in ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "INFERENCE_NUM_THREADS",
                "NUM_STREAMS", "PERFORMANCE_HINT"):
        try:
            value = compiled.get_property(key)
        except RuntimeError:  # pragma: no cover - property unknown to this OpenVINO
            continue
        if hasattr(value, "get_type_name"):
            value = value.get_type_name()
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class OpenVinoModel(GraphRuntimeModel):
    """An OpenVINO IR directory (full or split, fp32 or compressed) on the CPU, behind the runtime interface."""

    name = "openvino"
    runtime = "openvino"
    graph_suffix = ".xml"

    def __init__(self, report: OpenVinoReport, *, threads: int | None = None, precision: str | None = None,
                 models: dict[str, Any] | None = None):
        ov = _ov()
        self.report = report
        self.directory = Path(report.directory)
        self.precision = precision or report.precision
        self.threads = threads
        properties = {**report.runtime_properties, "INFERENCE_PRECISION_HINT": self.precision}
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        core = ov.Core()
        sources = models or {name: report.graph_path(name) for name in report.graphs}
        self.compiled = {name: _compile(core, sources[name], properties, threads) for name in report.graphs}
        self.requests = {name: c.create_infer_request() for name, c in self.compiled.items()}
        self.properties = _effective(next(iter(self.compiled.values())))
        if self.properties.get("INFERENCE_PRECISION_HINT") != self.precision:
            warnings.warn(f"OpenVINO runs in {self.properties.get('INFERENCE_PRECISION_HINT')!r} although "
                          f"{self.precision!r} was asked for (this CPU may lack it)", stacklevel=2)
        self.image_token_id = report.image_token_id
        self.hybrid = report.hybrid
        self._embed = self._embedding_table(report, self.directory)
        self.kv_cache = report.kv_cache if report.mode == "split" else None
        self._request = 0  # which request the LM's internal state belongs to (a stale CacheState is refused)

    @classmethod
    def load(cls, directory: str | Path, threads: int | None = None, precision: str | None = None) -> OpenVinoModel:
        """Open what :func:`convert_export` wrote. ``precision=None``: the report's (``f32`` unless converted for
        ``bf16``); either way it is pinned, never left to the CPU plugin's default."""
        return cls(read_openvino_report(directory), threads=threads, precision=precision)

    @property
    def size_bytes(self) -> int:
        return self.report.bytes

    @property
    def graphs(self) -> dict[str, Any]:
        return self.requests

    def _infer(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        result = self.requests[name].infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return np.array(result.to_tuple()[0], copy=True)

    def _lm_step(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                 cache: int | None, last_only: bool = False) -> tuple[np.ndarray, int]:
        """The stateful LM: ``cache`` None resets the request's state (a new request); otherwise it must be the
        token of the request now held, since the state lives in the one infer request."""
        request = self.requests["lm"]
        if cache is None:
            request.reset_state()
            self._request += 1
        elif cache != self._request:
            raise RuntimeError("this decode state belongs to an earlier request: the OpenVINO LM holds one "
                               "request's KV cache at a time; prefill again")
        feeds = {"inputs_embeds": np.ascontiguousarray(inputs_embeds, dtype=np.float32),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
                 "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
                 **self.kv_cache.logits_feed(inputs_embeds.shape[1], last_only)}
        return self._run_lm(feeds), self._request

    def _run_lm(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One run of the stateful LM on ``feeds``; the logits (B, T, vocab)."""
        result = self.requests["lm"].infer(feeds)
        return np.array(result.to_tuple()[0], copy=True)

    def kv_cache_bytes(self, state: Any = None) -> int:
        """Bytes the LM's state variables (the KV cache of the current request) hold."""
        return sum(int(v.state.byte_size) for v in self.requests["lm"].query_state())


# --------------------------------------------------------------------------------------------------------------------
# conversion and compression


def _onnx_module_paths(path: Path) -> dict[str, str | None]:
    """ONNX node name (and output tensor name) -> torch module path, as the exporter recorded it, for every node.

    OpenVINO names a converted op after its ONNX node, except an op that produces a graph output: that one takes the
    output's name (``logits``, ``image_embeds``), hence both keys."""
    import onnx

    from dsvl_adapt.runtimes.onnxruntime import _module_path

    model = onnx.load(str(path), load_external_data=False)
    paths: dict[str, str | None] = {}
    for node in model.graph.node:
        module = _module_path(node)
        for key in (*node.output, node.name):
            paths[key] = module
    return paths


_WEIGHTED = ("MatMul", "Convolution", "Gather")
_PASS_THROUGH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize", "Unsqueeze")


def _weight_source(op, depth: int = 6):
    """The Constant a weighted op's weight input comes from (through decompression ops), or None."""
    index = 0 if op.get_type_name() == "Gather" else 1
    if op.get_input_size() <= index:
        return None
    node = op.input_value(index).get_node()
    for _ in range(depth):
        kind = node.get_type_name()
        if kind == "Constant":
            return node
        if kind not in _PASS_THROUGH:
            return None
        node = node.input_value(0).get_node()
    return None


def _weighted_ops(model) -> list:
    return [op for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED and _weight_source(op) is not None]


def _skipped_names(model, paths: dict[str, str | None], config: QuantizeConfig | None) -> list[str]:
    """Friendly names of the IR ops the skip policy keeps in full precision (all ops of a skipped module)."""
    if config is None:
        return []
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if paths.get(op.get_friendly_name()) and config.skips(paths[op.get_friendly_name()])]


def _graph_summary(model, xml: Path, skipped: int) -> dict[str, Any]:
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    weights: dict[str, dict[str, int]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            et = op.get_output_element_type(0)
            entry = weights.setdefault(et.get_type_name(), {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += int(op.get_byte_size())
    quantized = 0
    for op in _weighted_ops(model):
        if _weight_source(op).get_output_element_type(0).get_type_name() in _LOW_PRECISION:
            quantized += 1
    fq = sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
             and op.input_value(0).get_node().get_type_name() != "Constant")
    return {"file": xml.name, "inputs": [p.get_any_name() for p in model.inputs],
            "outputs": [p.get_any_name() for p in model.outputs],
            "bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
            "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
            "weights": dict(sorted(weights.items())), "quantized_ops": quantized, "activation_quantizers": fq,
            "skipped_ops": skipped}


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs at INFO and draws rich progress bars on stdout: keep both out of the pipeline's output."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _compress(model, config: QuantizeConfig, ignored: list[str], calibration: list[dict[str, np.ndarray]],
              paths: dict[str, str | None] | None = None):
    nncf = _nncf()
    scope = nncf.IgnoredScope(names=ignored, validate=False)
    with _quiet_nncf():
        if config.mode == "static":
            if not calibration:
                raise ValueError("static quantization needs calibration batches")
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

            # 7-bit weights on CPUs without VNNI, whose u8s8 kernels saturate (NNCF's overflow fix; see machine.py)
            overflow = OverflowFix.ENABLE if config.reduce_range_resolved else OverflowFix.FIRST_LAYER
            return nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=len(calibration), ignored_scope=scope,
                                 advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow))
        if config.bits == 8:
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=scope)
        from dsvl_adapt.lowbit.int4_openvino import compress_for_config

        return compress_for_config(model, config, ignored, calibration, paths or {})


def _graph_feeds(runtime: OpenVinoModel, report, batches: Sequence[dict[str, Any]]
                 ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of each graph for each batch (split: the LM gets the fp32 merged embeddings)."""
    feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in report.graphs}
    for batch in batches:
        ids = to_numpy(batch["input_ids"], np.int64)
        mask = to_numpy(batch.get("attention_mask", np.ones_like(ids)), np.int64)
        pixels = runtime._pixel_feeds(batch)
        if report.mode == "full":
            feeds["model"].append({"input_ids": ids, "attention_mask": mask, **pixels})
        else:
            feeds["vision"].append(pixels)
            image = runtime.image_embeddings(pixels)
            embeds = runtime.inputs_embeds(ids, image)  # the stateless LM (compressed before it is made stateful)
            feeds["lm"].append(report.kv_cache.prefill_feeds(embeds, mask) if report.kv_cache is not None
                               else {"inputs_embeds": embeds, "attention_mask": mask})
    return feeds


def make_stateful(model, kv: KvCacheInfo) -> None:
    """Turn the LM's past inputs / present outputs into internal state variables (in place), each starting as a
    zero-length (B, kv_heads, 0, head_dim) tensor with B read from ``inputs_embeds``."""
    ov = _ov()
    from openvino import opset13 as ops
    from openvino.passes import MakeStateful, Manager

    manager = Manager()
    manager.register_pass(MakeStateful(dict(zip(kv.past_inputs, kv.present_outputs, strict=True))))
    manager.run_passes(model)
    embeds = model.input("inputs_embeds")
    batch = ops.gather(ops.shape_of(embeds, output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims = [d.get_min_length() for d in op.get_output_partial_shape(0)]
        shape = ops.concat([batch, *(ops.constant(np.array([d], dtype=np.int64)) for d in dims[1:])], 0)
        op.set_arguments([ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), shape)])
    model.validate_nodes_and_infer_types()
    if any(p.get_any_name() in kv.past_inputs for p in model.inputs):  # pragma: no cover - OpenVINO changed
        raise RuntimeError(f"OpenVINO {ov.get_version()} left past inputs on the stateful LM")


def _logits(runtime: OpenVinoModel, batches: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    return [runtime.forward(batch) for batch in batches]


def _compare(xs: list[np.ndarray], ys: list[np.ndarray], batches: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Max abs logit difference and top-1 agreement over the attended positions."""
    diffs, agree, total = [], 0, 0
    for x, y, batch in zip(xs, ys, batches, strict=True):
        valid = to_numpy(batch.get("attention_mask", np.ones(x.shape[:2])), np.int64).astype(bool)
        diffs.append(float(np.abs(x[valid] - y[valid]).max()) if valid.any() else 0.0)
        agree += int((x.argmax(-1) == y.argmax(-1))[valid].sum())
        total += int(valid.sum())
    return max(diffs), agree / max(total, 1)


def _versions() -> dict[str, str]:
    out = {"openvino": str(_ov().get_version())}
    with contextlib.suppress(ConfigError):
        out["nncf"] = str(_nncf().__version__)
    return out


def convert_export(source: str | Path, destination: str | Path, *, precision: str = "f32",
                   quantize: QuantizeConfig | None = None, batches: Sequence[dict[str, Any]] | None = None,
                   compare_batches: int = 2, threads: int | None = None) -> OpenVinoReport:
    """Convert the ONNX export in ``source`` (full or split) to OpenVINO IR in ``destination``.

    ``quantize`` (``backend="openvino"``): compress with NNCF (see the module docstring); None keeps fp32.
    ``batches``: model batches (``input_ids``, ``attention_mask``, ``pixel_values`` ...); static mode calibrates on
    the first ``quantize.calibration_batches``, the first ``compare_batches`` measure the drift from the fp32 IR and
    check that the saved IR reloads to the same logits (a ``ValueError`` otherwise). ``precision`` is pinned at
    every load and recorded in ``openvino.json``.
    """
    from dsvl_adapt.export.onnx_format import read_report

    ov = _ov()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if quantize is not None:
        if quantize.backend != "openvino":
            raise ValueError(f"convert_export needs a QuantizeConfig with backend='openvino', got "
                             f"{quantize.backend!r}")
        _nncf()
    t0 = time.perf_counter()
    src = read_report(source)
    destination = Path(destination)
    if destination.resolve() == Path(src.directory).resolve():
        raise ValueError("destination must differ from the source export directory")
    destination.mkdir(parents=True, exist_ok=True)
    batches = list(batches or [])
    mode = quantize.mode if quantize is not None else None
    dtype = "fp32" if quantize is None else ("int4" if quantize.bits == 4 else "int8")
    properties = runtime_properties(precision, mode)

    kv = src.kv_cache if src.mode == "split" else None

    def stateful(name: str, model):
        if kv is not None and name == "lm":
            make_stateful(model, kv)
        return model

    fp32_models = {name: stateful(name, ov.convert_model(str(src.graph_path(name)))) for name in src.graphs}
    stub = OpenVinoReport(
        directory=str(destination), source=str(Path(source).resolve()), source_bytes=src.bytes, mode=src.mode,
        graphs={name: OvGraph(file=f"{name}.xml", inputs=[], outputs=[], bytes=0, op_types={}, weights={})
                for name in src.graphs},
        precision=precision, dtype=dtype, runtime_properties=properties, hybrid=src.hybrid,
        image_token_id=src.image_token_id, num_image_tokens=src.num_image_tokens, embed_file=src.embed_file,
        config_file=src.config_file, kv_cache=kv, versions=_versions())
    for extra in (src.embed_file, src.config_file):
        if extra:
            shutil.copyfile(Path(src.directory) / extra, destination / extra)

    checks = batches[:compare_batches]
    fp32_stub = stub.model_copy(update={"runtime_properties": runtime_properties("f32", None), "precision": "f32"})
    reference = None  # logits of the fp32 IR at f32: the yardstick for the compressed one
    calibrated = quantize is not None and (quantize.mode == "static" or (quantize.bits == 4
                                                                       and quantize.algorithm != "rtn"))
    if quantize is not None and (checks or calibrated):
        fp32_runtime = OpenVinoModel(fp32_stub, threads=threads, models=fp32_models)
        reference = _logits(fp32_runtime, checks)
    final: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    if quantize is None:
        final = fp32_models
        skipped = {name: 0 for name in src.graphs}
    else:
        feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in src.graphs}
        if calibrated:
            feeds = _graph_feeds(fp32_runtime, src, batches[: quantize.calibration_batches])
        fp32_runtime = None  # compiled copies are as large as the weights: free them before compressing
        for name, model in fp32_models.items():
            paths = _onnx_module_paths(src.graph_path(name))
            ignored = _skipped_names(model, paths, quantize)
            ignored_set = set(ignored)
            weighted = [op.get_friendly_name() for op in _weighted_ops(model)]
            skipped[name] = sum(1 for n in weighted if n in ignored_set)
            if all(n in ignored_set for n in weighted):  # nothing left to compress (e.g. the vision graph)
                final[name] = model
                continue
            # NNCF may change the model in place: compress a fresh conversion, keep the fp32 one as reference.
            compressed = _compress(ov.convert_model(str(src.graph_path(name))), quantize, ignored, feeds[name], paths)
            if quantize.bits == 4:  # the plan next to the artifact: which layer holds which precision
                from dsvl_adapt.lowbit.int4_openvino import write_layer_plan

                write_layer_plan(compressed, paths, destination / f"{name}.layers.json", quantize.model_dump())
            final[name] = stateful(name, compressed)
        fp32_models.clear()
        if src.embed_file:  # the reference above looked tokens up in the fp32 table; the compressed model may not
            embed_file = copy_embedding_table(src.directory, src.embed_file, destination, quantize.embedding_dtype)
            if embed_file != src.embed_file:
                (destination / src.embed_file).unlink()
            stub = stub.model_copy(update={"embed_file": embed_file})

    graphs: dict[str, OvGraph] = {}
    for name, model in final.items():
        xml = destination / f"{name}.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        graphs[name] = OvGraph(**_graph_summary(model, xml, skipped[name]))
    quantization = None
    if quantize is not None:
        quantization = {"backend": "openvino", **quantize.model_dump(mode="json"),
                        "nncf": ("quantize(TRANSFORMER)" if quantize.mode == "static" else
                                 "compress_weights(INT8_ASYM)" if quantize.bits == 8 else
                                 f"compress_weights(INT4_{'SYM' if quantize.symmetric else 'ASYM'}, "
                                 f"algorithm={quantize.algorithm})"),
                        "dynamic_activation_quantization": quantize.mode == "dynamic",
                        "embedding_table": table_dtype(stub.embed_file),
                        "quantized_ops": {n: g.quantized_ops for n, g in graphs.items()},
                        "skipped_ops": skipped}
    report = stub.model_copy(update={"graphs": graphs, "quantization": quantization})

    diff = agreement = reload_diff = None
    if checks:
        in_memory = _logits(OpenVinoModel(report, threads=threads, models=final), checks)
        final.clear()
        saved = _logits(OpenVinoModel(report, threads=threads), checks)
        reload_diff, _ = _compare(in_memory, saved, checks)
        if reload_diff != 0.0:
            raise ValueError(f"{destination}: the saved IR does not reload to the same logits "
                             f"(max abs diff {reload_diff:.3g})")
        if reference is not None:
            diff, agreement = _compare(reference, saved, checks)
    report = report.model_copy(update={
        "max_abs_diff": {} if diff is None else {"vs_fp32_ir": diff}, "top1_agreement": agreement,
        "reload_max_abs_diff": reload_diff, "seconds": round(time.perf_counter() - t0, 3)})
    (destination / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
    return report


def convert_torch(model: torch.nn.Module, destination: str | Path, example_batch: dict[str, Any], *,
                  split: bool = False, opset: int | None = None, **kwargs: Any) -> OpenVinoReport:
    """Export ``model`` to ONNX in a temporary directory (:func:`export_onnx`), then :func:`convert_export` it.

    ``kwargs`` go to :func:`convert_export` (``precision``, ``quantize``, ``batches`` ...). ``source`` in the report
    then names a directory that no longer exists."""
    from dsvl_adapt.export.onnx import export_onnx

    require_openvino(compression=kwargs.get("quantize") is not None)
    with tempfile.TemporaryDirectory(prefix="dsvl-ov-") as tmp:
        export_onnx(model, tmp, example_batch, split=split, opset=opset, threads=kwargs.get("threads"))
        return convert_export(tmp, destination, **kwargs)


def quantize_openvino(source: str | Path, destination: str | Path, config: QuantizeConfig,
                      batches: Sequence[dict[str, Any]] | None = None, *, precision: str = "f32",
                      **kwargs: Any) -> OpenVinoReport:
    """Convert an ONNX export directory to OpenVINO IR and compress it with NNCF (``config.backend='openvino'``).

    Writes IR + ``openvino.json`` (``OpenVinoModel.load`` reads it) and returns the :class:`OpenVinoReport`.
    ``precision`` (f32 | bf16) is the inference precision pinned at every load. See :func:`convert_export`.
    """
    if config.backend != "openvino":
        raise ValueError(f"quantize_openvino needs backend='openvino', got {config.backend!r}")
    return convert_export(source, destination, precision=precision, quantize=config, batches=batches, **kwargs)
