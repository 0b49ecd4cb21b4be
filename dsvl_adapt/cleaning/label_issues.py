"""Level 2: likely label errors and image-question mismatches, ranked by cleanlab from the cross-fitted
probabilities of :mod:`.crossfit` (``cleanlab.filter.find_label_issues``, confident learning)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .crossfit import TaskProbabilities, image_task_probabilities
from .data import CleaningData
from .findings import CheckSkipped, Finding

SEPARABLE = 0.9  # out-of-sample accuracy of the image-only question model needed for the mismatch signal


def _issues(task: TaskProbabilities) -> np.ndarray:
    """Positions (within the task) cleanlab ranks as label issues, most likely first."""
    from cleanlab.filter import find_label_issues

    if len(set(task.labels.tolist())) < 2:
        return np.array([], dtype=np.int64)
    return find_label_issues(task.labels, task.probabilities, filter_by="both",
                             return_indices_ranked_by="self_confidence")


def label_issues(data: CleaningData) -> Iterable[Finding]:
    """Train rows whose given answer the out-of-sample model finds unlikely, with its suggested answer; what
    happens to them is ``clean.label_issues`` (flag for review, drop, or fix to the suggestion). Only those whose
    score reaches ``clean.label_issue_min_score``."""
    probabilities = data.answer_probabilities()
    rows = data.splits["train"].rows
    floor = data.settings.label_issue_min_score
    for task in probabilities.tasks:
        for position in _issues(task):
            given = float(task.probabilities[position, task.labels[position]])
            if 1.0 - given < floor:
                continue
            best = int(np.argmax(task.probabilities[position]))
            row = rows[int(task.indices[position])]
            suggestion = task.answers[best]
            yield Finding("train", row.id, "label_issue",
                          f"the answer {row.answer!r} has out-of-sample probability {given:.2f}; the model suggests "
                          f"{suggestion!r} ({task.probabilities[position, best]:.2f})",
                          score=round(1.0 - given, 4), action="flag", suggestion=suggestion)


def image_question_mismatch(data: CleaningData) -> Iterable[Finding]:
    """Train rows whose picture looks like another task's pictures (a scanned page under a product question):
    cleanlab over the out-of-sample probability of each row's task from its image alone. Where the pictures
    do not tell the tasks apart (one photo asked several questions), cleanlab finds nothing."""
    probabilities = data.answer_probabilities()
    task = image_task_probabilities(probabilities, folds=data.settings.folds)
    if task is None:
        raise CheckSkipped("fewer than two questions with answers of their own to tell apart")
    accuracy = float((task.probabilities.argmax(axis=1) == task.labels).mean())
    if accuracy < SEPARABLE:
        raise CheckSkipped(f"the pictures do not tell the questions apart (image-only accuracy {accuracy:.2f} < "
                           f"{SEPARABLE}): one kind of picture is asked several questions")
    rows = data.splits["train"].rows
    for position in _issues(task):
        given = float(task.probabilities[position, task.labels[position]])
        row = rows[int(task.indices[position])]
        yield Finding("train", row.id, "image_question_mismatch",
                      f"the picture resembles the pictures of other questions: probability {given:.2f} that it "
                      f"belongs with {row.question!r}", score=round(1.0 - given, 4), action="flag")
