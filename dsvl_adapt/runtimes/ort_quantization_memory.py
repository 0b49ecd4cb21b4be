"""ONNX Runtime's quantization tools, run with one copy of the weights in memory.

At the 1.3B dimensions the language-model graph holds ~4 GB of fp32 weights, and two steps of
``onnxruntime.quantization`` (1.32) hold three copies of them at once:

* ``quant_pre_process`` loads the whole model in Python, runs symbolic shape inference on a copy, then builds an ONNX
  Runtime session (a third copy) to write the optimised graph: 10.5 GiB for a 3.3 GB graph (AMD EPYC, measured).
* ``quantize_dynamic``: ``ONNXQuantizer.__init__`` refreshes the graph's value infos in dynamic mode through
  ``save_and_reload_model_with_shape_infer``, which deep-copies the model, saves the copy and loads it back while
  the caller still holds the original: 10.4 GiB for the same graph.

:func:`optimize_for_quantization` is the optimisation half of ``quant_pre_process`` (the same ONNX Runtime session,
``ORT_ENABLE_BASIC``, writing ``optimized_model_filepath``) built from the file, so Python never holds the weights;
it skips symbolic shape inference, which the quantizers do not need (each runs ONNX shape inference itself, and
the tied ``lm_head`` the pre-processing exists for is folded by the optimiser). :func:`shape_inference_in_place`
replaces the reload inside ``ONNXQuantizer`` with ONNX shape inference on a weightless skeleton of the same model
whose value infos are copied back: the quantizer then sees the graph it would have seen, with one copy of the
weights. Both leave the quantization itself, and its output, to ONNX Runtime (a test compares the graphs with and
without them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["PRE_PROCESS_METADATA", "optimize_for_quantization", "shape_inference_in_place"]

# The metadata ``quant_pre_process`` writes; ``quantize_dynamic``/``quantize_static`` warn when a graph lacks it.
PRE_PROCESS_METADATA = ("onnx.quant.pre_process", "onnxruntime.quant")


def optimize_for_quantization(src: Path, dst: Path, external: bool) -> None:
    """ONNX Runtime's basic graph optimisation (constant folding, redundant nodes) of ``src`` into ``dst``, the
    step of ``quant_pre_process`` the quantizers depend on; weights go to ``<dst>.data`` when ``external``.
    Node names are kept, so a skip policy mapped to node names before this still applies."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    if external:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         f"{dst.name}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    session = ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    del session
    # Mark it pre-processed, as quant_pre_process does, without loading the weights: tensors stored externally
    # keep their references when the graph alone is saved again.
    model = onnx.load(str(dst), load_external_data=False)
    key, value = PRE_PROCESS_METADATA
    if not any(p.key == key for p in model.metadata_props):
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(dst))


_SMALL_TENSOR_BYTES = 1 << 16


def _infer_value_infos(model: Any) -> None:
    """ONNX shape inference for ``model`` run on a copy without the data of its large initializers (dims and
    types only; small ones, which may hold shapes, are copied whole); the inferred value infos replace
    ``model``'s, in place."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    graph = model.graph
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    skeleton.graph.name = graph.name
    skeleton.graph.input.extend(graph.input)
    skeleton.graph.output.extend(graph.output)
    skeleton.graph.node.extend(graph.node)
    skeleton.graph.value_info.extend(graph.value_info)
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.ByteSize() > _SMALL_TENSOR_BYTES:
            skeleton.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        else:  # shapes for Reshape/Expand/Slice come from these values: keep them
            skeleton.graph.initializer.append(tensor)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    del graph.value_info[:]
    graph.value_info.extend(inferred.graph.value_info)
    add_infer_metadata(model)


@contextlib.contextmanager
def shape_inference_in_place() -> Iterator[None]:
    """While active, ``ONNXQuantizer`` refreshes value infos in place (:func:`_infer_value_infos`) instead of
    saving and reloading a deep copy of the model. Restores ONNX Runtime's function on exit; outside the
    quantizer it changes nothing."""
    from onnxruntime.quantization import onnx_quantizer

    original = getattr(onnx_quantizer, "save_and_reload_model_with_shape_infer", None)
    if original is None:  # a later ONNX Runtime without the reload: nothing to replace
        yield
        return

    def refresh(model):
        _infer_value_infos(model)
        return model

    onnx_quantizer.save_and_reload_model_with_shape_infer = refresh
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = original
