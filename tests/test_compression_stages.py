"""The compression and distillation stages inside a real (tiny) run."""

from __future__ import annotations

import json

import torch

import dsvl_adapt
from dsvl_adapt.config import compose
from dsvl_adapt.inject.distill import DistillLoss, default_layer_map, sparsity_masks


def _stage(run_dir, name):
    return json.loads((run_dir / "stages" / name / "stage.json").read_text())


def test_structural_pruning_shrinks_the_student_and_reloads_exactly(tiny_run):
    record = _stage(tiny_run, "prune.structural")["figures"]
    assert record["params_after"] < record["params_before"]
    assert record["dims"]["lm.intermediate_size"] == [128, 64]
    assert record["reload_max_abs_diff"] == 0.0
    teacher_params = _stage(tiny_run, "finetune")["figures"]["params"]
    assert record["params"] == record["params_after"] < teacher_params


def test_weight_pruning_records_sparsity_per_layer_and_a_smaller_sparse_copy(tiny_run):
    figures = _stage(tiny_run, "prune.weights")["figures"]
    assert abs(figures["overall_sparsity"] - 0.3) < 0.01
    assert figures["per_layer"] and all(abs(v - 0.3) < 0.02 for v in figures["per_layer"].values())
    assert "lm_head" not in " ".join(figures["per_layer"])
    assert figures["sparse_size_bytes"] < figures["size_bytes"]
    assert "no speedup" in figures["runtime_note"]


def test_distillation_keeps_the_zeros_of_weight_pruning(tiny_run):
    figures = _stage(tiny_run, "distill")["figures"]
    assert figures["steps"] == 6 and figures["kept_zero_masks"] > 0
    student, _ = dsvl_adapt.load(tiny_run / "stages" / "distill" / "student")
    weights = dict(student.named_modules())
    for name, expected in _stage(tiny_run, "prune.weights")["figures"]["per_layer"].items():
        weight = weights[name].weight
        assert abs(float((weight == 0).float().mean()) - expected) < 1e-6, name


def test_every_model_stage_records_validation_accuracy(tiny_run):
    for stage in ("prune.structural", "prune.weights", "distill"):
        assert 0.0 <= _stage(tiny_run, stage)["figures"]["validation_accuracy"] <= 1.0


def test_training_stages_record_the_precision_they_ran_in(tiny_run):
    # finetune=fast and distill=fast pin fp32; the default configs say auto (see tests/test_precision.py)
    finetune = _stage(tiny_run, "finetune")["figures"]
    assert finetune["full"]["precision"] == finetune["lora"]["precision"] == "fp32"
    assert _stage(tiny_run, "distill")["figures"]["precision"] == "fp32"


def _tiny_pair():
    from dsvl_adapt.models.checkpoint import build_reference
    from dsvl_adapt.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a b c d e f g"] * 5, vocab_size=300)
    teacher, _ = build_reference("reference-tiny", tokenizer, seed=1)
    student, _ = build_reference("reference-tiny", tokenizer, seed=1)
    ids = torch.randint(10, 200, (2, 24))
    ids[:, 1:17] = teacher.config.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, 20:] = ids[:, 20:]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(2, 3, 32, 32),
             "labels": labels}
    return teacher, student, batch


def test_kl_term_vanishes_when_student_equals_teacher_and_is_positive_otherwise():
    teacher, student, batch = _tiny_pair()
    config, _ = compose(["distill.ce_weight=0", "distill.kl_weight=1"])
    loss = DistillLoss(teacher, config.distill, student.config)
    assert float(loss(student, batch).detach()) < 1e-6
    with torch.no_grad():
        student.model.language_model.layers[0].mlp.up_proj.weight.add_(0.5)
    positive = float(loss(student, batch).detach())
    assert positive > 0
    assert not any(p.requires_grad for p in teacher.parameters())


def test_hidden_loss_uses_learned_projections_and_layer_map():
    teacher, student, batch = _tiny_pair()
    config, _ = compose(["distill.hidden_weight=1", "distill.kl_weight=0", "distill.ce_weight=0"])
    loss = DistillLoss(teacher, config.distill, student.config)
    assert len(loss.projections) == 2 and loss.layer_map == {0: 0, 1: 1}
    value = loss(student, batch)
    assert float(value) < 1e-8  # identity projections, same weights
    assert default_layer_map(2, 4) == {0: 1, 1: 3}


def test_sparsity_masks_mark_zeros():
    _teacher, student, _batch = _tiny_pair()
    name = "model.language_model.layers.0.mlp.up_proj"
    with torch.no_grad():
        dict(student.named_modules())[name].weight[:, :3] = 0
    masks = sparsity_masks(student, [name, "not.a.module"])
    assert list(masks) == [name] and not masks[name][:, :3].any()
