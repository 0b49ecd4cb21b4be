"""Cross-fitted, out-of-sample answer probabilities for every train row (level 2).

The rows are split into *tasks*: questions whose common answers overlap are one task (the colour questions of
a catalogue, its category questions ...), found by joining questions that share an answer given at least twice.
Each task gets its own multinomial logistic regression over the fixed features of :mod:`.features` (image and
question), fitted k times, each time on the other k-1 folds, so that every row's probabilities come from a
model that never saw it. cleanlab then reads them (:mod:`.label_issues`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.leakage import normalize_question
from ..schemas import Row
from .features import image_features, question_features

MIN_TASK_ROWS = 10
COMPONENTS = 128  # principal components of the standardised image features the heads see
REGULARISATION = 1.0  # inverse L2 strength of the logistic heads: C=10 was overconfident (out-of-sample
# probabilities of 1e-6 tie, so the review order fell back to row ids); C=1 is better on every vertical (docs/cleaning.md)


@dataclass
class TaskProbabilities:
    """The rows of one task (indices into the train split), its answers, and out-of-sample probabilities."""

    indices: np.ndarray
    answers: list[str]
    labels: np.ndarray
    probabilities: np.ndarray


@dataclass
class AnswerProbabilities:
    tasks: list[TaskProbabilities]
    task_of_row: np.ndarray  # task index per train row (-1: too few rows to model)
    image_features: np.ndarray
    folds: int


def answer_key(answer: str) -> str:
    return " ".join(answer.casefold().split()).rstrip(".")


def tasks_by_answer_overlap(questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """A task id per row: questions (normalised) are joined when they share an answer that each gives at least
    twice (a one-off answer, perhaps a wrong one, does not join two tasks)."""
    parent = {q: q for q in set(questions)}

    def find(q: str) -> str:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    counts = Counter(zip(questions, answers))
    owner: dict[str, str] = {}
    for (question, answer), n in counts.items():
        if n < 2:
            continue
        if answer in owner:
            parent[find(question)] = find(owner[answer])
        else:
            owner[answer] = question
    roots = {root: index for index, root in enumerate(sorted({find(q) for q in parent}))}
    return np.array([roots[find(q)] for q in questions], dtype=np.int64)


def cross_fitted_probabilities(rows: Sequence[Row], *, folds: int = 5, seed: int = 0) -> AnswerProbabilities:
    """Out-of-sample probabilities of each task's answers for every row, by k-fold cross-fitting."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    questions = [normalize_question(r.question) for r in rows]
    answers = [answer_key(r.answer) for r in rows]
    images = reduced(image_features([r.image for r in rows]))
    features = np.hstack([images, 3 * question_features(questions)])
    task_ids = tasks_by_answer_overlap(questions, answers)
    task_of_row = np.full(len(rows), -1, dtype=np.int64)
    tasks: list[TaskProbabilities] = []
    for task in np.unique(task_ids):
        indices = np.flatnonzero(task_ids == task)
        names = sorted({answers[i] for i in indices})
        if len(indices) < MIN_TASK_ROWS or len(names) < 2:
            continue
        labels = np.array([names.index(answers[i]) for i in indices])
        probabilities = np.zeros((len(indices), len(names)))
        smallest = min(Counter(labels.tolist()).values())
        k = max(2, min(folds, len(indices) // 2))
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed) if smallest >= k else None
        parts = splitter.split(indices, labels) if splitter else _plain_folds(len(indices), k, seed)
        for fit_on, predict_on in parts:
            seen = np.unique(labels[fit_on])
            if len(seen) < 2:
                probabilities[predict_on] = np.bincount(labels[fit_on], minlength=len(names)) / len(fit_on)
                continue
            model = LogisticRegression(C=REGULARISATION, max_iter=300)
            model.fit(features[indices[fit_on]], labels[fit_on])
            probabilities[np.ix_(predict_on, seen)] = model.predict_proba(features[indices[predict_on]])
        probabilities = (probabilities + 1e-6) / (probabilities + 1e-6).sum(axis=1, keepdims=True)
        task_of_row[indices] = len(tasks)
        tasks.append(TaskProbabilities(indices, names, labels, probabilities))
    return AnswerProbabilities(tasks, task_of_row, images, folds)


def reduced(features: np.ndarray) -> np.ndarray:
    """Standardised image features projected on their first principal components (at most ``COMPONENTS``),
    scaled to unit spread of the first: the logistic heads fit ten times faster and overfit less."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    standard = StandardScaler().fit_transform(features)
    components = min(COMPONENTS, standard.shape[0] - 1, standard.shape[1])
    if components < 2:
        return standard
    projected = PCA(components, random_state=0).fit_transform(standard)
    return projected / (projected[:, 0].std() + 1e-6)


def _plain_folds(n: int, k: int, seed: int):
    order = np.random.default_rng(seed).permutation(n)
    for part in range(k):
        predict_on = order[part::k]
        yield np.setdiff1d(order, predict_on), predict_on


def image_task_probabilities(probabilities: AnswerProbabilities, *, folds: int = 5,
                             seed: int = 0) -> TaskProbabilities | None:
    """Out-of-sample probability, from the image alone, of each row's task: where pictures tell the tasks apart
    (product photos, scanned pages, radiographs under one vertical's questions), a row whose image belongs to
    another task's pictures does not match its question. None when there are fewer than two tasks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    rows = np.flatnonzero(probabilities.task_of_row >= 0)
    labels = probabilities.task_of_row[rows]
    counts = Counter(labels.tolist())
    if len(counts) < 2 or min(counts.values()) < folds:
        return None
    features = probabilities.image_features[rows]
    out = np.zeros((len(rows), len(counts)))
    for fit_on, predict_on in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(rows, labels):
        model = LogisticRegression(C=REGULARISATION, max_iter=300).fit(features[fit_on], labels[fit_on])
        out[predict_on] = model.predict_proba(features[predict_on])
    names = [str(t) for t in sorted(counts)]
    return TaskProbabilities(rows, names, labels, out)


__all__ = ["AnswerProbabilities", "TaskProbabilities", "cross_fitted_probabilities", "image_task_probabilities",
           "tasks_by_answer_overlap", "answer_key"]
