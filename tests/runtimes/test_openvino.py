"""OpenVINO: IR conversion (full and split), NNCF compression (int8/int4 weights, int8 PTQ), pinned precision,
reload in a new process, greedy generation, the pipeline with an OpenVINO target, and the missing-extra error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

pytest.importorskip("openvino", reason='OpenVINO is not installed: pip install "dsvl-adapt[openvino]"')
pytest.importorskip("nncf", reason='NNCF is not installed: pip install "dsvl-adapt[openvino]"')
pytest.importorskip("onnxruntime", reason="export_onnx checks its graphs in ONNX Runtime")

from dsvl_adapt.errors import ConfigError
from dsvl_adapt.export.onnx import export_onnx
from dsvl_adapt.models.presets import build_config, get_preset
from dsvl_adapt.quantization import SUPPORTED, QuantizeConfig
from dsvl_adapt.runtimes import TorchRuntimeModel
from dsvl_adapt.runtimes.openvino import (
    INSTALL_HINT,
    OpenVinoModel,
    convert_export,
    convert_torch,
    quantize_openvino,
    read_openvino_report,
    require_openvino,
)

torch.set_num_threads(1)
VOCAB, IMAGE, PAD, BOS, EOS = 100, 99, 0, 1, 2
ATOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


def make_model(preset: str = "reference-tiny", seed: int = 0):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = build_config(preset, vocab_size=VOCAB, image_token_id=IMAGE, pad_token_id=PAD, bos_token_id=BOS,
                          eos_token_id=EOS)
    model = AutoModelForImageTextToText.from_config(config).eval()
    with torch.no_grad():  # sharper LM weights: greedy decoding varies its tokens instead of repeating one
        for name, p in model.named_parameters():
            if "language_model" in name and p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


def make_batch(preset: str = "reference-tiny", rows: int = 2, text: int = 6, seed: int = 0):
    p = get_preset(preset)
    g = torch.Generator().manual_seed(seed)
    n = p.num_image_tokens
    ids = torch.randint(3, VOCAB - 1, (rows, text + n), generator=g)
    ids[:, 0] = BOS
    ids[:, 2: 2 + n] = IMAGE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(rows, 3, p.image_size, p.image_size, generator=g)}


def torch_logits(model, batch) -> np.ndarray:
    """PyTorch's logits in the arithmetic the export traces: patch convolutions as matmuls (equal to the
    convolution within float rounding, tests/test_patch_convs.py), so that 1e-4 measures the runtime, not the order
    of a 768-term sum."""
    from dsvl_adapt.models.patch_convs import patch_convs_as_linear

    with torch.no_grad(), patch_convs_as_linear(model):
        return model(**batch).logits.numpy()


@pytest.fixture(scope="module")
def tiny():
    return make_model(), [make_batch(seed=s, rows=2 + s % 2, text=6 + s) for s in range(3)]


@pytest.fixture(scope="module")
def onnx_dirs(tiny, tmp_path_factory) -> dict[str, Path]:
    model, batches = tiny
    out = {}
    for layout in ("full", "split"):
        directory = tmp_path_factory.mktemp(f"onnx-{layout}")
        export_onnx(model, directory, batches[0], split=layout == "split", threads=1)
        out[layout] = directory
    return out


@pytest.fixture(scope="module")
def fp32_ir(onnx_dirs, tiny, tmp_path_factory):
    _, batches = tiny
    return {layout: convert_export(src, tmp_path_factory.mktemp(f"ov-{layout}"), batches=batches[:1], threads=1)
            for layout, src in onnx_dirs.items()}


QUANT_CASES = {"int8-weights": ("weight_only", 8), "int8-dynamic": ("dynamic", 8), "int8-ptq": ("static", 8),
               "int4-weights": ("weight_only", 4)}


@pytest.fixture(scope="module")
def quantized(onnx_dirs, tiny, tmp_path_factory):
    _, batches = tiny
    out = {}
    for name, (mode, bits) in QUANT_CASES.items():
        config = QuantizeConfig(backend="openvino", mode=mode, bits=bits, calibration_batches=2)
        out[name] = quantize_openvino(onnx_dirs["full"], tmp_path_factory.mktemp(name), config, batches, threads=1)
    return out


# ---------------------------------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("layout", ["full", "split"])
def test_fp32_ir_matches_torch_and_records_its_precision(layout, fp32_ir, tiny):
    model, batches = tiny
    report = fp32_ir[layout]
    assert report.mode == layout and report.dtype == "fp32" and report.quantization is None
    assert report.precision == "f32" and report.label == "openvino-fp32-f32"
    assert report.runtime_properties["INFERENCE_PRECISION_HINT"] == "f32"
    assert report.reload_max_abs_diff == 0.0
    assert set(report.graphs) == ({"model"} if layout == "full" else {"vision", "lm"})
    directory = Path(report.directory)
    for graph in report.graphs.values():
        assert (directory / graph.file).is_file() and (directory / graph.weights_file).is_file()
        assert "f16" not in graph.weights  # weights saved as they are, not OpenVINO's default fp16
    saved = json.loads((directory / "openvino.json").read_text())
    assert saved["precision"] == "f32" and saved["format"] == "dsvl-adapt/openvino-ir"
    runtime = OpenVinoModel.load(directory, threads=1)
    assert runtime.properties["INFERENCE_PRECISION_HINT"] == "f32"
    for batch in batches:  # several batch sizes and lengths: dynamic axes
        assert np.abs(runtime.forward(batch) - torch_logits(model, batch)).max() <= ATOL


def test_convert_from_torch_goes_through_a_temporary_onnx_export(tiny, tmp_path):
    model, batches = tiny
    report = convert_torch(model, tmp_path / "ir", batches[0], split=True, batches=batches[:1], threads=1)
    assert report.mode == "split" and not Path(report.source).exists()
    runtime = OpenVinoModel.load(tmp_path / "ir", threads=1)
    assert np.abs(runtime.forward(batches[1]) - torch_logits(model, batches[1])).max() <= ATOL


def test_saved_ir_reloads_identically_in_a_new_process(fp32_ir, quantized, tiny, tmp_path):
    _, batches = tiny
    batch = {k: v.numpy() for k, v in batches[1].items()}
    np.savez(tmp_path / "batch.npz", **batch)
    cases = {"fp32-full": fp32_ir["full"].directory, "fp32-split": fp32_ir["split"].directory,
             "int8-ptq": quantized["int8-ptq"].directory, "int4-weights": quantized["int4-weights"].directory}
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from dsvl_adapt.runtimes.openvino import OpenVinoModel
        out, cases = sys.argv[1], json.loads(sys.argv[2])
        batch = dict(np.load(out + "/batch.npz"))
        np.savez(out + "/child.npz", **{k: OpenVinoModel.load(d, threads=1).forward(batch) for k, d in cases.items()})
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path), json.dumps(cases)], check=True, env=env, cwd=REPO,
                   timeout=300)
    child = np.load(tmp_path / "child.npz")
    for name, directory in cases.items():
        np.testing.assert_array_equal(child[name], OpenVinoModel.load(directory, threads=1).forward(batch), name)


# ---------------------------------------------------------------------------------------------------- compression


@pytest.mark.parametrize("case", list(QUANT_CASES))
def test_compression_gives_a_smaller_ir_that_runs(case, quantized, fp32_ir, tiny):
    _, batches = tiny
    report = quantized[case]
    mode, bits = QUANT_CASES[case]
    fp32 = fp32_ir["full"]
    assert report.bytes < fp32.bytes
    assert report.dtype == f"int{bits}" and report.label == f"openvino-int{bits}-f32"
    assert report.quantization["backend"] == "openvino" and report.quantization["mode"] == mode
    graph = report.graphs["model"]
    assert graph.quantized_ops >= 15  # every LM linear (2 layers x 7) and lm_head
    assert graph.skipped_ops >= 14  # the default policy keeps the vision tower and the aligner in full precision
    assert (graph.activation_quantizers > 0) == (mode == "static")
    expected_group = 32 if mode == "dynamic" else 0
    assert report.runtime_properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == expected_group
    assert report.reload_max_abs_diff == 0.0
    assert report.top1_agreement is not None and report.top1_agreement > (0.8 if bits == 8 else 0.2)
    runtime = OpenVinoModel.load(report.directory, threads=1)
    assert runtime.properties["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == expected_group
    logits = runtime.forward(batches[1])
    assert logits.shape == (*batches[1]["input_ids"].shape, VOCAB) and np.isfinite(logits).all()


def test_split_graphs_compress_the_lm_and_keep_vision(onnx_dirs, tiny, tmp_path):
    _, batches = tiny
    config = QuantizeConfig(backend="openvino", mode="static", calibration_batches=2)
    report = quantize_openvino(onnx_dirs["split"], tmp_path, config, batches, threads=1)
    assert report.graphs["vision"].quantized_ops == 0 and report.graphs["vision"].activation_quantizers == 0
    assert report.graphs["lm"].quantized_ops >= 15 and report.graphs["lm"].activation_quantizers > 0
    assert report.quantization["embedding_table"] == "int8" and report.embed_file == "embed_tokens.int8.npz"
    assert not (tmp_path / "embed_tokens.npy").exists() and report.top1_agreement >= 0.8
    assert OpenVinoModel.load(tmp_path, threads=1).generate(batches[0], 3, EOS).shape[0] == 2


def test_precision_is_pinned_recorded_and_overridable(onnx_dirs, fp32_ir, tiny, tmp_path):
    _, batches = tiny
    report = convert_export(onnx_dirs["full"], tmp_path, precision="bf16", batches=batches[:1], threads=1)
    assert report.precision == "bf16" and report.label == "openvino-fp32-bf16"
    assert read_openvino_report(tmp_path).runtime_properties["INFERENCE_PRECISION_HINT"] == "bf16"
    bf16 = OpenVinoModel.load(tmp_path, threads=1)
    assert bf16.precision == "bf16"
    # The same IR pinned to f32 at load gives exactly the f32 artifact's logits.
    f32 = OpenVinoModel.load(tmp_path, threads=1, precision="f32")
    assert f32.properties["INFERENCE_PRECISION_HINT"] == "f32"
    reference = OpenVinoModel.load(fp32_ir["full"].directory, threads=1).forward(batches[0])
    np.testing.assert_array_equal(f32.forward(batches[0]), reference)
    if bf16.properties["INFERENCE_PRECISION_HINT"] == "bf16":  # a CPU with bf16: the hint took effect
        assert np.abs(bf16.forward(batches[0]) - reference).max() > 0
    with pytest.raises(ValueError, match="precision"):
        OpenVinoModel.load(tmp_path, precision="fp16")


@pytest.mark.parametrize("layout", ["full", "split"])
def test_greedy_generate_through_openvino_equals_torch(layout, fp32_ir, tiny):
    model, batches = tiny
    batch = batches[0]
    got = OpenVinoModel.load(fp32_ir[layout].directory, threads=1).generate(batch, max_new_tokens=6,
                                                                           eos_token_id=EOS)
    expected = TorchRuntimeModel(model).generate(batch, max_new_tokens=6, eos_token_id=EOS)
    assert got.shape == (2, 6)
    np.testing.assert_array_equal(got, expected)
    assert len(set(got.ravel().tolist())) > 2  # a real sequence, not one repeated token


# ---------------------------------------------------------------------------------------------------- config


def test_quantize_config_accepts_openvino_modes_and_names_fields():
    assert SUPPORTED["openvino"] == {"dynamic": (8, 4), "static": (8,), "weight_only": (8, 4)}
    for mode, bits in (("weight_only", 8), ("weight_only", 4), ("dynamic", 8), ("dynamic", 4), ("static", 8)):
        assert QuantizeConfig(backend="openvino", mode=mode, bits=bits).bits == bits
    with pytest.raises(ValidationError) as info:
        QuantizeConfig(backend="openvino", mode="static", bits=4)
    errors = {tuple(e["loc"]): e["msg"] for e in info.value.errors()}
    assert ("bits",) in errors and "'openvino'" in errors[("bits",)]
    with pytest.raises(ValueError, match="backend='openvino'"):
        quantize_openvino("nowhere", "nowhere-else", QuantizeConfig(backend="onnxruntime"))


def test_precision_knob_validates_in_the_run_config():
    from dsvl_adapt.api import validate

    assert validate([]).quantize.inference_precision == "f32"
    assert validate(["quantize.inference_precision=bf16"]).quantize.inference_precision == "bf16"
    legacy = validate(["quantize.precision=bf16"]).quantize  # the knob's name before precision meant weights
    assert legacy.inference_precision == "bf16" and legacy.precision is None
    with pytest.raises(ConfigError) as info:
        validate(["quantize.inference_precision=fp16"])
    assert "quantize.inference_precision" in str(info.value)


# ---------------------------------------------------------------------------------------------------- missing extra


def test_without_the_extra_a_clear_error_gives_the_install_command(monkeypatch, fp32_ir, onnx_dirs, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    for call in (lambda: OpenVinoModel.load(fp32_ir["full"].directory),
                 lambda: convert_export(onnx_dirs["full"], tmp_path),
                 require_openvino):
        with pytest.raises(ConfigError, match="openvino") as info:
            call()
        assert INSTALL_HINT == 'pip install "dsvl-adapt[openvino]"' and INSTALL_HINT in str(info.value)


def test_without_nncf_compression_names_the_install_command(monkeypatch, onnx_dirs, tmp_path):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ConfigError, match=r"NNCF.*pip install \"dsvl-adapt\[openvino\]\""):
        convert_export(onnx_dirs["full"], tmp_path, quantize=QuantizeConfig(backend="openvino"))


# ---------------------------------------------------------------------------------------------------- pipeline


def test_pipeline_with_an_openvino_target_scores_through_the_ir(tiny_overrides, tmp_path):
    import dsvl_adapt
    from dsvl_adapt.score.runners import open_runner

    run_dir = tmp_path / "run"
    dsvl_adapt.run(tiny_overrides + ["vertical.target=cpu-box-openvino", "score.threads=1"], run_dir=run_dir)
    card = json.loads((run_dir / "scorecard.json").read_text())
    quantize = card["stages"]["quantize"]
    assert quantize["backend"] == "openvino" and quantize["precision"] == "f32"
    assert quantize["reload_max_abs_diff"] == 0.0
    runtimes = card["runtimes"]
    assert "openvino-int8-f32" in runtimes and "torch-fp32" in runtimes
    ov = runtimes["openvino-int8-f32"]
    assert ov["runtime"] == "openvino" and ov["dtype"] == "int8"
    assert set(ov["metrics"]) >= {"accuracy", "miss_rate"} and ov["latency"]["measured"]
    assert "precision f32" in ov["latency"]["runtime"]
    fit = next(t for t in card["targets"] if t["name"] == "cpu-box-openvino")
    latency = next(c for c in fit["checks"] if c["name"] == "latency_p90")
    assert latency["estimated"] is False and "(openvino)" in latency["note"]
    assert latency["value"] == pytest.approx(ov["latency"]["p90_ms"], abs=1e-3)
    deploy = Path(ov["path"])
    # split IR (vision + LM) so that the token table sits outside the graphs, per-row int8
    assert (deploy / "openvino.json").is_file() and (deploy / "lm.xml").is_file() and (deploy / "vision.xml").is_file()
    assert (deploy / "embed_tokens.int8.npz").is_file() and not (deploy / "embed_tokens.npy").exists()
    runner = open_runner(deploy, load_torch=None, threads=1)
    assert runner.runtime == "openvino" and runner.label == "openvino-int8-f32"
