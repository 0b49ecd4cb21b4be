"""ONNX export (full and split graphs), the op/dtype inventory, and the ONNX Runtime wrapper with greedy decoding."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from dsvl_adapt.export.onnx import ExportReport, export_onnx, read_report
from dsvl_adapt.models.presets import build_config, get_preset
from dsvl_adapt.runtimes import TorchRuntimeModel
from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

torch.set_num_threads(1)
VOCAB, IMAGE, PAD, BOS, EOS = 100, 99, 0, 1, 2
ATOL = 1e-4


def make_model(preset: str, seed: int = 0, sharpen: bool = True):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = build_config(preset, vocab_size=VOCAB, image_token_id=IMAGE, pad_token_id=PAD, bos_token_id=BOS,
                          eos_token_id=EOS)
    model = AutoModelForImageTextToText.from_config(config).eval()
    with torch.no_grad():  # sharper LM weights: greedy decoding then varies its tokens instead of repeating one
        for name, p in model.named_parameters() if sharpen else ():
            if "language_model" in name and p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


def make_batch(preset: str, rows: int = 2, text: int = 6, seed: int = 0, left_pad: int = 0):
    p = get_preset(preset)
    g = torch.Generator().manual_seed(seed)
    n = p.num_image_tokens
    ids = torch.randint(3, VOCAB - 1, (rows, text + n + left_pad), generator=g)
    ids[:, left_pad] = BOS
    ids[:, left_pad + 2: left_pad + 2 + n] = IMAGE
    mask = torch.ones_like(ids)
    if left_pad:
        ids[0, :left_pad] = PAD
        mask[0, :left_pad] = 0
    batch = {"input_ids": ids, "attention_mask": mask,
             "pixel_values": torch.randn(rows, 3, p.image_size, p.image_size, generator=g)}
    if p.hybrid:
        batch["high_res_pixel_values"] = torch.randn(rows, 3, p.high_res_image_size, p.high_res_image_size,
                                                     generator=g)
    return batch


def torch_logits(model, batch) -> np.ndarray:
    with torch.no_grad():
        return model(**batch).logits.numpy()


@pytest.fixture(scope="module")
def tiny():
    return make_model("reference-tiny"), make_batch("reference-tiny")


@pytest.fixture(scope="module")
def full(tiny, tmp_path_factory) -> ExportReport:
    model, batch = tiny
    return export_onnx(model, tmp_path_factory.mktemp("full"), batch, threads=1)


@pytest.fixture(scope="module")
def split(tiny, tmp_path_factory) -> ExportReport:
    model, batch = tiny
    return export_onnx(model, tmp_path_factory.mktemp("split"), batch, split=True, threads=1)


def test_full_export_passes_checker_and_matches_torch(full, tiny):
    model, batch = tiny
    path = full.graph_path("model")
    onnx.checker.check_model(str(path))
    assert full.mode == "full" and full.exporter == "dynamo" and full.opset >= 18
    assert full.within_tolerance
    assert set(full.max_abs_diff) == {"example", "other_length"}
    assert max(full.max_abs_diff.values()) <= ATOL
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "pixel_values"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    runtime = OnnxRuntimeModel.load(full.directory, threads=1)
    assert np.abs(runtime.forward(batch) - torch_logits(model, batch)).max() <= ATOL


def test_full_graph_has_dynamic_batch_and_sequence(full, tiny):
    model, _ = tiny
    runtime = OnnxRuntimeModel.load(full.directory, threads=1)
    for rows, text in ((1, 3), (3, 11)):
        batch = make_batch("reference-tiny", rows=rows, text=text, seed=5)
        assert np.abs(runtime.forward(batch) - torch_logits(model, batch)).max() <= ATOL


def test_inventory_lists_ops_opset_and_dtypes(full):
    inv_path = full.graph_path("model").with_name("model.inventory.json")
    assert full.inventories["model"] == str(inv_path)
    inv = json.loads(inv_path.read_text())
    graph = onnx.load(str(full.graph_path("model")))
    assert inv["opset"] == full.opset
    assert sum(inv["op_types"].values()) == len(graph.graph.node) == inv["node_count"]
    assert inv["op_types"]["MatMul"] >= 29  # 14 vision + 14 LM linears + lm_head (+ attention)
    assert inv["op_types"]["NonZero"] == 1 and inv["op_types"]["ScatterND"] == 1  # the image-feature insertion
    dtypes = {v["name"]: v["dtype"] for v in inv["inputs"]}
    assert dtypes == {"input_ids": "int64", "attention_mask": "int64", "pixel_values": "float"}
    shapes = {v["name"]: v["shape"] for v in inv["inputs"]}
    assert all(isinstance(d, str) for d in shapes["input_ids"])  # symbolic batch and sequence
    assert inv["outputs"][0]["dtype"] == "float"
    assert set(inv["initializers"]["dtypes"]) >= {"float"}
    assert inv["initializers"]["bytes"] <= inv["file_bytes"] == full.graphs["model"].bytes


def test_split_export_has_no_nonzero_or_scatter_and_matches(split, tiny):
    model, batch = tiny
    assert set(split.graphs) == {"vision", "lm"} and split.embed_file
    for name in ("vision", "lm"):
        inv = json.loads(Path(split.inventories[name]).read_text())
        assert "NonZero" not in inv["op_types"] and "ScatterND" not in inv["op_types"], name
        onnx.checker.check_model(str(split.graph_path(name)))
    vision_ops = json.loads(Path(split.inventories["vision"]).read_text())["op_types"]
    assert "Conv" not in vision_ops and split.patch_convs_as_matmul == ["model.vision_model.embeddings.patch_embedding"]
    lm_inputs = json.loads(Path(split.inventories["lm"]).read_text())["inputs"]
    past = [f"past_key_values.{i}.{kind}" for i in range(2) for kind in ("key", "value")]
    assert [v["name"] for v in lm_inputs] == ["inputs_embeds", "attention_mask", "position_ids", "logits_positions",
                                              *past]
    assert split.kv_cache.past_inputs == past and split.kv_cache.bytes_per_token == 2 * 2 * (2 * 16) * 4
    assert max(split.max_abs_diff.values()) <= ATOL and {"image_embeds", "kv_decode"} <= set(split.max_abs_diff)
    runtime = OnnxRuntimeModel.load(split.directory, threads=1)
    image = runtime.image_embeddings(batch)
    assert image.shape == (2, get_preset("reference-tiny").num_image_tokens, model.config.text_config.hidden_size)
    other = make_batch("reference-tiny", rows=1, text=9, seed=3)
    for b in (batch, other):
        assert np.abs(runtime.forward(b) - torch_logits(model, b)).max() <= ATOL


def test_split_lm_computes_logits_only_where_asked(split, tiny):
    """The head runs on the positions ``logits_positions`` names: generation's prefill gets the last row alone
    (B, 1, vocab), equal to that row of the every-position run that scoring and calibration make."""
    import onnxruntime as ort

    _, batch = tiny
    runtime = OnnxRuntimeModel.load(split.directory, threads=1)
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    embeds = runtime.inputs_embeds(ids, runtime.image_embeddings(batch))
    session = ort.InferenceSession(str(split.graph_path("lm")), providers=["CPUExecutionProvider"])
    every = split.kv_cache.prefill_feeds(embeds, mask)
    all_logits = session.run(["logits"], every)[0]
    last = session.run(["logits"], {**every, **split.kv_cache.logits_feed(ids.shape[1], last_only=True)})[0]
    assert all_logits.shape[:2] == ids.shape and last.shape == (ids.shape[0], 1, all_logits.shape[-1])
    np.testing.assert_allclose(last[:, 0], all_logits[:, -1], atol=1e-5)
    logits, _ = runtime.prefill(batch)
    np.testing.assert_allclose(logits, all_logits[:, -1], atol=1e-5)
    # an export made before the input existed is fed as it was (every position)
    assert split.kv_cache.model_copy(update={"logits_positions": None}).logits_feed(5, last_only=True) == {}


def test_report_is_saved_and_reloads(full):
    again = read_report(full.directory)
    assert again == full


@pytest.mark.parametrize("layout", ["full", "split"])
def test_greedy_generate_through_ort_equals_torch(layout, full, split, tiny):
    model, batch = tiny
    report = full if layout == "full" else split
    runtime = OnnxRuntimeModel.load(report.directory, threads=1)
    got = runtime.generate(batch, max_new_tokens=6, eos_token_id=EOS)
    expected = TorchRuntimeModel(model).generate(batch, max_new_tokens=6, eos_token_id=EOS)
    assert got.shape == (2, 6)
    np.testing.assert_array_equal(got, expected)
    assert len(set(got.ravel().tolist())) > 2  # a real sequence, not one repeated token
    # and the same as transformers' own greedy generate (with its KV cache)
    hf = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=EOS, pad_token_id=EOS)
    np.testing.assert_array_equal(got, hf[:, batch["input_ids"].shape[1]:].numpy())


def test_left_padded_generation_matches_unpadded(full, tiny):
    runtime = OnnxRuntimeModel.load(full.directory, threads=1)
    padded = make_batch("reference-tiny", rows=2, seed=7, left_pad=3)
    alone = {k: v[:1, 3:] if k in ("input_ids", "attention_mask") else v[:1] for k, v in padded.items()}
    np.testing.assert_array_equal(runtime.generate(padded, 4, EOS)[:1], runtime.generate(alone, 4, EOS))
    with pytest.raises(ValueError, match="left padding"):
        right = dict(padded, attention_mask=torch.flip(padded["attention_mask"], [1]))
        runtime.generate(right, 2, EOS)


def test_generate_stops_at_eos(full, tiny):
    runtime = OnnxRuntimeModel.load(full.directory, threads=1)
    _, batch = tiny
    first = runtime.generate(batch, 1)[:, 0]
    out = runtime.generate(batch, 5, eos_token_id=[int(first[0]), int(first[1])])
    assert out.shape == (2, 1)


def test_hybrid_full_export(tmp_path):
    model, batch = make_model("reference-tiny-hybrid", sharpen=False), make_batch("reference-tiny-hybrid", text=4)
    report = export_onnx(model, tmp_path, batch, threads=1)
    assert report.hybrid and report.num_image_tokens == 576
    # SigLIP's and SAM's patch embeddings (and SAM's 1x1 neck) went out as MatMul; the strided 3x3 convs stayed Conv
    patch = report.patch_convs_as_matmul
    assert any(p.endswith("vision_model.embeddings.patch_embedding") for p in patch), patch
    assert any("high_res_vision_model" in p and p.endswith("patch_embed.projection") for p in patch), patch
    assert all(isinstance(model.get_submodule(p), torch.nn.Conv2d) for p in patch)  # the model is given back as it was
    assert report.graphs["model"].inputs == ["input_ids", "attention_mask", "pixel_values", "high_res_pixel_values"]
    assert max(report.max_abs_diff.values()) <= ATOL
    runtime = OnnxRuntimeModel.load(tmp_path, threads=1)
    np.testing.assert_array_equal(runtime.generate(batch, 3, EOS), TorchRuntimeModel(model).generate(batch, 3, EOS))


def test_old_opset_uses_torchscript_exporter(tiny, tmp_path):
    model, batch = tiny
    report = export_onnx(model, tmp_path, batch, opset=17, threads=1)
    assert report.exporter == "torchscript" and report.opset == 17
    assert max(report.max_abs_diff.values()) <= ATOL
    assert json.loads((tmp_path / "model.inventory.json").read_text())["opset"] == 17


def test_missing_input_is_named(tiny, tmp_path):
    model, batch = tiny
    with pytest.raises(ValueError, match="pixel_values"):
        export_onnx(model, tmp_path, {k: v for k, v in batch.items() if k != "pixel_values"})


def test_release_model_checks_against_torch_then_frees_the_weights(tmp_path):
    """With ``release_model`` the check still compares ONNX Runtime with PyTorch (the references are computed
    first), and the caller's module holds no weights afterwards: the check never keeps two copies. The example batch
    is right-padded, as a calibration batch of rows of different lengths is: the KV-cache decode check must still
    decode a real token (it once decoded a pad token and reported a 0.3 logit difference for a correct graph)."""
    model = make_model("reference-tiny", seed=3)
    batch = make_batch("reference-tiny", seed=3)
    batch["input_ids"][1, -3:] = PAD
    batch["attention_mask"][1, -3:] = 0
    expected = torch_logits(model, batch)
    weight = weakref.ref(model.model.language_model.layers[0].mlp.up_proj.weight)
    report = export_onnx(model, tmp_path / "split", batch, split=True, release_model=True)
    gc.collect()
    assert weight() is None, "a parameter outlived the release: something from the export still holds it"
    assert report.within_tolerance, report.max_abs_diff
    assert set(report.max_abs_diff) >= {"example", "other_length", "image_embeds", "kv_decode"}
    assert all(p.device.type == "meta" for p in model.parameters())
    assert set(report.process_peak_rss) == {"after_export", "after_check"}
    assert 0 < report.process_peak_rss["after_export"] <= report.process_peak_rss["after_check"]
    got = OnnxRuntimeModel(read_report(tmp_path / "split")).forward(batch)
    valid = batch["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], atol=ATOL)
