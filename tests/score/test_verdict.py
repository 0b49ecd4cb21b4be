"""The verdict on hand-made scorecards: floors, retention, forgetting, unknown checks, the teacher diagnosis, and
the bootstrap intervals the comparisons rest on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from dsvl_adapt.metrics import exact_match
from dsvl_adapt.schemas import HardwareTarget, Objectives
from dsvl_adapt.score.intervals import (
    bootstrap_interval,
    metric_on_rows,
    paired_difference,
    resample_indices,
)
from dsvl_adapt.score.scorecard import Comparison, Scorecard, load_scorecard, render_markdown
from dsvl_adapt.score.verdict import TrainingFacts, apply_verdict, diagnose_teacher

INDUSTRIAL = Objectives(min_retention=0.95)  # the industrial vertical's: floors and forgetting at their defaults


def _card(teacher: float, student: float, *, floor: float = 0.20, base: float = 0.0, **extra) -> Scorecard:
    accuracy = {"base": base, "teacher": teacher, "student": student}
    fields = dict(
        vertical="industrial", metric="accuracy", accuracy=accuracy,
        retention=round(student / teacher, 6) if teacher else None,
        metrics={m: {"accuracy": v} for m, v in accuracy.items()}, constant_answer={"accuracy": floor},
        general_comparisons={
            "teacher_vs_base": Comparison(before="base", after="teacher", difference=0.0, ci=[-0.05, 0.05],
                                          within_noise=True, forgetting=False),
            "student_vs_teacher": Comparison(before="teacher", after="student", difference=0.0, ci=[-0.05, 0.05],
                                             within_noise=True, forgetting=False)},
    )
    return Scorecard(**{**fields, **extra})


def _check(card: Scorecard, name: str):
    return next(o for o in card.objectives if o.name == name)


def test_a_teacher_and_student_below_the_floor_never_meet_the_objectives():
    # the audit's run: teacher 0.025, student 0.10, floor 0.20, retention 4.0
    card = apply_verdict(_card(0.025, 0.10), INDUSTRIAL)
    assert card.retention == 4.0 and _check(card, "min_retention").ok is True
    assert card.floor is not None and card.floor.bar == pytest.approx(0.60)  # 0.2 + 0.5 x (1 - 0.2)
    assert _check(card, "teacher_floor").ok is False and _check(card, "student_floor").ok is False
    assert card.verdict is False
    markdown = render_markdown(card)
    assert "objectives met" not in markdown and "objectives NOT met (teacher_floor, student_floor)" in markdown


def test_a_trained_pair_above_the_bar_meets_the_objectives():
    card = apply_verdict(_card(0.90, 0.88), INDUSTRIAL)
    assert [o.ok for o in card.objectives] == [True] * len(card.objectives)
    assert {o.name for o in card.objectives} == {"teacher_floor", "student_floor", "min_retention",
                                                 "forgetting_finetune", "forgetting_compression"}
    assert card.verdict is True and "**Verdict: objectives met**" in render_markdown(card)


def test_the_student_alone_below_the_bar_fails_and_the_margin_is_the_verticals():
    card = apply_verdict(_card(0.90, 0.55), INDUSTRIAL)
    assert _check(card, "teacher_floor").ok and _check(card, "student_floor").ok is False and not card.verdict
    lenient = apply_verdict(_card(0.90, 0.55), Objectives(floor_margin=0.25))  # bar 0.2 + 0.25 x 0.8 = 0.4
    assert lenient.floor.bar == pytest.approx(0.40) and _check(lenient, "student_floor").ok
    # margin 0 still asks for more than a constant answer
    at_floor = apply_verdict(_card(0.20, 0.20), Objectives(floor_margin=0.0, max_forgetting=None))
    assert _check(at_floor, "teacher_floor").ok is False
    off = apply_verdict(_card(0.025, 0.10), Objectives(min_retention=0.95, floor_margin=None, max_forgetting=None))
    assert [o.name for o in off.objectives] == ["min_retention"] and off.verdict is True


def test_a_lower_is_better_metric_must_fall_below_its_floor():
    card = _card(0.30, 0.45, floor=0.80, higher_is_better=False, retention=None)
    apply_verdict(card, Objectives(max_forgetting=None), best=0.0)
    assert card.floor.bar == pytest.approx(0.40)  # 0.8 + 0.5 x (0 - 0.8)
    assert _check(card, "teacher_floor").ok is True and _check(card, "student_floor").ok is False
    assert _check(card, "teacher_floor").higher_is_better is False


def test_a_forgetting_check_over_a_base_at_the_general_floor_says_it_cannot_show_forgetting():
    blank = _card(0.90, 0.88, general={"base": 0.0, "teacher": 0.0, "student": 0.0}, general_floor=0.19)
    apply_verdict(blank, INDUSTRIAL)
    note = _check(blank, "forgetting_finetune").note
    assert "no general ability to lose" in note and "model.pretrain_general=true" in note
    knows = _card(0.90, 0.88, general={"base": 0.55, "teacher": 0.54, "student": 0.52}, general_floor=0.19)
    apply_verdict(knows, INDUSTRIAL)
    assert "no general ability" not in _check(knows, "forgetting_finetune").note
    assert "no general ability" not in _check(knows, "forgetting_compression").note


def test_a_check_that_could_not_be_made_is_unknown_and_the_verdict_is_not_met():
    card = _card(0.90, 0.88, general_comparisons={})  # score.general_size=0: no forgetting figures
    apply_verdict(card, INDUSTRIAL)
    assert _check(card, "forgetting_finetune").ok is None and "general_size" in _check(card, "forgetting_finetune").note
    assert card.verdict is None
    assert "objectives unknown (forgetting_finetune, forgetting_compression not checked)" in render_markdown(card)
    no_student = _card(0.90, 0.88)
    no_student.accuracy.pop("student")
    no_student.retention = None
    apply_verdict(no_student, INDUSTRIAL)
    assert _check(no_student, "student_floor").ok is None and _check(no_student, "min_retention").ok is None
    assert no_student.verdict is None
    no_rows = apply_verdict(_card(0.90, 0.88, constant_answer={}), INDUSTRIAL)
    assert _check(no_rows, "teacher_floor").ok is None and no_rows.verdict is None
    assert apply_verdict(_card(0.9, 0.9), Objectives(floor_margin=None, max_forgetting=None)).verdict is None  # none


def test_forgetting_fails_only_outside_the_paired_interval_and_past_max_forgetting():
    def with_general(difference: float, ci: list[float]) -> Scorecard:
        outside = ci[1] < 0
        comparison = Comparison(before="base", after="teacher", difference=difference, ci=ci,
                                within_noise=not outside, forgetting=outside)
        card = _card(0.90, 0.88)
        card.general_comparisons["teacher_vs_base"] = comparison
        return apply_verdict(card, INDUSTRIAL)

    forgot = with_general(-0.30, [-0.45, -0.15])
    check = _check(forgot, "forgetting_finetune")
    assert check.ok is False and check.value == pytest.approx(0.30) and check.limit == 0.05 and not forgot.verdict
    assert "forgetting" in check.note
    noise = with_general(-0.10, [-0.25, 0.04])  # a larger drop than 0.05, but within noise
    assert _check(noise, "forgetting_finetune").ok is True and noise.verdict is True
    small = with_general(-0.03, [-0.05, -0.01])  # outside noise, within max_forgetting
    assert _check(small, "forgetting_finetune").ok is True
    assert Objectives().max_forgetting == 0.05


@pytest.mark.parametrize("field,value", [("floor_margin", 1.0), ("floor_margin", -0.1), ("max_forgetting", 1.5),
                                         ("max_forgetting", math.nan), ("min_accuracy", math.inf),
                                         ("min_retention", math.nan)])
def test_objectives_reject_out_of_range_and_non_finite_values(field, value):
    with pytest.raises(ValidationError, match=field):
        Objectives(**{field: value})


def _facts(**kw) -> TrainingFacts:
    base = dict(from_preset=False, full_when="auto", full_ran=False, full_steps=300, full_lr=2e-4, lora_steps=60,
                lora_lr=3e-4, train_rows=800)
    return TrainingFacts(**{**base, **kw})


def test_a_checkpoint_teacher_at_the_floor_is_told_to_train_every_weight():
    card = apply_verdict(_card(0.20, 0.20), INDUSTRIAL)
    diagnosis = diagnose_teacher(card, _facts())
    assert diagnosis is not None and "did not learn" in diagnosis.summary and "0.200" in diagnosis.summary
    assert any("finetune.full_when=always" in r for r in diagnosis.remedies)
    assert any("finetune.lora.train.steps=120" in r for r in diagnosis.remedies)
    assert any("finetune.lora.train.lr" in r for r in diagnosis.remedies)
    markdown = render_markdown(card.model_copy(update={"teacher_diagnosis": diagnosis}))
    assert "## The teacher did not learn the task" in markdown and "finetune.full_when=always" in markdown


def test_a_preset_teacher_below_the_bar_is_told_more_steps_and_no_diagnosis_for_a_good_teacher():
    card = apply_verdict(_card(0.40, 0.40), INDUSTRIAL)
    diagnosis = diagnose_teacher(card, _facts(from_preset=True, full_ran=True, full_steps=20, train_rows=48))
    assert "learnt little" in diagnosis.summary
    assert not any("full_when" in r for r in diagnosis.remedies)
    assert any("finetune.full.steps=100 (now 20)" in r for r in diagnosis.remedies)
    assert any("finetune.full.lr" in r for r in diagnosis.remedies) and any("train_size" in r for r in diagnosis.remedies)
    assert diagnose_teacher(apply_verdict(_card(0.9, 0.9), INDUSTRIAL), _facts()) is None


def test_an_update_teacher_is_told_the_update_full_keys():
    card = apply_verdict(_card(0.20, 0.20), INDUSTRIAL)
    skipped = diagnose_teacher(card, _facts(from_preset=True, full_when="never", full_keys="update.full"))
    assert any("update.full.when=never" in c for c in skipped.causes)
    assert any("update.full.when=always (with update.full.steps > 0)" in r for r in skipped.remedies)
    short = diagnose_teacher(card, _facts(from_preset=True, full_ran=True, full_steps=100, full_keys="update.full"))
    assert any("update.full.steps=200 (now 100)" in r for r in short.remedies)
    assert not any("finetune.full_when" in r or "finetune.full.steps" in r for r in [*skipped.remedies,
                                                                                     *short.remedies])


def test_bootstrap_intervals_are_seeded_and_say_when_one_row_is_noise():
    references = ["a"] * 48
    draws = resample_indices(48, seed=0)
    assert np.array_equal(draws, resample_indices(48, seed=0)) and not np.array_equal(draws, resample_indices(48, seed=1))
    one_miss = metric_on_rows(exact_match, ["a"] * 47 + ["b"], references, references)  # 47/48 = 0.979
    two_miss = metric_on_rows(exact_match, ["b"] + ["a"] * 46 + ["b"], references, references)  # 46/48 = 0.958
    low, high = bootstrap_interval(two_miss, draws)
    assert low < 46 / 48 < high <= 1.0
    one_row = paired_difference(one_miss, two_miss, draws)
    assert one_row.difference == pytest.approx(-1 / 48, abs=1e-6) and one_row.within_noise
    poor = metric_on_rows(exact_match, ["a"] * 10 + ["b"] * 38, references, references)
    real = paired_difference(one_miss, poor, draws)
    assert not real.within_noise and real.high < 0
    assert paired_difference(one_miss, one_miss, draws).low == paired_difference(one_miss, one_miss, draws).high == 0


def test_a_target_with_an_unchecked_check_does_not_fit_and_old_scorecards_still_load(tmp_path):
    from transformers import DeepseekVLConfig

    from dsvl_adapt.score.hardware import check_target

    target = HardwareTarget(name="box", device="cpu", runtime="onnxruntime", memory_gb=8, dtypes=["fp32"],
                            latency_p90_ms=200)
    fit = check_target(target, model_dtype="fp32", weight_bytes=10, config=DeepseekVLConfig(), macs=1, measured={},
                       inventory=None)  # no export: opset unknown; no peak_tops: latency unknown
    assert fit.fits is False and fit.status == "unknown" and fit.unknown == ["opset", "latency_p90"]
    card = _card(0.9, 0.9, targets=[fit])
    assert "### box (cpu, onnxruntime): fit unknown (opset, latency_p90 not checked)" in render_markdown(card)
    old = json.loads(card.model_dump_json())
    old["schema_version"] = 1
    for target_json in old["targets"]:
        del target_json["status"], target_json["unknown"]
    target_json["fits"] = False
    (tmp_path / "scorecard.json").write_text(json.dumps(old))
    assert load_scorecard(tmp_path).targets[0].status == "does not fit"
