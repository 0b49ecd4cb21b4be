"""The token-embedding table of split exports: per-row int8 quantization, files, and what quantizing writes."""

from __future__ import annotations

import numpy as np
import pytest

from dsvl_adapt.compress.quantize import QuantizeConfig, quantize_torch_dynamic
from dsvl_adapt.runtimes.embedding import (
    FP32_FILE,
    INT8_FILE,
    EmbeddingTable,
    copy_embedding_table,
    load_embedding_table,
    quantize_rows_int8,
)


def test_int8_rows_are_within_half_a_step_of_the_fp32_table():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 16)).astype(np.float32) * rng.uniform(0.01, 3, size=(50, 1)).astype(np.float32)
    table[7] = 0.0  # an all-zero row (padding) must not divide by zero
    weight, scale = quantize_rows_int8(table)
    assert weight.dtype == np.int8 and scale.shape == (50,)
    rebuilt = EmbeddingTable(weight, scale).dequantized()
    assert np.all(np.abs(rebuilt - table) <= scale[:, None] / 2 + 1e-7)
    assert np.all(rebuilt[7] == 0.0)
    # each row's largest magnitude maps to +-127 exactly
    assert np.all(np.abs(weight).max(axis=1)[np.arange(50) != 7] == 127)


def test_lookup_keeps_the_shape_of_the_ids_and_returns_float32():
    table = EmbeddingTable(np.arange(12, dtype=np.int8).reshape(4, 3), np.array([1, 2, 0.5, 1], np.float32))
    rows = table.lookup(np.array([[1, 2], [3, 0]]))
    assert rows.dtype == np.float32 and rows.shape == (2, 2, 3)
    assert rows[0, 0].tolist() == [6.0, 8.0, 10.0] and rows[0, 1].tolist() == [3.0, 3.5, 4.0]


def test_files_round_trip_and_fp32_can_be_kept(tmp_path):
    src, int8_dir, fp32_dir = tmp_path / "src", tmp_path / "int8", tmp_path / "fp32"
    for d in (src, int8_dir, fp32_dir):
        d.mkdir()
    table = np.random.default_rng(1).normal(size=(400, 64)).astype(np.float32)
    np.save(src / FP32_FILE, table)
    assert copy_embedding_table(src, FP32_FILE, int8_dir, "int8") == INT8_FILE
    assert copy_embedding_table(src, FP32_FILE, fp32_dir, "fp32") == FP32_FILE
    assert copy_embedding_table(src, None, fp32_dir, "int8") is None  # a full graph has no table
    loaded = load_embedding_table(int8_dir / INT8_FILE)
    assert loaded.dtype == "int8" and (int8_dir / INT8_FILE).stat().st_size < table.nbytes / 3
    assert np.abs(loaded.dequantized() - table).max() <= np.abs(table).max() / 254 + 1e-7
    assert np.array_equal(load_embedding_table(fp32_dir / FP32_FILE).dequantized(), table)


def test_missing_or_foreign_tables_fail_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="embed_tokens.npy"):
        load_embedding_table(tmp_path / FP32_FILE)
    np.savez(tmp_path / INT8_FILE, weight=np.zeros((2, 2), np.int8))
    with pytest.raises(ValueError, match=r"lacks \['scale'\]"):
        load_embedding_table(tmp_path / INT8_FILE)


def test_embedding_knob_resolves_per_backend_and_torch_refuses_int8():
    assert QuantizeConfig().embedding_dtype == "fp32"
    assert QuantizeConfig(backend="onnxruntime").embedding_dtype == "int8"
    assert QuantizeConfig(backend="openvino", mode="weight_only", embedding="fp32").embedding_dtype == "fp32"
    with pytest.raises(ValueError, match="embedding"):
        QuantizeConfig(embedding="int4")
    import torch

    with pytest.raises(ValueError, match="embedding='int8'"):
        quantize_torch_dynamic(torch.nn.Sequential(torch.nn.Linear(2, 2)), QuantizeConfig(embedding="int8"))


def test_a_graph_reference_that_does_not_match_fails_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "lm.onnx")
    with pytest.raises(ValueError, match=r"no initializer 'head_quantized'.*lm.onnx#head"):
        load_embedding_table(tmp_path / "lm.onnx#head")


def test_a_tied_table_is_found_only_when_every_element_matches(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dsvl_adapt.runtimes.embedding import find_tied_table

    rng = np.random.default_rng(2)
    table = rng.normal(size=(30, 8)).astype(np.float32)
    weight, scale = quantize_rows_int8(table)
    inits = [numpy_helper.from_array(weight.T.copy(), "head_quantized"),
             numpy_helper.from_array(scale, "head_scale"),
             numpy_helper.from_array(np.zeros(30, np.int8), "head_zero_point")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=inits)
    onnx.save(helper.make_model(graph), tmp_path / "lm.onnx")
    assert find_tied_table(tmp_path / "lm.onnx", table) == "lm.onnx#head"
    shared = load_embedding_table(tmp_path / "lm.onnx#head")
    assert shared.dtype == "int8" and np.array_equal(shared.dequantized(), EmbeddingTable(weight, scale).dequantized())
    other = table.copy()
    other[3, 5] += 10 * scale[3]  # one element off by more than half a step: an untied head, not the table
    assert find_tied_table(tmp_path / "lm.onnx", other) is None
