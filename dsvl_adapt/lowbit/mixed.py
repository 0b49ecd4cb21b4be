"""Mixed precision: choose int4, int8 or fp32 per linear layer to minimise bytes subject to a retention objective,
each candidate measured end to end through the deployed runtime.

The search (:func:`search_mixed_plan`) takes plain callables, so any backend can drive it:

* ``build(per_layer) -> artifact directory``: write an artifact with these layer precisions;
* ``evaluate(directory) -> metric``: the vertical's primary metric on the validation split through that artifact.

Layers are ordered by **sensitivity per byte saved** (:mod:`.sensitivity`: the int4 output error divided by the
layer's weight count - moving a layer from int8 to int4 saves half a byte per weight). Plan ``k`` puts the ``k``
cheapest-to-quantize layers in int4 and the rest in int8. Retention falls (close to) monotonically with ``k``, so:

1. all int4 (``k = n``) holds -> done, nothing smaller exists in this family;
2. else all int8 (``k = 0``) holds -> binary search for the largest ``k`` that holds (``log2 n`` evaluations);
3. else raise the most int8-sensitive layers (int8 error per weight, highest first) to fp32, binary search for
   the fewest fp32 layers that hold;
4. nothing holds (not even every layer at fp32) -> **not reachable at this size**: the plan with the highest
   retention measured is returned with ``reachable=False``.

Every evaluation is recorded (plan counts, bytes, metric, retention), so the scorecard can show what was tried.
Retention is the metric divided by ``reference`` (the teacher's metric on the same validation rows); the
monotonicity is an assumption, checked only at the evaluated points - the chosen plan itself was measured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sensitivity import LayerSensitivity

__all__ = ["Evaluation", "MixedResult", "search_mixed_plan"]


@dataclass
class Evaluation:
    label: str
    per_layer: dict[str, str]
    directory: Path
    bytes: int
    metric: float
    retention: float | None
    holds: bool

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "counts": dict(sorted(Counter(self.per_layer.values()).items())),
                "bytes": self.bytes, "metric": self.metric, "retention": self.retention, "holds": self.holds}


@dataclass
class MixedResult:
    chosen: Evaluation
    reachable: bool
    min_retention: float
    reference: float
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def message(self) -> str:
        r = self.chosen.retention
        shown = "unknown" if r is None else f"{r:.3f}"
        if self.reference <= 0:
            return (f"objective not reachable at this size: retention is unknown - the reference (teacher) metric "
                    f"on the validation split is {self.reference:g}, so no plan can be shown to keep "
                    f"{self.min_retention} of it; best plan found (the smallest): {self.chosen.label} "
                    f"({len(self.evaluations)} plans evaluated)")
        if self.reachable:
            return (f"mixed precision: {self.chosen.label} holds retention {shown} >= {self.min_retention} "
                    f"through the runtime ({len(self.evaluations)} plans evaluated)")
        return (f"objective not reachable at this size: no plan reached retention {self.min_retention} through the "
                f"runtime; best plan found: {self.chosen.label} at retention {shown} "
                f"({len(self.evaluations)} plans evaluated)")

    def as_dict(self) -> dict[str, Any]:
        return {"reachable": self.reachable, "message": self.message, "min_retention": self.min_retention,
                "reference_metric": self.reference, "chosen": self.chosen.as_dict(),
                "evaluations": [e.as_dict() for e in self.evaluations]}


def _order(layers: Sequence[LayerSensitivity], key: Callable[[LayerSensitivity], float]) -> list[str]:
    return [s.module for s in sorted(layers, key=key)]


def search_mixed_plan(layers: Sequence[LayerSensitivity], *, build: Callable[[dict[str, str]], Path],
                      evaluate: Callable[[Path], float], size: Callable[[Path], int], reference: float,
                      min_retention: float, max_evaluations: int = 10,
                      log: Callable[[str], None] = lambda _: None) -> MixedResult:
    """Search the smallest plan whose retention through the runtime is at least ``min_retention`` (see the module
    docstring). ``size(directory)`` gives an artifact's bytes."""
    if not layers:
        raise ValueError("mixed precision needs at least one linear layer to place")
    if max_evaluations < 2:
        raise ValueError(f"max_evaluations must be at least 2, got {max_evaluations}")
    names = [s.module for s in layers]
    int4_order = _order(layers, lambda s: s.int4_error / max(s.params, 1))
    fp32_order = _order(layers, lambda s: -s.int8_error / max(s.params, 1))
    n = len(names)
    evaluations: list[Evaluation] = []
    seen: dict[tuple, Evaluation] = {}

    def run(label: str, per_layer: dict[str, str]) -> Evaluation:
        key = tuple(sorted(per_layer.items()))
        if key in seen:
            return seen[key]
        directory = build(per_layer)
        metric = float(evaluate(directory))
        retention = metric / reference if reference > 0 else None
        holds = retention is not None and retention >= min_retention
        result = Evaluation(label, per_layer, directory, size(directory), metric, retention, holds)
        log(f"mixed precision: {label}: {result.bytes / 1e6:.2f} MB, metric {metric:.3f}, retention "
            f"{'unknown' if retention is None else f'{retention:.3f}'}{' (holds)' if holds else ''}")
        evaluations.append(result)
        seen[key] = result
        return result

    def int4_plan(k: int) -> dict[str, str]:
        chosen = set(int4_order[:k])
        return {name: "int4" if name in chosen else "int8" for name in names}

    def fp32_plan(m: int) -> dict[str, str]:
        chosen = set(fp32_order[:m])
        return {name: "fp32" if name in chosen else "int8" for name in names}

    def finish() -> MixedResult:
        passing = [e for e in evaluations if e.holds]
        if passing:
            return MixedResult(min(passing, key=lambda e: e.bytes), True, min_retention, reference, evaluations)
        fallback = max(evaluations, key=lambda e: (e.retention or 0.0, -e.bytes))
        return MixedResult(fallback, False, min_retention, reference, evaluations)

    if run(f"int4 {n}/{n}", int4_plan(n)).holds:
        return finish()
    if run(f"int8 {n}/{n}", int4_plan(0)).holds:
        low, high = 0, n  # plan(low) holds, plan(high) does not
        while high - low > 1 and len(evaluations) < max_evaluations:
            mid = (low + high) // 2
            if run(f"int4 {mid}/{n}, int8 {n - mid}", int4_plan(mid)).holds:
                low = mid
            else:
                high = mid
        return finish()
    low, high = 0, n  # plan(low) fails; plan(high) = all fp32, unknown yet
    if not run(f"fp32 {n}/{n}", fp32_plan(n)).holds:
        return finish()
    while high - low > 1 and len(evaluations) < max_evaluations:
        mid = (low + high) // 2
        if run(f"fp32 {mid}/{n}, int8 {n - mid}", fp32_plan(mid)).holds:
            high = mid
        else:
            low = mid
    return finish()
