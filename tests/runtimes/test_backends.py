"""The built-in runtime backends through the runtime contract: registered by the hook, prepare (export + quantize) a
checkpoint directory, own and inventory their artifacts, load them and run them (tiny preset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsvl_adapt.models.checkpoint import build_reference, save_checkpoint
from dsvl_adapt.models.presets import get_preset
from dsvl_adapt.models.tokenizer import train_tokenizer
from dsvl_adapt.plugins import PluginManager
from dsvl_adapt.quantization import SUPPORTED, QuantizeConfig
from dsvl_adapt.runtimes.contract import GenerativeModel, PrepareRequest, QuantizationPlan, RuntimeBackend

BUILT_IN = ("torch", "onnxruntime", "openvino")


@pytest.fixture(scope="module")
def registry():
    return PluginManager(load_entry_points=False).registry


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """A saved reference-tiny checkpoint (with its processor), the model in memory and two batches."""
    tokenizer = train_tokenizer(["What defect is visible? scratch dent stain crack none normal"] * 10,
                                vocab_size=300)
    model, processor = build_reference("reference-tiny", tokenizer, seed=1)
    directory = save_checkpoint(model, processor, tmp_path_factory.mktemp("ckpt") / "student")
    preset = get_preset("reference-tiny")
    image, n = int(model.config.image_token_id), preset.num_image_tokens
    batches = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, 200, (2, n + 6), generator=g)
        ids[:, 1: 1 + n] = image
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "pixel_values": torch.randn(2, 3, preset.image_size, preset.image_size, generator=g)})
    return directory, model.eval(), batches


def _usable(backend: RuntimeBackend) -> None:
    reason = backend.available()
    if reason is not None:  # an optional extra that is not installed: the reason names it
        assert "pip install" in reason
        pytest.skip(reason)


def test_the_built_in_backends_come_through_the_hook(registry):
    """dsvl_adapt_register_runtimes of dsvl_adapt.builtins registers the three, as a plugin would."""
    assert set(BUILT_IN) <= set(registry.runtimes.names())
    for name in BUILT_IN:
        backend = registry.runtimes.get(name)
        assert isinstance(backend, RuntimeBackend) and backend.name == name and backend.description
        assert registry.runtimes.owner(name) == "dsvl_adapt.builtins"
        capabilities = backend.capabilities()
        assert set(capabilities.quantization_modes) == set(SUPPORTED[name])
        assert "fp32" in capabilities.weight_formats and "int8" in capabilities.weight_formats


@pytest.mark.parametrize(("runtime", "mode", "quantized_op", "int8_dtype"), [
    ("torch", "dynamic", None, "int8"),
    ("onnxruntime", "dynamic", "MatMulInteger", "int8"),
    ("openvino", "weight_only", "MatMul", "u8"),
])
def test_prepare_owns_inventory_load_and_run(registry, checkpoint, tmp_path, runtime, mode, quantized_op,
                                             int8_dtype):
    backend = registry.runtimes.get(runtime)
    _usable(backend)
    directory, model, batches = checkpoint
    plan = QuantizeConfig(backend=runtime, mode=mode).to_plan()
    out = tmp_path / f"{runtime}-int8"
    artifact = backend.prepare(PrepareRequest(checkpoint_dir=directory, out_dir=out, plan=plan,
                                              calibration=batches, threads=1, scratch_dir=tmp_path))
    assert (artifact.directory, artifact.runtime, artifact.weights) == (out, runtime, "int8")
    assert registry.runtime_for(out) is backend  # its own artifact, claimed by no other backend
    assert not backend.owns(tmp_path / "nowhere")
    if runtime != "torch":
        assert not backend.owns(directory)  # a checkpoint is the torch backend's
        assert (Path(artifact.related["onnx"]) / "export.json").is_file()  # what the scorecard's op checks read

    inventory = backend.inventory(out)
    assert inventory.weights == "int8" and inventory.label.startswith(f"{runtime}-int8")
    assert 0 < inventory.model_bytes <= inventory.total_bytes
    assert {f.role for f in inventory.files} >= {"config", "processor"}
    assert inventory.dtypes.get(int8_dtype, 0) > 0, inventory.dtypes
    if quantized_op is not None:
        assert inventory.ops.get(quantized_op, 0) > 0, inventory.ops

    loaded = backend.load(out, threads=1)
    assert isinstance(loaded, GenerativeModel) or hasattr(loaded, "generate")
    batch = {k: v.numpy() for k, v in batches[1].items()}
    logits = loaded.forward(batch)
    with torch.no_grad():
        reference = model(**batches[1]).logits.numpy()
    assert logits.shape == reference.shape
    agreement = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    assert agreement >= 0.8, agreement  # int8 of a random tiny model: most positions keep their argmax
    tokens = loaded.generate(batch, 3, eos_token_id=None)
    assert tokens.shape == (2, 3) and tokens.dtype == np.int64


def test_an_fp32_plan_exports_the_same_model(registry, checkpoint, tmp_path):
    backend = registry.runtimes.get("onnxruntime")
    _usable(backend)
    directory, model, batches = checkpoint
    artifact = backend.prepare(PrepareRequest(checkpoint_dir=directory, out_dir=tmp_path / "ort", plan=QuantizationPlan(),
                                              calibration=batches[:1], threads=1))
    assert artifact.weights == "fp32" and artifact.report["within_tolerance"] is True
    batch = {k: v.numpy() for k, v in batches[1].items()}
    with torch.no_grad():
        reference = model(**batches[1]).logits.numpy()
    assert np.abs(backend.load(artifact.directory, threads=1).forward(batch) - reference).max() < 1e-3
    assert backend.inventory(artifact.directory).label == "onnxruntime-fp32"


@pytest.mark.parametrize(("runtime", "plan", "words"), [
    ("torch", QuantizationPlan(weights="int4", mode="dynamic"), ["bits=4", "'torch'"]),
    ("onnxruntime", QuantizationPlan(weights="int2"), ["'onnxruntime'", "int8 or int4"]),
    ("onnxruntime", QuantizationPlan(weights="int8", mode="dynamic", per_layer={"lm_head": "int4"}),
     ["lm_head", "int8 config"]),  # a per-layer int4 needs precision=int4 or mixed
])
def test_a_plan_the_backend_cannot_run_is_refused_before_any_work(registry, checkpoint, tmp_path, runtime, plan,
                                                                   words):
    directory, _model, batches = checkpoint
    with pytest.raises(ValueError) as excinfo:
        registry.runtimes.get(runtime).prepare(PrepareRequest(checkpoint_dir=directory, out_dir=tmp_path / "x",
                                                              plan=plan, calibration=batches))
    for word in words:
        assert word in str(excinfo.value)
    assert not (tmp_path / "x").exists()


def test_prepare_without_a_batch_says_what_it_needs(registry, checkpoint, tmp_path):
    directory, _model, _batches = checkpoint
    with pytest.raises(ValueError, match="at least one batch"):
        registry.runtimes.get("onnxruntime").prepare(PrepareRequest(checkpoint_dir=directory, out_dir=tmp_path / "x"))
