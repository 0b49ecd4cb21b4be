"""Level 2: cross-fitted answer probabilities and cleanlab find flipped answers and suggest the original."""

from __future__ import annotations

import random


def _flipped_industrial(n: int, rate: float, seed: int = 3):
    from dsvl_adapt.data.loading import Split
    from dsvl_adapt.schemas import Row
    from dsvl_adapt_industrial.generator import generate_rows

    raw = generate_rows("train", n, seed=0, image_size=64)
    answers = sorted({r["answer"] for r in raw})
    rng = random.Random(seed)
    rows, flipped = [], {}
    for r in raw:
        answer = r["answer"]
        if rng.random() < rate:
            flipped[r["id"]] = answer
            answer = rng.choice([a for a in answers if a != answer])
        rows.append(Row(id=r["id"], image=r["image"], question=r["question"], answer=answer))
    return Split("train", rows), flipped


def test_label_issues_find_flipped_answers_and_suggest_the_original():
    from dsvl_adapt.cleaning.data import CleaningData
    from dsvl_adapt.cleaning.runner import run_checks
    from dsvl_adapt.config import CleanSection
    from dsvl_adapt.plugins import get_registry

    train, flipped = _flipped_industrial(300, 0.1)
    check = get_registry().data_checks.get("label-issues")
    data = CleaningData("industrial", {"train": train}, CleanSection(label_issues="fix"), log=lambda m: None)
    report = run_checks(data, [check], {})
    found = {f.row_id: f for f in report.findings if f.reason == "label_issue"}
    hits = set(found) & set(flipped)
    assert len(hits) / len(flipped) >= 0.7, (len(hits), len(flipped), len(found))
    # the issue's target for flipped answers, over everything cleanlab flags: 0.91 / 0.91 here (the features before
    # the detail and object groups and C=1 gave 0.84 / 0.59: a defect seen in one place was not known in another)
    assert len(hits) / len(found) >= 0.7, (len(hits), len(found))
    restored = sum(found[row_id].suggestion == flipped[row_id] for row_id in hits)
    assert restored / len(hits) >= 0.8
    view = report.view({"train": train})
    assert set(view.fixed["train"]) == set(found) and not view.dropped
    assert all(f.level == 2 and 0 <= f.score <= 1 for f in found.values())
    # a score floor keeps the top of the same ranking: fewer rows, none under the floor
    floor = sorted(f.score for f in found.values())[len(found) // 2]
    strict = CleaningData("industrial", {"train": train}, CleanSection(label_issue_min_score=floor),
                          log=lambda m: None)
    kept = {f.row_id: f for f in run_checks(strict, [check], {}).findings if f.reason == "label_issue"}
    assert kept and set(kept) < set(found) and all(f.score >= floor for f in kept.values())


def test_tasks_join_questions_that_share_answers():
    from dsvl_adapt.cleaning.crossfit import tasks_by_answer_overlap

    questions = ["what colour", "which color", "what kind"] * 2 + ["what colour", "which color", "what kind"]
    answers = ["red", "red", "mug", "red", "red", "mug", "blue", "blue", "red"]  # one 'red' for a kind: no join
    tasks = tasks_by_answer_overlap(questions, answers)
    assert tasks[0] == tasks[1] == tasks[3] == tasks[4] == tasks[6] == tasks[7]
    assert tasks[2] == tasks[5] == tasks[8] != tasks[0]


def test_image_question_mismatch_says_why_it_was_not_made():
    from dsvl_adapt.cleaning.data import CleaningData
    from dsvl_adapt.cleaning.runner import run_checks
    from dsvl_adapt.config import CleanSection
    from dsvl_adapt.data.loading import Split
    from dsvl_adapt.plugins import get_registry
    from dsvl_adapt.schemas import Row
    from dsvl_adapt_ecommerce.generator import generate_rows

    raw = generate_rows("train", 72, seed=0, image_size=64)
    train = Split("train", [Row(id=r["id"], image=r["image"], question=r["question"], answer=r["answer"]) for r in raw])
    check = get_registry().data_checks.get("image-question-mismatch")
    report = run_checks(CleaningData("ecommerce", {"train": train}, CleanSection(), log=lambda m: None), [check], {})
    # one product photo is asked its colour, category or pattern: pictures cannot tell those questions apart
    assert report.checks["image-question-mismatch"]["status"].startswith("skipped: the pictures do not tell")
