"""Product-attribute metrics: per-attribute accuracy and macro-F1 over attribute values.

Every row asks about one attribute (``category``, ``colour``, ``pattern`` …), named by its meta:
``meta["attribute"]``, else ``meta["asked"]``, else ``meta["question_type"]`` (the generator and the
catalogue loader write the last two). Answers are compared after
:func:`dsvl_adapt.metrics.normalize_answer`.

``<attribute>_accuracy``
    accuracy over the rows that ask that attribute (0.0 when the split has none).
``attribute_accuracy``
    the mean of the per-attribute accuracies over the attributes present (each attribute
    weighs the same, however many rows ask it).
``attribute_macro_f1``
    macro-averaged F1 (Sokolova & Lapalme 2009): a class is an (attribute, value) pair that
    occurs among the references; for class c, F1_c = 2·TP / (2·TP + FP + FN) where a false
    positive is a row *asking the same attribute* whose prediction is c but whose reference
    is not. Macro-F1 is the unweighted mean over the classes. A prediction that is no
    reference class (free text, a typo) is a false negative for the true class and nobody's
    false positive. This equals scikit-learn's ``f1_score(y_true, y_pred, average="macro",
    labels=sorted(set(y_true)))`` with labels written ``"<attribute>:<value>"``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from dsvl_adapt.metrics import normalize_answer


ATTRIBUTE_KEYS = ("attribute", "asked", "question_type")


def _meta(row: Any) -> dict:
    meta = row.get("meta") if isinstance(row, dict) else getattr(row, "meta", None)
    return meta or {}


def attribute_of(row: Any) -> str:
    """The attribute a row asks, from its meta ('' when it does not say)."""
    meta = _meta(row)
    return str(next((meta[k] for k in ATTRIBUTE_KEYS if meta.get(k)), ""))


def _triples(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any]) -> list[tuple[str, str, str]]:
    """(attribute, normalised prediction, normalised reference) per row."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if rows and len(rows) != len(references):
        raise ValueError(f"{len(rows)} rows for {len(references)} references")
    attributes = [attribute_of(row) for row in rows] if rows else [""] * len(references)
    return [(a, normalize_answer(p), normalize_answer(r)) for a, p, r in zip(attributes, predictions, references)]


def accuracy_for(attribute: str) -> Callable[..., float]:
    """Accuracy over the rows whose ``meta['attribute']`` is ``attribute``."""

    def compute(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
        hits = [p == r for a, p, r in _triples(predictions, references, rows) if a == attribute]
        return sum(hits) / len(hits) if hits else 0.0

    compute.__name__ = f"{attribute}_accuracy"
    compute.__doc__ = f"accuracy over the rows asking the {attribute!r} attribute"
    return compute


def per_attribute_accuracy(predictions: Sequence[str], references: Sequence[str],
                           rows: Sequence[Any] = ()) -> dict[str, float]:
    totals: Counter = Counter()
    hits: Counter = Counter()
    for a, p, r in _triples(predictions, references, rows):
        totals[a] += 1
        hits[a] += p == r
    return {a: hits[a] / totals[a] for a in totals}


def attribute_accuracy(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    """Mean over the attributes present of each attribute's accuracy."""
    per = per_attribute_accuracy(predictions, references, rows)
    return sum(per.values()) / len(per) if per else 0.0


def per_class_f1(predictions: Sequence[str], references: Sequence[str],
                 rows: Sequence[Any] = ()) -> dict[tuple[str, str], float]:
    triples = _triples(predictions, references, rows)
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    classes = {(a, r) for a, _, r in triples}
    for a, p, r in triples:
        if p == r:
            tp[(a, r)] += 1
        else:
            fn[(a, r)] += 1
            if (a, p) in classes:
                fp[(a, p)] += 1
    return {c: 2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in sorted(classes)}


def attribute_macro_f1(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    """Unweighted mean of F1 over the (attribute, value) classes among the references."""
    per = per_class_f1(predictions, references, rows)
    return sum(per.values()) / len(per) if per else 0.0
