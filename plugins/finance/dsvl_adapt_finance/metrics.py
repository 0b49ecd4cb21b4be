"""Document-QA metrics: ANLS and exact match, overall and per field.

ANLS — Average Normalized Levenshtein Similarity (Biten et al., "Scene Text Visual Question
Answering", ICCV 2019, eq. 1; the metric of ST-VQA and DocVQA)::

    ANLS = 1/N * sum_i max_j s(a_ij, o_i)
    s(a, o) = 1 - NL(a, o)   if NL(a, o) < tau
            = 0              if NL(a, o) >= tau,         tau = 0.5
    NL(a, o) = Levenshtein(a, o) / max(|a|, |o|)

over the N questions, ``a_ij`` the j-th accepted answer of question i and ``o_i`` the
prediction. Answers are compared after :func:`dsvl_adapt.metrics.normalize_answer`
(lower case, collapsed spaces, no trailing punctuation), as the official evaluation lower-cases
and strips them. Accepted answers are the row's answer plus any strings in ``meta["answers"]``.

Note: the paper keeps a similarity when NL < tau and zeroes it at NL >= tau; the
ST-VQA/DocVQA evaluation script zeroes only scores below 0.5 (so it keeps NL == 0.5, score
0.5). They differ only at exactly NL == 0.5; this module follows the paper.

Exact match is the share of predictions equal to an accepted answer after the same
normalisation. Per-field variants average over the rows asking that field, named by
``meta["field"]``, else ``meta["question_type"]`` (the generator's key); 0.0 when the test split
has no such row.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

from dsvl_adapt.metrics import normalize_answer

TAU = 0.5


@lru_cache(maxsize=1 << 16)
def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit-cost insertions, deletions and substitutions. Memoised: a bootstrap over test rows
    recomputes ANLS on every resample of the same (reference, prediction) pairs."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalized_levenshtein(a: str, b: str) -> float:
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def similarity(reference: str, prediction: str, tau: float = TAU) -> float:
    """s(a, o) of Biten et al. 2019 on normalised strings."""
    nl = normalized_levenshtein(normalize_answer(reference), normalize_answer(prediction))
    return 1.0 - nl if nl < tau else 0.0


FIELD_KEYS = ("field", "question_type")


def _meta(row: Any) -> dict:
    meta = row.get("meta") if isinstance(row, dict) else getattr(row, "meta", None)
    return meta or {}


def field_of(row: Any) -> str:
    """The field a row asks, from its meta ('' when it does not say)."""
    meta = _meta(row)
    return str(next((meta[k] for k in FIELD_KEYS if meta.get(k)), ""))


def _accepted(reference: str, row: Any) -> list[str]:
    extra = _meta(row).get("answers") if row is not None else None
    answers = [reference]
    if isinstance(extra, (list, tuple)):
        answers += [str(a) for a in extra if str(a).strip()]
    return answers


def _check(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any]) -> list[Any]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if rows and len(rows) != len(references):
        raise ValueError(f"{len(rows)} rows for {len(references)} references")
    return list(rows) if rows else [None] * len(references)


def _anls_scores(predictions, references, rows) -> list[float]:
    rows = _check(predictions, references, rows)
    return [max(similarity(a, p) for a in _accepted(r, row)) for p, r, row in zip(predictions, references, rows)]


def _em_scores(predictions, references, rows) -> list[float]:
    rows = _check(predictions, references, rows)
    return [float(any(normalize_answer(a) == normalize_answer(p) for a in _accepted(r, row)))
            for p, r, row in zip(predictions, references, rows)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def anls(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    """Average normalized Levenshtein similarity, tau = 0.5."""
    return _mean(_anls_scores(predictions, references, rows))


def em(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    """Share of predictions equal to an accepted answer (normalised)."""
    return _mean(_em_scores(predictions, references, rows))


def _per_field(scores: Callable, field: str) -> Callable[..., float]:
    def compute(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
        values = scores(predictions, references, rows)
        keep = [v for v, row in zip(values, _check(predictions, references, rows)) if field_of(row) == field]
        return _mean(keep)

    compute.__name__ = f"{scores.__name__.strip('_').replace('_scores', '')}_{field}"  # anls_<field>, em_<field>
    compute.__doc__ = f"{compute.__name__}: over the rows asking the {field!r} field"
    return compute


def anls_for(field: str) -> Callable[..., float]:
    return _per_field(_anls_scores, field)


def em_for(field: str) -> Callable[..., float]:
    return _per_field(_em_scores, field)
