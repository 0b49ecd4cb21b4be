"""Weight pruning (magnitude / Wanda / 2:4) and compressed sparse storage on reference-tiny."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from transformers import AutoModelForImageTextToText

from dsvl_adapt.compress import sparse_format
from dsvl_adapt.compress.sparse_format import load_sparse, save_sparse, sparsity_of
from dsvl_adapt.compress.weights import WeightPruneConfig, WeightReport, prune_weights, select_prunable
from dsvl_adapt.models.presets import build_config, get_preset

REPO = Path(sparse_format.__file__).resolve().parents[2]
VOCAB, IMAGE_TOKEN = 100, 99
PRESET = "reference-tiny"


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = build_config(PRESET, vocab_size=VOCAB, image_token_id=IMAGE_TOKEN, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)
    return AutoModelForImageTextToText.from_config(cfg).eval()


def make_batch(seed: int = 1, batch: int = 2, text: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    preset = get_preset(PRESET)
    ids = torch.cat([
        torch.ones(batch, 1, dtype=torch.long),
        torch.full((batch, preset.num_image_tokens), IMAGE_TOKEN),
        torch.randint(3, IMAGE_TOKEN, (batch, text), generator=g),
    ], dim=1)
    size = preset.image_size
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone(),
                pixel_values=torch.randn(batch, 3, size, size, generator=g))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> nn.Module:
    return make_model()


@pytest.fixture
def calib() -> list[dict[str, torch.Tensor]]:
    return [make_batch(seed) for seed in (1, 2)]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- selection and invariants

def test_default_selection_is_decoder_and_vision_encoder_linears(model):
    chosen, refused = select_prunable(model, WeightPruneConfig())
    assert len(chosen) == 2 * 7 + 2 * 6  # llama decoder layers: 7 Linear each; SigLIP layers: 6
    assert all(".layers." in n for n in chosen)
    assert not any("aligner" in n or "lm_head" in n or "embed" in n for n in chosen)
    assert refused == []


@pytest.mark.parametrize("cfg", [
    dict(method="magnitude", sparsity=0.5),
    dict(method="magnitude", scope="global", sparsity=0.6),
    dict(method="wanda", sparsity=0.3),
    dict(method="2:4"),
    dict(method="2:4", score="wanda"),
])
def test_only_selected_weights_change_and_masks_are_permanent(model, calib, cfg):
    before = _snapshot(model)
    hooks_before = {n: (len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()}
    report = prune_weights(model, WeightPruneConfig(**cfg), calibration=calib)
    assert isinstance(report, WeightReport)
    pruned = {f"{n}.weight" for n in report.per_layer}
    after = model.state_dict()
    assert set(after) == set(before), "pruning must not leave weight_orig / weight_mask behind"
    assert not any(k.endswith(("_orig", "_mask")) for k in after)
    for key, value in before.items():
        if key not in pruned:
            assert torch.equal(after[key], value), f"{key} was touched"
    # embeddings and the tied lm_head: untouched and still tied
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb, before["model.language_model.embed_tokens.weight"])
    assert model.lm_head.weight is emb
    # pruning hooks (forward pre hooks) and calibration hooks (forward hooks) are gone
    hooks_after = {n: (len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()}
    assert hooks_after == hooks_before
    for name in report.per_layer:
        module = model.get_submodule(name)
        assert isinstance(module.weight, nn.Parameter)
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
    # model still runs, and the report says pruned storage buys no speedup
    assert torch.isfinite(model(**calib[0]).logits).all()
    assert "CUDA-only" in report.runtime_note and "no speedup" in report.runtime_note


# ---------------------------------------------------------------- exact sparsity per method

@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_magnitude_layer_exact(model, sparsity):
    report = prune_weights(model, WeightPruneConfig(method="magnitude", sparsity=sparsity))
    assert report.pruned_layers == 26
    for name in report.per_layer:
        w = model.get_submodule(name).weight
        assert abs(int((w == 0).sum()) - sparsity * w.numel()) <= 1, name


def test_magnitude_global_exact_overall_but_uneven(model):
    report = prune_weights(model, WeightPruneConfig(method="magnitude", scope="global", sparsity=0.6))
    zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in report.per_layer)
    assert zeros == report.zero_params
    assert abs(zeros - 0.6 * report.total_params) <= 1
    assert report.overall_sparsity == pytest.approx(0.6, abs=1e-4)
    # one threshold over all layers: layers end at different sparsities
    assert max(report.per_layer.values()) - min(report.per_layer.values()) > 0.05


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_wanda_exact_per_layer_and_per_row(model, calib, sparsity):
    report = prune_weights(model, WeightPruneConfig(method="wanda", sparsity=sparsity), calibration=calib)
    assert report.calibration_batches_used == 2
    for name in report.per_layer:
        w = model.get_submodule(name).weight
        assert abs(int((w == 0).sum()) - sparsity * w.numel()) <= 1, name
        per_row = (w == 0).sum(dim=1)
        assert int(per_row.max() - per_row.min()) <= 1, f"{name}: Wanda compares within rows"


def test_calibration_batches_caps_batches_run(model, calib):
    cfg = WeightPruneConfig(method="wanda", calibration_batches=1)
    assert prune_weights(model, cfg, calibration=iter(calib)).calibration_batches_used == 1


@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_two_four_every_group_has_two_zeros(model, calib, score):
    report = prune_weights(model, WeightPruneConfig(method="2:4", score=score), calibration=calib)
    assert report.overall_sparsity == 0.5
    for name in report.per_layer:
        w = model.get_submodule(name).weight
        groups = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert bool((groups >= 2).all()), name


def test_two_four_keeps_the_two_largest():
    lin = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1., -4., 3., 2., 0.5, 0.1, -0.2, 9.],
                                       [-7., 6., 0.1, 0.2, 1., 2., 3., 4.]]))
    holder = nn.Module()
    holder.layers = nn.ModuleList([lin])
    prune_weights(holder, WeightPruneConfig(method="2:4", include=[r"layers\.0$"]))
    assert lin.weight.tolist() == [[0., -4., 3., 0., 0.5, 0., 0., 9.],
                                   [-7., 6., 0., 0., 0., 0., 3., 4.]]


# ---------------------------------------------------------------- Wanda vs magnitude

def test_wanda_uses_activations_where_magnitude_cannot(model, calib):
    """Boost 8 input channels of layer 0's MLP x10 in the RMSNorm and shrink the matching columns
    of gate_proj /10: same function, but magnitude now sees tiny weights and prunes those columns,
    while Wanda sees |W| * ||X|| unchanged and keeps them at the usual rate."""
    layer = "model.language_model.layers.0"
    channels = torch.arange(0, 64, 8)

    def skewed(m):
        with torch.no_grad():
            m.get_submodule(f"{layer}.post_attention_layernorm").weight[channels] *= 10
            m.get_submodule(f"{layer}.mlp.gate_proj").weight[:, channels] /= 10
        return m

    cfg = dict(sparsity=0.5, include=[rf"^{layer}\.mlp\.gate_proj$"])
    mag, wanda = skewed(make_model()), skewed(make_model())
    prune_weights(mag, WeightPruneConfig(method="magnitude", **cfg))
    prune_weights(wanda, WeightPruneConfig(method="wanda", **cfg), calibration=calib)
    w_mag = mag.get_submodule(f"{layer}.mlp.gate_proj").weight
    w_wanda = wanda.get_submodule(f"{layer}.mlp.gate_proj").weight
    assert not torch.equal(w_mag == 0, w_wanda == 0)
    assert float((w_mag[:, channels] == 0).float().mean()) > 0.95
    assert float((w_wanda[:, channels] == 0).float().mean()) < 0.75


def test_wanda_without_calibration_names_method(model):
    before = _snapshot(model)
    with pytest.raises(ValueError, match="method='wanda'.*calibration"):
        prune_weights(model, WeightPruneConfig(method="wanda"))
    with pytest.raises(ValueError, match="score='wanda'.*calibration"):
        prune_weights(model, WeightPruneConfig(method="2:4", score="wanda"))
    with pytest.raises(ValueError, match="calibration"):
        prune_weights(model, WeightPruneConfig(method="wanda"), calibration=[])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- config validation

@pytest.mark.parametrize("kwargs, field", [
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(method="2:4", sparsity=0.7), "sparsity"),
    (dict(method="wanda", scope="global"), "scope"),
    (dict(method="2:4", scope="global"), "scope"),
    (dict(method="l2"), "method"),
    (dict(include=["layers.(("]), "include"),
    (dict(exclude=["[unclosed"]), "exclude"),
    (dict(include=[]), "include"),
    (dict(calibration_batches=0), "calibration_batches"),
    (dict(method="magnitude", score="wanda"), "score"),
    (dict(ratio=0.5), "ratio"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        WeightPruneConfig(**kwargs)
    locs = [e["loc"] for e in info.value.errors()]
    assert (field,) in locs, locs
    assert field in str(info.value)


def test_config_lists_are_not_shared():
    a, b = WeightPruneConfig(), WeightPruneConfig()
    a.exclude.append("x")
    assert b.exclude == []
    assert a.include is not b.include


def test_include_cannot_reach_lm_head(model):
    before = model.lm_head.weight.detach().clone()
    report = prune_weights(model, WeightPruneConfig(include=[r"lm_head", r"layers\.0\.mlp\.up_proj"]))
    assert report.protected == ["lm_head"]
    assert "lm_head" not in report.per_layer
    assert torch.equal(model.lm_head.weight, before)
    with pytest.raises(ValueError, match="select no nn.Linear"):
        prune_weights(model, WeightPruneConfig(include=[r"^lm_head$"]))


# ---------------------------------------------------------------- sparse storage

def test_sparsity_of(model):
    pad_row = 1 / VOCAB  # the padding_idx row of the tied embedding is zero from init
    assert sparsity_of(model)["lm_head"] == pad_row
    prune_weights(model, WeightPruneConfig(sparsity=0.5))
    s = sparsity_of(model)
    assert s["lm_head"] == pad_row and s["model.aligner.linear1"] == 0.0
    assert s["model.language_model.layers.1.mlp.down_proj"] == 0.5
    assert set(sparsity_of(model, r"vision_model")) == {n for n in s if "vision_model" in n}


def test_save_sparse_roundtrip_in_new_process(model, calib, tmp_path):
    prune_weights(model, WeightPruneConfig(method="magnitude", sparsity=0.5))
    batch = {k: v for k, v in calib[0].items() if k != "labels"}
    with torch.no_grad():
        logits = model(**batch).logits
    sparse_dir, dense_dir = tmp_path / "sparse", tmp_path / "dense"
    manifest = save_sparse(model, sparse_dir)
    model.save_pretrained(dense_dir)  # standard dense safetensors, for size
    torch.save(batch, tmp_path / "batch.pt")

    sparse_size = (sparse_dir / sparse_format.WEIGHTS_NAME).stat().st_size
    dense_size = (dense_dir / "model.safetensors").stat().st_size
    assert sparse_size < dense_size, (sparse_size, dense_size)
    assert (sparse_dir / "config.json").is_file()
    assert manifest["tensors"]["lm_head.weight"]["storage"] == "alias"
    assert manifest["tensors"]["model.language_model.layers.0.mlp.up_proj.weight"]["storage"] == "bitmask"
    assert manifest["tensors"]["model.aligner.linear1.weight"]["storage"] == "dense"

    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from dsvl_adapt.compress.sparse_format import load_sparse, sparsity_of
        m = load_sparse({str(sparse_dir)!r})
        assert m.lm_head.weight is m.get_input_embeddings().weight
        assert sparsity_of(m)["model.language_model.layers.0.mlp.up_proj"] == 0.5
        batch = torch.load({str(tmp_path / "batch.pt")!r})
        with torch.no_grad():
            torch.save(m(**batch).logits, {str(tmp_path / "logits.pt")!r})
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), logits)

    # in-process too: every tensor identical
    reloaded = load_sparse(sparse_dir)
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in reloaded.state_dict().items())


def test_save_sparse_keeps_bf16_and_dense_model(tmp_path):
    model = make_model().to(torch.bfloat16)
    prune_weights(model, WeightPruneConfig(method="2:4"))
    save_sparse(model, tmp_path / "s")
    reloaded = load_sparse(tmp_path / "s")
    assert reloaded.dtype == torch.bfloat16
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in reloaded.state_dict().items())
    # an unpruned model stores everything dense and still round-trips
    dense = make_model(seed=3)
    manifest = save_sparse(dense, tmp_path / "d")
    assert {e["storage"] for e in manifest["tensors"].values()} == {"dense", "alias"}
    ref = dense.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in load_sparse(tmp_path / "d").state_dict().items())


def test_bit_packing_roundtrip():
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 1000):
        mask = torch.rand(n, generator=g) > 0.5
        packed = sparse_format._pack_bits(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
        assert torch.equal(sparse_format._unpack_bits(packed, n), mask)


def test_hybrid_wanda_covers_sam_encoder():
    torch.manual_seed(0)
    preset = get_preset("reference-tiny-hybrid")
    cfg = build_config(preset, vocab_size=VOCAB, image_token_id=IMAGE_TOKEN, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    ids = torch.cat([torch.ones(1, 1, dtype=torch.long), torch.full((1, preset.num_image_tokens), IMAGE_TOKEN),
                     torch.randint(3, IMAGE_TOKEN, (1, 4))], dim=1)
    hr = preset.high_res_image_size
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                 pixel_values=torch.randn(1, 3, preset.image_size, preset.image_size),
                 high_res_pixel_values=torch.randn(1, 3, hr, hr))
    report = prune_weights(model, WeightPruneConfig(method="wanda"), calibration=[batch])
    assert any("high_res_vision_model" in n for n in report.per_layer)
    assert not any("aligner" in n for n in report.per_layer)
    assert report.overall_sparsity == 0.5
