"""Report metrics: finding-level precision, recall and F1, and ROUGE-L of the report text.

Finding-level scores (the clinical-efficacy scores of report generation, as in CheXpert-labeller
based evaluation): each report, generated or reference, is parsed into a set of labels, a label
being a (finding, side) pair from the generator's vocabulary (``FINDING_SIDE`` below); a report
that states no abnormality gets the single label ``("no finding", "")`` so that normal studies
count. Counts are pooled over the test split (micro-averaging)::

    TP = sum_i |G_i ∩ R_i|,  FP = sum_i |G_i - R_i|,  FN = sum_i |R_i - G_i|
    precision = TP / (TP + FP),  recall = TP / (TP + FN),  F1 = 2·TP / (2·TP + FP + FN)

with G_i the labels of generated report i and R_i those of its reference. A generated report
in which no label can be read (empty, garbled) has G_i = {} (all its reference labels are
misses). Each ratio is 0.0 when its denominator is 0.

ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", sec. 3.1,
sentence level): with X the reference of m tokens, Y the generated report of n tokens and
LCS(X, Y) the length of their longest common subsequence::

    R_lcs = LCS / m,  P_lcs = LCS / n,  F_lcs = (1 + β²) R_lcs P_lcs / (R_lcs + β² P_lcs)

with β = 1 (the harmonic mean; ROUGE-1.5.5's default α = 0.5 and Google's ``rouge-score``).
Tokens are the lower-cased alphanumeric runs of the text (punctuation is a separator), no
stemming. The metric is the mean F_lcs over reports.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from dsvl_adapt.metrics import normalize_answer

# The generator's report vocabulary (dsvl_adapt_medical.generator: ABNORMAL, SIDES, NORMAL_ANSWER), with the
# plural and adjective forms a model or a radiologist may write. Kept here so metrics import without numpy;
# tests/verticals/test_medical.py checks it against the generator.
FINDING_TERMS = {
    "nodule": "nodule", "nodules": "nodule", "nodular": "nodule",
    "opacity": "opacity", "opacities": "opacity", "opacification": "opacity",
    "effusion": "effusion", "effusions": "effusion",
}
SIDE_TERMS = {"right": ("right",), "left": ("left",), "bilateral": ("right", "left"), "both": ("right", "left")}
NEGATIONS = {"no", "not", "without", "negative", "free"}
NORMAL_PHRASES = ("no acute finding", "no acute findings", "no finding", "no findings", "no abnormality", "normal",
                  "unremarkable", "no acute abnormality")
NO_FINDING = ("no finding", "")
_TOKEN = re.compile(r"[a-z0-9]+")
_CLAUSE = re.compile(r"[.;,:!?\n]+|\b(?:and|but|with|while|also)\b")


# --------------------------------------------------------------------------- ROUGE-L
def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize_answer(text))


def lcs_length(x: Sequence[str], y: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(m·n) time, O(n) memory)."""
    if not x or not y:
        return 0
    previous = [0] * (len(y) + 1)
    for xi in x:
        current = [0]
        for j, yj in enumerate(y, start=1):
            current.append(previous[j - 1] + 1 if xi == yj else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f(reference: str, generated: str, beta: float = 1.0) -> float:
    """Sentence-level ROUGE-L F-measure of one generated text against one reference."""
    x, y = tokens(reference), tokens(generated)
    lcs = lcs_length(x, y)
    if lcs == 0:
        return 0.0
    recall, precision = lcs / len(x), lcs / len(y)
    return (1 + beta ** 2) * recall * precision / (recall + beta ** 2 * precision)


def rouge_l(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    """Mean ROUGE-L F-measure (β = 1) of the generated reports."""
    _check(predictions, references)
    if not references:
        return 0.0
    return sum(rouge_l_f(r, p) for p, r in zip(predictions, references)) / len(references)


# --------------------------------------------------------------------------- findings
def parse_findings(report: str) -> frozenset[tuple[str, str]]:
    """The (finding, side) labels a report states.

    The report is cut into clauses (at punctuation and at 'and', 'but', 'with' …). In each
    clause every finding term is a label, with the side(s) named in that clause ('bilateral'
    gives both; no side gives side ''). A clause whose finding terms follow a negation ('no',
    'without' …) states nothing positive. A report with no positive label gets ``NO_FINDING``
    if it says so ('no acute finding', 'normal', or only negated findings); otherwise (empty or
    unreadable text) it has no label at all.
    """
    text = normalize_answer(report)
    labels: set[tuple[str, str]] = set()
    negated_any = False
    for clause in _CLAUSE.split(text):
        words = _TOKEN.findall(clause or "")
        found = [(i, FINDING_TERMS[w]) for i, w in enumerate(words) if w in FINDING_TERMS]
        if not found:
            continue
        sides = sorted({s for w in words if w in SIDE_TERMS for s in SIDE_TERMS[w]}) or [""]
        for index, finding in found:
            if any(w in NEGATIONS for w in words[:index]):
                negated_any = True
                continue
            labels.update((finding, side) for side in sides)
    if labels:
        return frozenset(labels)
    words = " ".join(_TOKEN.findall(text))
    if negated_any or any(re.search(rf"\b{phrase}\b", words) for phrase in NORMAL_PHRASES):
        return frozenset({NO_FINDING})
    return frozenset()


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def finding_counts(predictions: Sequence[str], references: Sequence[str]) -> tuple[int, int, int]:
    """Pooled (TP, FP, FN) of (finding, side) labels over the reports."""
    _check(predictions, references)
    tp = fp = fn = 0
    for p, r in zip(predictions, references):
        generated, reference = parse_findings(p), parse_findings(r)
        tp += len(generated & reference)
        fp += len(generated - reference)
        fn += len(reference - generated)
    return tp, fp, fn


def finding_precision(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    tp, fp, _ = finding_counts(predictions, references)
    return tp / (tp + fp) if tp + fp else 0.0


def finding_recall(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    tp, _, fn = finding_counts(predictions, references)
    return tp / (tp + fn) if tp + fn else 0.0


def finding_f1(predictions: Sequence[str], references: Sequence[str], rows: Sequence[Any] = ()) -> float:
    tp, fp, fn = finding_counts(predictions, references)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
