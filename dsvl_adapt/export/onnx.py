"""ONNX export of DeepSeek-VL models (plain and hybrid), with a numerical check and an op/dtype inventory.

Layouts written into ``directory``::

    full  (split=False)  model.onnx      input_ids, attention_mask, pixel_values[, high_res_pixel_values] -> logits
    split (split=True)   vision.onnx     pixel_values[, high_res_pixel_values] -> image_embeds (B, N, hidden), aligned
                         lm.onnx         inputs_embeds, attention_mask, position_ids, logits_positions,
                                         past_key_values.<i>.key|value -> logits, present.<i>.key|value
                                         (the KV cache: one graph for the prefill - empty past - and each decode
                                         step; ``kv_cache=False`` or opset < 18: inputs_embeds, attention_mask ->
                                         logits, no cache)
                         embed_tokens.npy  the (vocab, hidden) fp32 embedding table, for the caller's lookup
                                           (quantized exports: ``embed_tokens.int8.npz``, see runtimes.embedding)
    both                 <graph>.inventory.json, config.json (the HF config), export.json (the ExportReport)

Patch convolutions (kernel = stride: SigLIP's and SAM's patch embeddings, SAM's 1x1 neck) are exported as
Reshape/Transpose/MatMul (:mod:`dsvl_adapt.models.patch_convs`): the same arithmetic (PyTorch's side of the check
runs it too, so the check measures the graph, not conv-versus-matmul rounding), and a ``MatMul`` is what the
weight-only quantizers cover - as a ``Conv`` the patch kernel stayed fp32 in every int4 student.
``ExportReport.patch_convs_as_matmul`` lists them.

Batch and sequence axes are dynamic. The full graph inserts image features with NonZero/ScatterND (that is how
``masked_scatter`` lowers); the split graphs have neither: the caller embeds ``input_ids`` with ``embed_tokens.npy``
and writes the image embeddings row by row at the ``image_token_id`` positions (``OnnxRuntimeModel`` does this).

Position ids are computed inside the full graph from ``attention_mask`` (``cumsum - 1``), so left-padded batches -
what generation needs - get the same positions as ``generate`` gives them; without padding this equals the model's
default. The split LM with a cache takes them as an input (the runtime computes them the same way from the mask,
which covers past and new positions: (B, past + T)).

The LM with a cache is ONE graph, not a prefill graph plus a decode graph: past keys/values of shape
(B, kv_heads, past, head_dim) with ``past`` a dynamic axis that may be 0 serve the prefill (empty past) and every
decode step (past = the cached length). Two graphs would store every weight twice (or share it through external
data that quantizers rewrite separately); an ``If``-merged graph (Optimum's old ``decoder_model_merged``) carries
both branches for no gain on CPU. The same graph is what OpenVINO's make-stateful transformation takes
(:mod:`dsvl_adapt.runtimes.openvino`). Its names follow Optimum / onnxruntime-genai: ``past_key_values.<i>.key``,
``present.<i>.value``. Logits come for the new positions the ``logits_positions`` input names ((K,) int64, the
same for every row; transformers' ``logits_to_keep`` as a tensor): the last one for prefill and decode, every one
for ``forward`` (the checks) and calibration. Only those rows reach the head: at DeepSeek-VL-1.3B's vocabulary of
102,400 the head is ~0.42 GFLOP per position and its output 0.4 MB per position, so a 600-token prefill that kept
every position would spend ~250 GFLOP and 0.25 GB a row on logits it throws away.

Exporter: the torch.export-based ("dynamo") exporter, for every opset it supports (>= 18; default the exporter's
own). Why: the TorchScript exporter is deprecated and warns on every call, stores the tied ``lm_head``/embedding
twice, and names folded weights ``onnx::MatMul_123``; the dynamo exporter records every node's module path
(``pkg.torch.onnx.name_scopes``), which the ONNX Runtime quantizer uses to honour the per-module skip policy. Its two
costs: transformers' runtime checks must be off while tracing (``TRANSFORMERS_DISABLE_TORCH_CHECK=1``, set only for
the call) and it is slow (~7 s for the tiny preset). Only when a target asks for ``opset < 18`` is the TorchScript
exporter used (it then also needs the explicit ``attention_mask``, which these graphs always take).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dsvl_adapt.export.onnx_format import (
    REPORT_FILE,
    WRAPPER_ATTR,
    ExportReport,
    GraphInfo,
    KvCacheInfo,
    check_rows,
    graph_files_bytes,
    graph_inventory,
    read_report,
    write_inventory,
)
from dsvl_adapt.export.tracing import tracing_environment
from dsvl_adapt.machine import process_peak_rss_bytes, return_freed_memory
from dsvl_adapt.models.patch_convs import patch_convs_as_linear
from dsvl_adapt.runtimes.embedding import FP32_FILE as EMBED_FILE

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [  # the format's names are re-exported from dsvl_adapt.export.onnx_format
    "MIN_DYNAMO_OPSET",
    "REPORT_FILE",
    "WRAPPER_ATTR",
    "ExportReport",
    "GraphInfo",
    "KvCacheInfo",
    "choose_graphs",
    "export_onnx",
    "graph_files_bytes",
    "graph_inventory",
    "read_report",
    "write_inventory",
]

MIN_DYNAMO_OPSET = 18
#: The LM-with-past input that names the new positions whose logits are computed.
LOGITS_POSITIONS = "logits_positions"
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GiB
#: ONNX ops the full graph needs to insert image features (``masked_scatter`` lowers to them); the split graphs
#: have neither.
FULL_GRAPH_OPS = ("NonZero", "ScatterND")


def choose_graphs(choice: str, supported_ops: list[str] | tuple[str, ...] | None = None, *,
                  table_int8: bool = False) -> Literal["full", "split"]:
    """``full`` or ``split`` for ``export.graphs`` (``auto`` | ``full`` | ``split``): ``auto`` is split when the
    target's op list (``supported_ops``; None = all ops) lacks what the full graph needs (NonZero, ScatterND), or
    when the token-embedding table is to be int8 (``table_int8``): only a split export keeps the table outside the
    graphs, where it is quantized per row or read from the int8 lm_head."""
    if choice in ("full", "split"):
        return choice  # type: ignore[return-value]
    if choice != "auto":
        raise ValueError(f"export.graphs must be auto, full or split, got {choice!r}")
    if table_int8:
        return "split"
    if supported_ops is not None and not set(FULL_GRAPH_OPS) <= set(supported_ops):
        return "split"
    return "full"


# --------------------------------------------------------------------------------------------------------------------
# wrappers: the functions that become graphs


def _wrappers():
    import torch

    from dsvl_adapt.runtimes import position_ids_from_mask

    class FullGraph(torch.nn.Module):
        def __init__(self, model, hybrid: bool):
            super().__init__()
            setattr(self, WRAPPER_ATTR, model)
            self.hybrid = hybrid

        def forward(self, input_ids, attention_mask, pixel_values, high_res_pixel_values=None):
            extra = {"high_res_pixel_values": high_res_pixel_values} if self.hybrid else {}
            out = getattr(self, WRAPPER_ATTR)(
                input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False, **extra)
            return out.logits

    class VisionGraph(torch.nn.Module):
        def __init__(self, model, hybrid: bool):
            super().__init__()
            setattr(self, WRAPPER_ATTR, model)
            self.hybrid = hybrid

        def forward(self, pixel_values, high_res_pixel_values=None):
            inner = getattr(self, WRAPPER_ATTR).model
            if self.hybrid:
                out = inner.get_image_features(pixel_values, high_res_pixel_values, return_dict=True)
            else:
                out = inner.get_image_features(pixel_values, return_dict=True)
            return out.pooler_output

    class LMGraph(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            setattr(self, WRAPPER_ATTR, model)

        def forward(self, inputs_embeds, attention_mask):
            out = getattr(self, WRAPPER_ATTR)(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                              position_ids=position_ids_from_mask(attention_mask), use_cache=False)
            return out.logits

    class LMWithPastGraph(torch.nn.Module):
        """The LM on new positions against past keys/values (possibly empty); logits at the new positions that
        ``logits_positions`` names (the head runs on those rows only) and the present cache."""

        def __init__(self, model):
            super().__init__()
            setattr(self, WRAPPER_ATTR, model)

        def forward(self, inputs_embeds, attention_mask, position_ids, logits_positions, past):
            from transformers import DynamicCache

            hf = getattr(self, WRAPPER_ATTR)
            cache = DynamicCache(config=hf.config.get_text_config())
            for layer in range(len(past) // 2):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            out = hf(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                     cache=cache, use_cache=True, logits_to_keep=logits_positions)
            present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return FullGraph, VisionGraph, LMGraph, LMWithPastGraph


def _export_environment():
    """transformers' data-dependent checks off (dynamo cannot trace them), the ONNX exporter's chatter down."""
    return tracing_environment(("torch.onnx", "torch.onnx._internal.exporter._registration", "torch._export",
                                "torch.export"))


def _export_one(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                dynamic: dict[str, dict[int, str]], opset: int | None, exporter: str, est_bytes: int) -> None:
    import torch

    external = est_bytes > _EXTERNAL_DATA_BYTES
    with _export_environment(), torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic, do_constant_folding=True)
            return
        dims: dict[str, Any] = {}
        shapes: list[Any] = []
        names = iter(input_names)

        def axes_of(name: str) -> dict[int, Any]:
            axes = dynamic.get(name, {})
            # a past axis may be 0 (the prefill's empty cache): torch.export needs the range said
            return {ax: dims.setdefault(label, (torch.export.Dim(label, min=0) if label.startswith("past")
                                                    else torch.export.Dim(label)))
                    for ax, label in axes.items()}

        for arg in args:  # a tuple argument (the past keys/values) takes one name per element
            shapes.append(tuple(axes_of(next(names)) for _ in arg) if isinstance(arg, tuple) else axes_of(next(names)))
        program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=input_names,
                                    output_names=output_names, dynamic_shapes=tuple(shapes), optimize=True,
                                    verbose=False, external_data=external)
        for node in program.model.graph.all_nodes():  # local source paths; useless beyond this machine
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
        program.save(str(path), external_data=external)
    del program
    _forget_rewriter_matches()


def _forget_rewriter_matches() -> None:
    """Drop the graph that onnxscript's rewrite rules keep from their last match.

    The rules are module-level objects, and each rule's matcher keeps the graph, node and match it last saw. That
    graph's initializers wrap the exported module's own parameters, so after an export every weight stayed alive,
    whatever the caller freed, until the next export replaced it: at the 1.3B dimensions 5 GB that the ONNX Runtime
    check then held beside its own copy. The matchers are found by type (their home in onnxscript is private)."""
    import gc

    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # another onnxscript layout: nothing known to clear
        return
    for obj in gc.get_objects():
        if isinstance(obj, SimplePatternMatcher):
            for attribute in ("_graph", "_match", "_current_node", "_tracer"):
                if hasattr(obj, attribute):
                    setattr(obj, attribute, None)


# --------------------------------------------------------------------------------------------------------------------
# export


def _as_tensor(x):
    import torch

    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _prepare_batch(batch: dict[str, Any], hybrid: bool) -> dict[str, Any]:

    names = ["input_ids", "attention_mask", "pixel_values"] + (["high_res_pixel_values"] if hybrid else [])
    missing = [n for n in names if n not in batch]
    if missing:
        raise ValueError(f"example_batch lacks {missing}; the graphs take {names}")
    out = {n: _as_tensor(batch[n]) for n in names}
    out["input_ids"] = out["input_ids"].long()
    out["attention_mask"] = out["attention_mask"].long()
    for n in names[2:]:
        out[n] = out[n].float()
    return out


def _other_length_batch(batch: dict[str, Any], image_token_id: int, extra: int = 3) -> dict[str, Any]:
    """First row only, ``extra`` text tokens longer: exercises both dynamic axes."""
    import torch

    ids = batch["input_ids"][:1]
    text = ids[ids != image_token_id]
    token = int(text[0]) if text.numel() else (image_token_id + 1)
    out = {k: v[:1] for k, v in batch.items()}
    out["input_ids"] = torch.cat([ids, torch.full((1, extra), token, dtype=ids.dtype)], dim=1)
    out["attention_mask"] = torch.cat([out["attention_mask"], torch.ones(1, extra, dtype=torch.long)], dim=1)
    return out


def _past_example(model, embeds, attention_mask) -> tuple[KvCacheInfo, tuple]:
    """Names and shapes of the cache, and tracing arguments for the LM with past: the first two positions of the
    example as the past (computed by the model), the rest as new positions (torch.export specialises sizes 0 and 1,
    so both axes are traced at >= 2)."""
    import torch
    from transformers import DynamicCache

    past_len = 2
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config.get_text_config())
    model(inputs_embeds=embeds[:, :past_len], attention_mask=attention_mask[:, :past_len],
          position_ids=positions[:, :past_len], cache=cache, use_cache=True)
    past = tuple(t.detach() for layer in cache.layers for t in (layer.keys, layer.values))
    layers = len(past) // 2
    info = KvCacheInfo(
        past_inputs=[f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")],
        present_outputs=[f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")],
        kv_heads=[int(past[2 * i].shape[1]) for i in range(layers)],
        head_dims=[int(past[2 * i].shape[3]) for i in range(layers)],
        dtype=str(past[0].dtype).removeprefix("torch."), logits_positions=LOGITS_POSITIONS)
    new = embeds.shape[1] - past_len
    if new < 2:
        raise ValueError(f"example_batch is too short to trace the KV-cache graph ({embeds.shape[1]} positions; "
                         f"at least {past_len + 2} needed)")
    keep = torch.arange(new - 2, new)  # two of the new positions: a traced size of 1 would be fixed at 1
    return info, (embeds[:, past_len:], attention_mask, positions[:, past_len:], keep, past)


def _unpadded_row(batch: dict[str, Any]) -> dict[str, Any]:
    """The example's first row without its padding: the decode check feeds its last token, which must be a real one
    (a padded calibration batch ends some rows with pad tokens, whose logits mean nothing)."""
    keep = batch["attention_mask"][0].bool()
    row = {k: v[:1] for k, v in batch.items()}
    row["input_ids"] = row["input_ids"][:, keep]
    row["attention_mask"] = row["attention_mask"][:, keep]
    return row


def _decode_diff(runtime, expected: np.ndarray, batch: dict[str, Any], pixel_names: list[str]) -> float:
    """Prefill all but the last token through the runtime, decode the last against the cache: max logit difference
    to PyTorch's logits at that position (``expected``: PyTorch's logits for ``batch``, whose rows are unpadded)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prompt = {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], **{n: batch[n] for n in pixel_names}}
    _, state = runtime.prefill(prompt)
    got, _ = runtime.decode(state, ids[:, -1].numpy())
    return float(np.abs(got - expected[:, -1]).max())


def _release(model) -> None:
    """Free the weights of ``model`` in place (its parameters and buffers move to the ``meta`` device), so that the
    memory goes back even while callers still hold a reference to the module."""
    import gc

    model.to_empty(device="meta")
    gc.collect()
    return_freed_memory()


def _masked_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    valid = mask.astype(bool)
    return float(np.abs(a[valid] - b[valid]).max()) if valid.any() else 0.0


def export_onnx(model: torch.nn.Module, directory: str | Path, example_batch: dict[str, Any], *, split: bool = False,
                opset: int | None = None, tolerance: float = 1e-4, threads: int | None = None,
                kv_cache: bool = True, release_model: bool = False) -> ExportReport:
    """Export ``model`` (a DeepSeek-VL or DeepSeek-VL-Hybrid ``...ForConditionalGeneration``) to ONNX.

    ``example_batch`` holds ``input_ids``, ``attention_mask``, ``pixel_values`` (and ``high_res_pixel_values`` for
    hybrid); other keys (``labels``) are ignored. The graphs are checked with ``onnx.checker`` and run in ONNX Runtime
    on the example batch (its first ``CHECK_ROWS`` rows) and on a batch of another size and length;
    ``max_abs_diff`` holds the largest logit
    difference to PyTorch over the attended positions, ``within_tolerance`` whether it stays under ``tolerance``
    (a warning is issued otherwise). ``opset=None`` takes the exporter's default; below 18 the TorchScript exporter
    is used. The model is exported in its own dtype (fp32 expected) on CPU and left unchanged.

    ``kv_cache`` (split only, dynamo exporter only): the LM graph takes past keys/values and returns the present ones
    (see the module docstring); ``max_abs_diff["kv_decode"]`` then holds the difference between decoding the
    example's last token against the cache of the others and PyTorch's logits for it.

    ``release_model``: PyTorch's outputs for the check are computed first, then the model's weights are released
    (moved to the ``meta`` device) before ONNX Runtime loads the graphs, so that the check never holds two copies of
    the weights (at the 1.3B dimensions the two side by side set the stage's peak memory). The caller must not use
    the model afterwards. ``report.process_peak_rss`` records the process's peak after the export and after the check.
    """
    import onnx
    import torch

    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    hybrid = getattr(config, "high_res_vision_config", None) is not None
    image_token_id = int(config.image_token_id)
    batch = _prepare_batch(example_batch, hybrid)
    exporter = "torchscript" if opset is not None and opset < MIN_DYNAMO_OPSET else "dynamo"
    # torch.export specialises axes of size 1: trace with at least two rows.
    trace = batch if batch["input_ids"].shape[0] > 1 else {k: torch.cat([v, v]) for k, v in batch.items()}
    pixel_names = ["pixel_values"] + (["high_res_pixel_values"] if hybrid else [])
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    FullGraph, VisionGraph, LMGraph, LMWithPastGraph = _wrappers()
    with_past = split and kv_cache and exporter == "dynamo"
    kv_info: KvCacheInfo | None = None

    was_training = model.training
    model.eval()
    try:
        graphs: dict[str, GraphInfo] = {}
        # patch convolutions go out as MatMul, which the weight-only quantizers cover (dsvl_adapt.models.patch_convs)
        with torch.no_grad(), patch_convs_as_linear(model) as patch_linears:
            image_embeds = None
            if not split:
                names = ["input_ids", "attention_mask", *pixel_names]
                dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                           **{n: {0: "batch"} for n in pixel_names}}
                _export_one(FullGraph(model, hybrid), tuple(trace[n] for n in names), directory / "model.onnx",
                            names, ["logits"], dynamic, opset, exporter, param_bytes)
                graphs["model"] = GraphInfo(file="model.onnx", inputs=names, outputs=["logits"], inventory="", bytes=0)
            else:
                _export_one(VisionGraph(model, hybrid), tuple(trace[n] for n in pixel_names),
                            directory / "vision.onnx", pixel_names, ["image_embeds"],
                            {n: {0: "images"} for n in pixel_names}, opset, exporter, param_bytes)
                graphs["vision"] = GraphInfo(file="vision.onnx", inputs=pixel_names, outputs=["image_embeds"],
                                             inventory="", bytes=0)
                embed = model.get_input_embeddings()
                feats = VisionGraph(model, hybrid)(*(trace[n] for n in pixel_names))
                embeds = embed(trace["input_ids"])
                mask = trace["input_ids"] == image_token_id
                embeds[mask] = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
                if with_past:
                    kv_info, args = _past_example(model, embeds, trace["attention_mask"])
                    names = ["inputs_embeds", "attention_mask", "position_ids", LOGITS_POSITIONS,
                             *kv_info.past_inputs]
                    outputs = ["logits", *kv_info.present_outputs]
                    past_axes = {n: {0: "batch", 2: "past_sequence"} for n in kv_info.past_inputs}
                    _export_one(LMWithPastGraph(model), args, directory / "lm.onnx", names, outputs,
                                {"inputs_embeds": {0: "batch", 1: "sequence"},
                                 "attention_mask": {0: "batch", 1: "total_sequence"},
                                 "position_ids": {0: "batch", 1: "sequence"}, LOGITS_POSITIONS: {0: "kept"},
                                 **past_axes},
                                opset, exporter, param_bytes)
                else:
                    names, outputs = ["inputs_embeds", "attention_mask"], ["logits"]
                    _export_one(LMGraph(model), (embeds, trace["attention_mask"]), directory / "lm.onnx", names,
                                outputs, {"inputs_embeds": {0: "batch", 1: "sequence"},
                                          "attention_mask": {0: "batch", 1: "sequence"}},
                                opset, exporter, param_bytes)
                graphs["lm"] = GraphInfo(file="lm.onnx", inputs=names, outputs=outputs, inventory="", bytes=0)
                np.save(directory / EMBED_FILE, embed.weight.detach().float().cpu().numpy())
                image_embeds = feats

        inventories: dict[str, str] = {}
        versions: set[int] = set()
        for name, info in graphs.items():
            path = directory / info.file
            onnx.checker.check_model(str(path), full_check=False)
            inv_path = write_inventory(path)
            inventory = json.loads(inv_path.read_text())
            versions.add(int(inventory["opset"]))
            graphs[name] = info.model_copy(update={"inventory": inv_path.name, "bytes": inventory["file_bytes"]})
            inventories[name] = str(inv_path)
        config.save_pretrained(directory)

        num_image_tokens = int((batch["input_ids"][0] == image_token_id).sum())
        report = ExportReport(
            directory=str(directory), mode="split" if split else "full", exporter=exporter, opset=max(versions),
            graphs=graphs, inventories=inventories, tolerance=tolerance, within_tolerance=True,
            model_class=type(model).__name__, hybrid=hybrid, image_token_id=image_token_id,
            num_image_tokens=num_image_tokens, embed_file=EMBED_FILE if split else None, kv_cache=kv_info,
            patch_convs_as_matmul=patch_linears)

        # ONNX Runtime vs PyTorch: the example batch, then another batch size and length. PyTorch's side first, so
        # that the model can be released before ONNX Runtime holds its own copy of the weights.
        peaks = {"after_export": process_peak_rss_bytes()}
        reference = FullGraph(model, hybrid)
        checks = {"example": check_rows(batch), "other_length": _other_length_batch(batch, image_token_id)}
        if kv_info is not None:
            checks["decode"] = _unpadded_row(batch)
        expected: dict[str, np.ndarray] = {}
        with torch.no_grad(), patch_convs_as_linear(model):  # the arithmetic the graphs were traced from
            for label, check in checks.items():
                expected[label] = reference(*(check[n] for n in ["input_ids", "attention_mask", *pixel_names])).numpy()
        del reference
        if release_model:
            _release(model)
        runtime = OnnxRuntimeModel(report, threads=threads)
        diffs: dict[str, float] = {}
        for label in ("example", "other_length"):
            got = runtime.forward(checks[label])
            diffs[label] = _masked_diff(got, expected[label], checks[label]["attention_mask"].numpy())
        if image_embeds is not None:
            got = runtime.image_embeddings({n: trace[n] for n in pixel_names})
            diffs["image_embeds"] = float(np.abs(got - image_embeds.numpy()).max())
        if kv_info is not None:
            diffs["kv_decode"] = _decode_diff(runtime, expected["decode"], checks["decode"], pixel_names)
        del runtime
        peaks["after_check"] = process_peak_rss_bytes()
    finally:
        if not release_model:
            model.train(was_training)

    worst = max(diffs.values())
    report = report.model_copy(update={"max_abs_diff": diffs, "within_tolerance": bool(worst <= tolerance),
                                       "process_peak_rss": peaks})
    if not report.within_tolerance:
        warnings.warn(f"ONNX Runtime differs from PyTorch by {worst:.3g} (> tolerance {tolerance:g}): {diffs}",
                      stacklevel=2)
    (directory / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
    return report
