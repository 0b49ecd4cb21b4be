"""The training loop watches accuracy as well as loss: greedy exact match read from teacher-forced logits.

``greedy_exact_matches`` claims that a row whose every labelled token is the argmax of its logits is a row greedy
``generate`` answers word for word. Checked here against ``generate`` itself on the tiny run's teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsvl_adapt.config import compose
from dsvl_adapt.data.batches import BatchEncoder
from dsvl_adapt.data.loading import load_configured_split
from dsvl_adapt.inject.training import greedy_exact_matches
from dsvl_adapt.models.checkpoint import load_checkpoint
from dsvl_adapt.plugins import get_registry

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher_and_items(tiny_run: Path, tiny_overrides: list[str], tmp_path_factory: pytest.TempPathFactory):
    config, _ = compose([*tiny_overrides, f"run_dir={tmp_path_factory.mktemp('unused')}"])
    registry = get_registry()
    vertical = registry.verticals.get(config.vertical.name)
    model, processor = load_checkpoint(tiny_run / "stages" / "finetune" / "teacher")
    model.eval()
    encoder = BatchEncoder(processor, registry.prompts.get(vertical.prompt))
    size = processor.image_processor.size["height"]
    rows = [*load_configured_split(config, registry, "validation", size).rows,
            *load_configured_split(config, registry, "test", size).rows]
    return model, encoder, encoder.encode_all(rows), vertical.max_answer_tokens


def _generated(model, encoder: BatchEncoder, item, max_new_tokens: int) -> list[int]:
    """What greedy ``generate`` writes for one row, up to and including the end-of-sentence token."""
    batch = encoder.generation_batch([item])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=encoder.pad_id, eos_token_id=encoder.eos_id)
    return out[0, batch["input_ids"].shape[1]:].tolist()


def _matches(model, encoder: BatchEncoder, item) -> bool:
    batch = encoder.training_batch([item])
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    return bool(greedy_exact_matches(logits.float(), batch["labels"])[0])


def test_teacher_forced_exact_match_agrees_with_greedy_generation_row_by_row(teacher_and_items):
    model, encoder, items, max_new_tokens = teacher_and_items
    for item in items:
        written = _generated(model, encoder, item, max_new_tokens + 1)
        # against the reference answer: a match exactly when generate wrote the answer, then stopped
        assert _matches(model, encoder, item) == (written[: len(item.answer_ids)] == item.answer_ids)
        # against what generate wrote (when it stopped): always a match
        if encoder.eos_id in written:
            stopped = written[: written.index(encoder.eos_id) + 1]
            assert _matches(model, encoder, type(item)(item.prompt_ids, stopped, item.pixels))
        # one token changed: never a match
        wrong = list(item.answer_ids)
        wrong[0] = (wrong[0] + 1) % model.config.text_config.vocab_size
        assert not _matches(model, encoder, type(item)(item.prompt_ids, wrong, item.pixels))


def test_rows_without_labels_count_as_misses():
    logits = torch.zeros(2, 4, 5)
    labels = torch.full((2, 4), -100)
    labels[1, 2:] = 0  # argmax of all-zero logits is token 0
    assert greedy_exact_matches(logits, labels).tolist() == [False, True]


def test_every_validation_in_a_run_records_the_exact_match(tiny_run: Path):
    figures = json.loads((tiny_run / "stages" / "finetune" / "stage.json").read_text())["figures"]
    evaluations = [record for phase in ("full", "lora") for record in figures[phase]["history"]
                   if "validation_loss" in record]
    assert evaluations
    for record in evaluations:
        assert 0.0 <= record["validation_exact_match"] <= 1.0


# -- stopping when validation accuracy saturates ------------------------------------------------------------------

def _own_answers(model, encoder: BatchEncoder, items, max_new_tokens: int):
    """The rows relabelled with what the model itself answers (the ones where it stops): exact match 1.0."""
    relabelled = []
    for item in items:
        written = _generated(model, encoder, item, max_new_tokens + 1)
        if encoder.eos_id in written:
            relabelled.append(type(item)(item.prompt_ids, written[: written.index(encoder.eos_id) + 1], item.pixels))
    return relabelled


def _train(model, encoder, train, validation, tmp_path: Path, **schedule):
    from dsvl_adapt.config import TrainSchedule
    from dsvl_adapt.inject.training import Trainer

    model.train().requires_grad_(True)
    settings = dict(steps=6, batch_size=2, lr=1e-3, warmup_steps=0, eval_every=2, checkpoint_every=100,
                    precision="fp32") | schedule
    trainer = Trainer(model, encoder, TrainSchedule(**settings), checkpoint_dir=tmp_path / "checkpoints", seed=0,
                      label="test")
    return trainer.train(train, validation)


def test_a_phase_whose_model_already_answers_the_validation_split_takes_no_step(teacher_and_items, tiny_run,
                                                                                 tmp_path):
    _, encoder, items, max_new_tokens = teacher_and_items
    model, _ = load_checkpoint(tiny_run / "stages" / "finetune" / "teacher")
    validation = _own_answers(model.eval(), encoder, items, max_new_tokens)
    assert validation, "the tiny teacher stops on none of the rows: nothing to relabel"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _train(model, encoder, items, validation, tmp_path, stop_at_exact_match=1.0)
    assert (result.steps, result.stopped_early, result.stop_reason) == (0, True, "exact_match")
    assert result.history == [{"step": 0, "validation_loss": result.history[0]["validation_loss"],
                               "validation_exact_match": 1.0}]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_phase_stops_at_the_first_evaluation_that_reaches_the_exact_match_asked_for(teacher_and_items, tiny_run,
                                                                                      tmp_path):
    _, encoder, items, _ = teacher_and_items
    model, _ = load_checkpoint(tiny_run / "stages" / "load" / "base")  # random weights: answers nothing yet
    rows = items[:2]
    result = _train(model, encoder, rows * 4, rows, tmp_path, steps=40, lr=3e-3, stop_at_exact_match=1.0)
    evaluations = [record for record in result.history if "validation_exact_match" in record]
    assert evaluations[0]["step"] == 0 and evaluations[0]["validation_exact_match"] < 1.0
    assert result.stop_reason == "exact_match" and result.stopped_early and 0 < result.steps < 40
    assert [r["validation_exact_match"] for r in evaluations] == \
        [r["validation_exact_match"] for r in evaluations[:-1]] + [1.0]
    assert all(r["validation_exact_match"] < 1.0 for r in evaluations[:-1]) and evaluations[-1]["step"] == result.steps


def test_without_a_target_every_step_runs(teacher_and_items, tiny_run, tmp_path):
    _, encoder, items, _ = teacher_and_items
    model, _ = load_checkpoint(tiny_run / "stages" / "load" / "base")
    result = _train(model, encoder, items[:4], items[:2], tmp_path, steps=4, stop_at_exact_match=None)
    assert (result.steps, result.stopped_early, result.stop_reason) == (4, False, "steps")
    assert [r["step"] for r in result.history if "validation_loss" in r] == [2, 4]  # no step-0 evaluation


def test_the_scorecard_shows_each_training_phase_as_its_stage_recorded_it(tiny_run: Path):
    figures = json.loads((tiny_run / "stages" / "finetune" / "stage.json").read_text())["figures"]
    distill = json.loads((tiny_run / "stages" / "distill" / "stage.json").read_text())["figures"]
    markdown = (tiny_run / "scorecard.md").read_text()
    for label, phase in (("fine-tune (full)", figures["full"]), ("fine-tune (LoRA)", figures["lora"]),
                         ("distill", distill)):
        assert f"| {label} | {phase['steps']} of {phase['planned_steps']} |" in markdown
    assert '<section id="training">' in (tiny_run / "scorecard.html").read_text()
