"""Structural pruning with torch-pruning on the tiny reference presets (random weights, fixed seed).

Every pruning mode is saved and reloaded in a fresh Python process (plain ``from_pretrained``,
or ``load_exact`` where the config cannot describe the pruned shapes) and its logits are compared
with the in-memory pruned model. One subprocess serves all modes to keep the file fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForImageTextToText

from dsvl_adapt.compress.structural import StructuralPruneConfig, StructuralReport, prune_structural
from dsvl_adapt.models.exact_load import STRUCTURE_FILE, load_exact, needs_exact_load, save_pruned
from dsvl_adapt.models.presets import build_config, get_preset

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
VOCAB, IMAGE_TOKEN = 100, 99
TOL = 1e-5


def make_model(preset: str, seed: int = 0, **vision_overrides):
    cfg = build_config(preset, vocab_size=VOCAB, image_token_id=IMAGE_TOKEN)
    for k, v in vision_overrides.items():
        setattr(cfg.vision_config, k, v)
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(cfg).eval()


def make_batch(preset: str, batch: int = 2, text: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    p = get_preset(preset)
    g = torch.Generator().manual_seed(seed)
    n = p.num_image_tokens
    ids = torch.randint(0, IMAGE_TOKEN - 1, (batch, n + text), generator=g)
    ids[:, 1:1 + n] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, :1 + n] = -100
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, p.image_size, p.image_size, generator=g),
        "labels": labels,
    }
    if p.hybrid:
        hr = p.high_res_image_size
        out["high_res_pixel_values"] = torch.randn(batch, 3, hr, hr, generator=g)
    return out


def forward_kwargs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def logits_of(model, batch):
    with torch.no_grad():
        return model(**forward_kwargs(batch), use_cache=False).logits


ALL = dict(lm_mlp_ratio=0.5, lm_head_ratio=0.5, vision_mlp_ratio=0.5, vision_head_ratio=0.5)

# name -> (preset, config, expected dims after, exact load needed)
MODES = {
    "lm_mlp": ("reference-tiny", dict(lm_mlp_ratio=0.5), {"lm.intermediate_size": 64}, False),
    "lm_heads_gqa": ("reference-tiny", dict(lm_head_ratio=0.5),
                     {"lm.num_attention_heads": 2, "lm.num_key_value_heads": 2}, False),
    "vision_mlp": ("reference-tiny", dict(vision_mlp_ratio=0.5), {"vision.intermediate_size": 64}, False),
    "vision_heads": ("reference-tiny", dict(vision_head_ratio=0.5), {"vision.num_attention_heads": 2}, True),
    "all": ("reference-tiny", ALL,
            {"lm.intermediate_size": 64, "lm.num_attention_heads": 2, "lm.num_key_value_heads": 2,
             "vision.intermediate_size": 64, "vision.num_attention_heads": 2}, True),
    "hybrid_lm_siglip": ("reference-tiny-hybrid", dict(lm_mlp_ratio=0.5, lm_head_ratio=0.5, vision_mlp_ratio=0.5),
                         {"lm.intermediate_size": 64, "lm.num_attention_heads": 2, "vision.intermediate_size": 64},
                         False),
}

LOADER = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from transformers import AutoModelForImageTextToText
    from dsvl_adapt.models.exact_load import load_exact, needs_exact_load
    results = {}
    for d in sys.argv[1:]:
        r = {}
        try:
            batch = torch.load(d + "/batch.pt")
            r["needs_exact_load"] = needs_exact_load(d)
            if r["needs_exact_load"]:
                try:
                    AutoModelForImageTextToText.from_pretrained(d)
                    r["plain_refused"] = False
                except Exception:
                    r["plain_refused"] = True
                model = load_exact(d)
            else:
                model = AutoModelForImageTextToText.from_pretrained(d)
            with torch.no_grad():
                torch.save(model(**batch, use_cache=False).logits, d + "/reloaded.pt")
            r["params"] = sum(p.numel() for p in model.parameters())
        except Exception as e:
            r["error"] = f"{type(e).__name__}: {e}"
        results[d] = r
    print("RESULTS " + json.dumps(results))
""")


@pytest.fixture(scope="module")
def pruned_and_reloaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("structural")
    out: dict[str, dict] = {}
    for name, (preset, kwargs, _, _) in MODES.items():
        entry: dict = {}
        try:
            model = make_model(preset)
            batch = make_batch(preset)
            sam_before = None
            if get_preset(preset).hybrid:
                sam_before = {k: v.clone() for k, v in model.model.high_res_vision_model.state_dict().items()}
            untouched = {k: v.clone() for k, v in model.state_dict().items()
                         if k.startswith(("model.aligner", "model.vision_model.embeddings", "lm_head",
                                          "model.language_model.embed_tokens"))}
            report = prune_structural(model, StructuralPruneConfig(**kwargs))
            d = root / name
            save_pruned(model, d)
            torch.save(forward_kwargs(batch), d / "batch.pt")
            entry.update(report=report, ref=logits_of(model, batch), dir=str(d), model=model, sam_before=sam_before,
                         untouched=untouched)
        except Exception as e:  # reported by the test of this mode
            entry["error"] = e
        out[name] = entry
    dirs = [e["dir"] for e in out.values() if "dir" in e]
    proc = subprocess.run([sys.executable, "-c", LOADER, *dirs], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
                          timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert line, f"loader subprocess failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    results = json.loads(line[0][len("RESULTS "):])
    for entry in out.values():
        if "dir" in entry:
            entry["reload"] = results[entry["dir"]]
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_prune_save_reload_new_process(mode, pruned_and_reloaded):
    preset, kwargs, expected_dims, exact = MODES[mode]
    entry = pruned_and_reloaded[mode]
    if "error" in entry:
        raise entry["error"]
    report: StructuralReport = entry["report"]
    assert report.params_after < report.params_before
    for key, after in expected_dims.items():
        assert report.dims[key][1] == after, (key, report.dims[key])
    for key, (before, after) in report.dims.items():
        if key not in expected_dims:
            assert before == after, key
    assert report.exact_load_required is exact
    assert report.importance == "magnitude"

    reload = entry["reload"]
    assert "error" not in reload, reload.get("error")
    assert reload["needs_exact_load"] is exact
    if exact:
        assert reload["plain_refused"], "plain from_pretrained must refuse vision-head-pruned checkpoints"
    assert reload["params"] == report.params_after
    reloaded = torch.load(Path(entry["dir"]) / "reloaded.pt")
    assert reloaded.shape == entry["ref"].shape
    assert (reloaded - entry["ref"]).abs().max().item() <= TOL

    model = entry["model"]
    for k, v in entry["untouched"].items():  # embeddings, lm_head, aligner, vision embeddings
        assert torch.equal(model.state_dict()[k], v), k
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    if entry["sam_before"] is not None:  # hybrid: the SAM tower is intact
        sam_after = model.model.high_res_vision_model.state_dict()
        assert sam_after.keys() == entry["sam_before"].keys()
        assert all(torch.equal(sam_after[k], v) for k, v in entry["sam_before"].items())
    cfg = json.loads((Path(entry["dir"]) / "config.json").read_text())
    tc = cfg["text_config"]
    assert tc["intermediate_size"] == report.dims["lm.intermediate_size"][1]
    assert tc["num_attention_heads"] == report.dims["lm.num_attention_heads"][1]
    assert tc["num_key_value_heads"] == report.dims["lm.num_key_value_heads"][1]
    assert tc["head_dim"] == 16
    assert tc["num_attention_heads"] % tc["num_key_value_heads"] == 0
    assert cfg["vision_config"]["intermediate_size"] == report.dims["vision.intermediate_size"][1]


def _kept_rows(pruned: torch.Tensor, original: torch.Tensor) -> list[int]:
    """Indices of the original rows that survive in ``pruned`` (rows are copied unchanged)."""
    idx = []
    for row in pruned:
        hits = (original == row).all(dim=1).nonzero().flatten().tolist()
        assert len(hits) == 1
        idx.append(hits[0])
    return idx


def test_pruned_equals_original_with_removed_units_masked():
    """Independent of any reload: pruning == zeroing what was removed in the original model."""
    preset = "reference-tiny"
    model = make_model(preset)
    original = make_model(preset)
    batch = make_batch(preset)
    prune_structural(model, StructuralPruneConfig(**ALL))
    hd = 16
    with torch.no_grad():
        for new, old in zip(model.model.language_model.layers, original.model.language_model.layers):
            keep = _kept_rows(new.mlp.gate_proj.weight, old.mlp.gate_proj.weight)
            assert keep == sorted(keep)  # order preserved
            mask = torch.zeros(old.mlp.down_proj.in_features, dtype=torch.bool)
            mask[keep] = True
            old.mlp.down_proj.weight[:, ~mask] = 0
            heads = sorted({i // hd for i in _kept_rows(new.self_attn.q_proj.weight, old.self_attn.q_proj.weight)})
            # GQA (4 query / 2 kv heads): one query head kept in each kv group
            assert [h // 2 for h in heads] == [0, 1]
            assert torch.equal(new.self_attn.k_proj.weight, old.self_attn.k_proj.weight)
            for h in range(4):
                if h not in heads:
                    old.self_attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
        for new, old in zip(model.model.vision_model.encoder.layers, original.model.vision_model.encoder.layers):
            keep = _kept_rows(new.mlp.fc1.weight, old.mlp.fc1.weight)
            mask = torch.zeros(old.mlp.fc2.in_features, dtype=torch.bool)
            mask[keep] = True
            old.mlp.fc2.weight[:, ~mask] = 0
            heads = sorted({i // hd for i in _kept_rows(new.self_attn.q_proj.weight, old.self_attn.q_proj.weight)})
            assert len(heads) == 2
            for h in range(4):
                if h not in heads:
                    old.self_attn.out_proj.weight[:, h * hd:(h + 1) * hd] = 0
    assert (logits_of(model, batch) - logits_of(original, batch)).abs().max().item() <= TOL
    # generation with a KV cache still works on the pruned model
    out = model.generate(**forward_kwargs(batch), max_new_tokens=2, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 2


def test_magnitude_keeps_the_largest_group_norms():
    model = make_model("reference-tiny")
    mlp = model.model.language_model.layers[0].mlp
    score = (mlp.gate_proj.weight.pow(2).sum(1) + mlp.up_proj.weight.pow(2).sum(1)
             + mlp.down_proj.weight.pow(2).sum(0)).detach()
    expected = sorted(torch.topk(score, 64).indices.tolist())
    original_gate = mlp.gate_proj.weight.detach().clone()
    prune_structural(model, StructuralPruneConfig(lm_mlp_ratio=0.5))
    assert _kept_rows(model.model.language_model.layers[0].mlp.gate_proj.weight, original_gate) == expected


@pytest.mark.parametrize("importance", ["taylor", "activation"])
def test_data_driven_importance(importance):
    preset = "reference-tiny-hybrid"
    batches = [make_batch(preset, seed=s) for s in (1, 2, 3)]
    cfg = StructuralPruneConfig(lm_mlp_ratio=0.5, lm_head_ratio=0.5, vision_mlp_ratio=0.25, vision_head_ratio=0.5,
                                importance=importance, calibration_batches=2)
    with pytest.raises(ValueError, match="importance"):
        prune_structural(make_model(preset), cfg)
    model = make_model(preset)
    before = model.state_dict()["model.language_model.layers.0.mlp.gate_proj.weight"].clone()
    messages: list[str] = []
    report = prune_structural(model, cfg, calibration=batches, progress=messages.append)
    assert report.importance == importance
    assert report.dims["lm.intermediate_size"] == (128, 64)
    assert report.dims["vision.intermediate_size"] == (128, 96)
    assert report.dims["vision.num_attention_heads"] == (4, 2)
    assert sum(f"{importance} calibration batch" in m for m in messages) == 2
    assert all(p.grad is None for p in model.parameters())
    assert not any(hasattr(m, "_importance") for m in model.modules())
    logits = logits_of(model, batches[0])
    assert torch.isfinite(logits).all()
    # data-driven ranking differs from magnitude ranking on at least one layer
    ref = make_model(preset)
    prune_structural(ref, StructuralPruneConfig(lm_mlp_ratio=0.5))
    kept = _kept_rows(model.model.language_model.layers[0].mlp.gate_proj.weight, before)
    kept_mag = _kept_rows(ref.model.language_model.layers[0].mlp.gate_proj.weight, before)
    assert kept != kept_mag


def test_taylor_needs_labels():
    preset = "reference-tiny"
    batch = forward_kwargs(make_batch(preset))
    with pytest.raises(ValueError, match="labels"):
        prune_structural(make_model(preset), StructuralPruneConfig(lm_mlp_ratio=0.5, importance="taylor"),
                         calibration=[batch])


@pytest.mark.parametrize("kwargs, field", [
    (dict(lm_mlp_ratio=1.0), "lm_mlp_ratio"),
    (dict(lm_head_ratio=-0.1), "lm_head_ratio"),
    (dict(vision_mlp_ratio=float("nan")), "vision_mlp_ratio"),
    (dict(vision_head_ratio="lots"), "vision_head_ratio"),
    (dict(importance="random"), "importance"),
    (dict(round_to=0), "round_to"),
    (dict(calibration_batches=0), "calibration_batches"),
    (dict(lm_ratio=0.5), "lm_ratio"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as err:
        StructuralPruneConfig(**kwargs)
    assert field in str(err.value)


def test_config_fields_are_documented():
    for name, field in StructuralPruneConfig.model_fields.items():
        assert field.description, name


def test_ratio_leaving_nothing_names_the_field():
    model = make_model("reference-tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="lm_mlp_ratio"):  # 128 -> 7 channels -> 0 after round_to=8
        prune_structural(model, StructuralPruneConfig(lm_mlp_ratio=0.95))
    with pytest.raises(ValueError, match="vision_mlp_ratio"):
        prune_structural(model, StructuralPruneConfig(vision_mlp_ratio=0.5, round_to=128))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing touched before the error


def test_all_zero_is_noop():
    model = make_model("reference-tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prune_structural(model, StructuralPruneConfig())
    assert report.params_after == report.params_before and report.pruned == []
    assert all(a == b for a, b in report.dims.values())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("round_to, expected", [(8, 88), (1, 90), (32, 64)])
def test_round_to(round_to, expected):
    model = make_model("reference-tiny")
    report = prune_structural(model, StructuralPruneConfig(lm_mlp_ratio=0.3, round_to=round_to))
    assert report.dims["lm.intermediate_size"] == (128, expected)  # 128 - floor(38.4) = 90, rounded down
    assert model.config.text_config.intermediate_size == expected


def test_frozen_weights_are_pruned_and_flags_restored():
    """After a LoRA merge the base weights are frozen: the pruner must still cut them."""
    model = make_model("reference-tiny")
    model.requires_grad_(False)
    model.train()
    report = prune_structural(model, StructuralPruneConfig(lm_mlp_ratio=0.5, vision_head_ratio=0.5))
    assert report.params_after < report.params_before
    assert not any(p.requires_grad for p in model.parameters())
    assert model.training


def test_siglip_pooling_head_is_dropped(tmp_path):
    model = make_model("reference-tiny", vision_use_head=True)
    assert hasattr(model.model.vision_model, "head")
    batch = make_batch("reference-tiny")
    prune_structural(model, StructuralPruneConfig(vision_mlp_ratio=0.5))
    assert not hasattr(model.model.vision_model, "head")
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert (logits_of(reloaded, batch) - logits_of(model, batch)).abs().max().item() <= TOL


def test_load_exact_without_sidecar_and_bf16(tmp_path):
    model = make_model("reference-tiny")
    batch = make_batch("reference-tiny")
    prune_structural(model, StructuralPruneConfig(vision_head_ratio=0.5, lm_head_ratio=0.5))
    assert save_pruned(model, tmp_path)
    (tmp_path / STRUCTURE_FILE).unlink()
    assert needs_exact_load(tmp_path)  # inferred from the safetensors header shapes
    reloaded = load_exact(tmp_path)
    assert (logits_of(reloaded, batch) - logits_of(model, batch)).abs().max().item() <= TOL
    half = load_exact(tmp_path, dtype=torch.bfloat16)
    assert half.model.vision_model.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert half.lm_head.weight is half.model.language_model.embed_tokens.weight


def test_rejects_non_deepseek_models():
    with pytest.raises(TypeError, match="DeepseekVL"):
        prune_structural(torch.nn.Linear(2, 2), StructuralPruneConfig(lm_mlp_ratio=0.5))
