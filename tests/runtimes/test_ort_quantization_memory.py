"""ONNX Runtime quantization with one copy of the weights: the optimisation step run from the file, and the
quantizer's value-info refresh done in place, give the graph ONNX Runtime's own path gives."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper

from dsvl_adapt.models.presets import build_config, get_preset
from dsvl_adapt.runtimes.ort_quantization_memory import (
    PRE_PROCESS_METADATA,
    optimize_for_quantization,
    shape_inference_in_place,
)

pytest.importorskip("onnxruntime")
torch.set_num_threads(1)
VOCAB, IMAGE, PAD, BOS, EOS = 100, 99, 0, 1, 2


@pytest.fixture(scope="module")
def lm_graph(tmp_path_factory):
    """The language-model graph of a tiny split export (tied lm_head, KV cache inputs)."""
    from transformers import AutoModelForImageTextToText

    from dsvl_adapt.export.onnx import export_onnx

    torch.manual_seed(0)
    config = build_config(get_preset("reference-tiny"), vocab_size=VOCAB, image_token_id=IMAGE,
                          pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    model = AutoModelForImageTextToText.from_config(config).eval()
    n = config.vision_config.image_size // config.vision_config.patch_size
    ids = torch.tensor([[BOS] + [IMAGE] * n * n + [5, 6, 7]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "pixel_values": torch.randn(1, 3, config.vision_config.image_size, config.vision_config.image_size)}
    report = export_onnx(model, tmp_path_factory.mktemp("fp32"), batch, split=True, threads=1)
    return report.graph_path("lm")


def _constant_weight_matmuls(path) -> int:
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return sum(n.input[1] in initializers for n in graph.node if n.op_type in ("MatMul", "Gemm"))


def _graph_signature(path) -> tuple[list[tuple[str, str]], dict[str, bytes]]:
    model = onnx.load(str(path))
    nodes = [(n.op_type, n.name) for n in model.graph.node]
    weights = {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}
    return nodes, weights


@pytest.mark.parametrize("external", [False, True])
def test_optimised_graph_computes_the_same_and_is_marked_pre_processed(lm_graph, tmp_path, external):
    import numpy as np
    import onnxruntime as ort

    dst = tmp_path / "lm.pre.onnx"
    optimize_for_quantization(lm_graph, dst, external)
    assert (tmp_path / "lm.pre.onnx.data").is_file() is external
    model = onnx.load(str(dst))
    assert PRE_PROCESS_METADATA in {(p.key, p.value) for p in model.metadata_props}
    # every linear layer still reads a constant weight (the quantizers only take those)
    assert _constant_weight_matmuls(dst) == _constant_weight_matmuls(lm_graph) > 0
    before = ort.InferenceSession(str(lm_graph), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in before.get_inputs():
        shape = [{"batch": 1, "sequence": 3, "total_sequence": 5, "past_sequence": 2, "kept": 1}.get(d, d)
                 for d in i.shape]
        feeds[i.name] = (np.ones(shape, np.int64) if i.type == "tensor(int64)"
                         else rng.standard_normal(shape).astype(np.float32))
    feeds["position_ids"] = np.array([[2, 3, 4]])
    for a, b in zip(before.run(None, feeds), after.run(None, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dynamic_quantization_in_place_equals_onnx_runtimes_reload(lm_graph, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization import onnx_quantizer

    pre = tmp_path / "lm.pre.onnx"
    optimize_for_quantization(lm_graph, pre, external=False)
    options = dict(op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, weight_type=QuantType.QInt8,
                   extra_options={"MatMulConstBOnly": True})
    quantize_dynamic(str(pre), str(tmp_path / "library.onnx"), **options)
    original = onnx_quantizer.save_and_reload_model_with_shape_infer
    with shape_inference_in_place():
        assert onnx_quantizer.save_and_reload_model_with_shape_infer is not original
        quantize_dynamic(str(pre), str(tmp_path / "in_place.onnx"), **options)
    assert onnx_quantizer.save_and_reload_model_with_shape_infer is original  # restored on exit
    library, in_place = _graph_signature(tmp_path / "library.onnx"), _graph_signature(tmp_path / "in_place.onnx")
    assert sum(op == "MatMulInteger" for op, _ in library[0]) > 0
    assert in_place[0] == library[0]
    assert in_place[1].keys() == library[1].keys()
    assert all(in_place[1][k] == library[1][k] for k in library[1])
