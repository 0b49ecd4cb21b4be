"""The ExecuTorch backend through the runtime contract: prepare (export, int8) -> load -> forward / prefill / decode /
generate / stream (the core's loop, dsvl_adapt.runtimes.generation), equal to PyTorch's greedy tokens for fp32 on the
tiny preset; inventory; plan checks. Exports take minutes on 2 loaded cores, so the tests that export are ``slow``.

Run: ``python -m pytest -q plugins/executorch/tests`` (add ``-m slow`` for the export tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsvl_adapt.errors import ConfigError
from dsvl_adapt.runtimes.contract import (
    GenerationSettings,
    GenerativeModel,
    PrepareRequest,
    QuantizationPlan,
    RuntimeBackend,
)
from dsvl_adapt_executorch import ExecuTorchBackend
from dsvl_adapt_executorch.export import masked_bias

MAX_NEW = 8


def _checkpoint(directory: Path) -> tuple[torch.nn.Module, object]:
    """A tiny reference model with sharpened LM weights (greedy tokens vary) saved as a checkpoint directory."""
    from dsvl_adapt.models.checkpoint import build_reference, save_checkpoint
    from dsvl_adapt.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["Inspect the part. What defect is visible? scratch dent stain crack none"] * 20,
                                vocab_size=300)
    model, processor = build_reference("reference-tiny", tokenizer, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and p.dim() == 2:
                p.normal_(0.0, 0.3)
    save_checkpoint(model, processor, directory)
    return model.eval(), processor


def _batch(model: torch.nn.Module, rows: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded rows of different lengths, one image each (the image tokens after BOS)."""
    from dsvl_adapt.models.presets import get_preset

    preset = get_preset("reference-tiny")
    config = model.config
    g = torch.Generator().manual_seed(seed)
    n = preset.num_image_tokens
    length = n + 8
    vocab = config.text_config.vocab_size
    ids = torch.randint(10, vocab - 10, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(rows):
        pad = 2 * r
        ids[r, :pad] = config.text_config.pad_token_id or 0
        mask[r, :pad] = 0
        ids[r, pad + 1: pad + 1 + n] = config.image_token_id
    ids[ids == config.text_config.eos_token_id] = 11
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(rows, 3, preset.image_size, preset.image_size, generator=g)}


# ---------------------------------------------------------------------------------------------------- fast checks
def test_backend_satisfies_the_contract_and_declares_a_kv_cache():
    backend = ExecuTorchBackend()
    assert isinstance(backend, RuntimeBackend)
    assert backend.name == "executorch"
    caps = backend.capabilities()
    assert caps.kv_cache and caps.streaming and set(caps.weight_formats) == {"fp32", "int8"}
    assert caps.quantization_modes == ("dynamic",)


@pytest.mark.parametrize("plan, needle", [
    (QuantizationPlan(weights="int4"), "quantize.weights"),
    (QuantizationPlan(weights="int8", mode="static"), "'dynamic'"),
    (QuantizationPlan(weights="int8", per_layer={"lm_head": "fp32"}), "per_layer"),
])
def test_plans_it_cannot_make_are_refused_before_any_export(tmp_path, plan, needle):
    pytest.importorskip("executorch")
    with pytest.raises(ConfigError, match=needle):
        ExecuTorchBackend().prepare(PrepareRequest(checkpoint_dir=tmp_path / "none", out_dir=tmp_path / "out",
                                                   plan=plan))
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_empty_is_not_written_into(tmp_path):
    pytest.importorskip("executorch")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    with pytest.raises(ConfigError, match="not empty"):
        ExecuTorchBackend().prepare(PrepareRequest(checkpoint_dir=tmp_path / "none", out_dir=out))
    assert (out / "keep.txt").read_text() == "earlier work" and len(list(out.iterdir())) == 1


def test_attention_bias_hides_padding_and_the_future_but_never_a_whole_row():
    valid = np.zeros((2, 6), dtype=np.int64)
    valid[0, :4] = 1
    valid[1, 2:4] = 1  # row 1: two padding slots first
    bias = masked_bias(valid, 0, 4, 6)
    seen = bias == 0
    assert seen.shape == (2, 4, 6)
    assert seen[0, 3, :4].all() and not seen[0, 3, 4:].any()  # causal, no slot beyond the query
    assert not seen[0, 1, 2:].any()
    assert seen[1, 3, 2:4].all() and not seen[1, 3, :2].any()  # real queries never see padding
    assert seen[1, 0, 0] and seen.any(-1).all()  # a padding query sees itself: no row without a key


# ---------------------------------------------------------------------------------------------------- exports
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("executorch")
    directory = tmp_path_factory.mktemp("executorch") / "checkpoint"
    model, _ = _checkpoint(directory)
    return directory, model


@pytest.fixture(scope="module")
def fp32_artifact(tiny, tmp_path_factory):
    checkpoint, _model = tiny
    out = tmp_path_factory.mktemp("executorch") / "fp32"
    return ExecuTorchBackend().prepare(PrepareRequest(checkpoint_dir=checkpoint, out_dir=out, threads=2,
                                                      options={"batch_size": 2, "max_len": 64}))


@pytest.mark.slow
def test_fp32_greedy_tokens_equal_pytorch_through_prefill_and_cached_decode(tiny, fp32_artifact):
    from dsvl_adapt.runtimes import TorchRuntimeModel

    checkpoint, model = tiny
    backend = ExecuTorchBackend()
    assert backend.owns(fp32_artifact.directory) and not backend.owns(checkpoint)
    loaded = backend.load(fp32_artifact.directory, threads=2)
    assert isinstance(loaded, GenerativeModel) and loaded.runtime == "executorch"
    batch = _batch(model, rows=3)  # 3 rows, exported for 2: a full chunk, then a padded one
    eos = int(model.config.text_config.eos_token_id)
    settings = GenerationSettings(max_new_tokens=MAX_NEW, eos_token_id=eos)

    reference = TorchRuntimeModel(model)
    expected = reference.generate(batch, MAX_NEW, eos_token_id=eos)
    got = loaded.generate(batch, settings)
    assert got.shape == expected.shape and got.dtype == np.int64
    assert got.tolist() == expected.tolist()
    assert len(set(expected.ravel().tolist())) > 2  # the tokens vary: a real comparison

    mask = batch["attention_mask"].numpy().astype(bool)
    logits, want = loaded.forward(batch)[mask], reference.forward(batch)[mask]
    # XNNPACK's fp32 kernels differ from PyTorch's by about 1.5e-3 of the logits' scale on these sharpened weights
    # (2e-7 with the preset's own 0.02-std weights); the greedy tokens above are equal
    assert np.abs(logits - want).max() < 5e-3 * np.abs(want).max()

    two = {k: v[:2] for k, v in batch.items()}
    streamed = np.stack(list(loaded.stream(two, settings)), axis=1)
    assert streamed.tolist() == expected[:2, : streamed.shape[1]].tolist()

    _, state = loaded.prefill(two)
    assert state.length == two["input_ids"].shape[1] and state.batch_size == 2
    with pytest.raises(ValueError, match="one token per row"):
        loaded.decode(state, np.array([1, 2, 3]))
    loaded.prefill(two)  # a new generation: the old state's cache is gone
    with pytest.raises(RuntimeError, match="superseded"):
        loaded.decode(state, np.array([1, 2]))


@pytest.mark.slow
def test_inventory_lists_programs_table_and_xnnpack_delegate_calls(fp32_artifact):
    inventory = ExecuTorchBackend().inventory(fp32_artifact.directory)
    roles = {f.path: f.role for f in inventory.files}
    assert roles["vision.pte"] == "graph" and roles["lm.pte"] == "graph"
    assert roles["embed_tokens.npy"] == "embedding" and roles["executorch.json"] == "report"
    assert "tokenizer.json" in roles and not any(p.endswith(".safetensors") for p in roles)
    assert inventory.total_bytes == sum(p.stat().st_size for p in fp32_artifact.directory.iterdir())
    assert inventory.ops.get("delegate:XnnpackBackend", 0) >= 2  # both programs run on XNNPACK
    assert inventory.dtypes == {"float32": (fp32_artifact.directory / "embed_tokens.npy").stat().st_size}


@pytest.mark.slow
def test_int8_artifact_is_smaller_and_agrees_with_pytorch_fp32(tiny, fp32_artifact, tmp_path):
    from dsvl_adapt.runtimes import TorchRuntimeModel

    checkpoint, model = tiny
    backend = ExecuTorchBackend()
    artifact = backend.prepare(PrepareRequest(checkpoint_dir=checkpoint, out_dir=tmp_path / "int8",
                                              plan=QuantizationPlan(weights="int8", mode="dynamic"),
                                              options={"batch_size": 2, "max_len": 64}))
    assert artifact.weights == "int8" and artifact.report["quantization"]["mode"] == "dynamic"
    inventory = backend.inventory(artifact.directory)
    assert "int8" in inventory.dtypes
    lm_int8 = (artifact.directory / "lm.pte").stat().st_size
    assert lm_int8 < (fp32_artifact.directory / "lm.pte").stat().st_size
    batch = _batch(model, rows=2, seed=1)
    mask = batch["attention_mask"].numpy().astype(bool)
    loaded = backend.load(artifact.directory)
    got = loaded.forward(batch).argmax(-1)[mask]
    want = TorchRuntimeModel(model).forward(batch).argmax(-1)[mask]
    assert (got == want).mean() >= 0.8  # top-1 agreement over every real position (measured 0.89; int8 tolerance)
    tokens = loaded.generate(batch, GenerationSettings(max_new_tokens=MAX_NEW))
    assert tokens.shape == (2, MAX_NEW) and tokens.dtype == np.int64
    assert ((tokens >= 0) & (tokens < model.config.text_config.vocab_size)).all()
