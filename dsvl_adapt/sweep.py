"""Sweeps: what a trial of a Hydra multirun hands back to the sweeper.

The Hydra job returns the trial's objective values (``sweep.objectives`` in the config, by
default the student's primary metric and its p90 latency) and writes them, with the trial's
feasibility, to ``objectives.json`` in its folder. Feasibility is the report's
(:func:`dsvl_adapt.score.report.assess`): the vertical's objectives and the checked latency /
throughput objectives of its hardware target(s). Optuna's NSGA-II sampler reads it back through
:class:`TrialConstraints` (its ``constraints_func``): 0 for a feasible trial, else the relative
shortfall, so infeasible trials are dominated by feasible ones.

A failed trial (``failure.json``), or a value the scorecard lacks, gets the worst value of
each objective (:data:`WORST` in the direction of that objective). Samplers without constraints
can be given the same penalty for infeasible trials with ``sweep.penalize_infeasible: true``.

Nothing here imports Optuna.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

OBJECTIVES_FILE = "objectives.json"
DEFAULT_OBJECTIVES = ("metric", "p90_ms")
WORST = 1e9  # a failed trial's value: -WORST when maximised, +WORST when minimised (finite, for NSGA-II)

# the objectives a trial can report (sweep.objectives)
OBJECTIVES = {
    "metric": "the student's primary metric (accuracy.student)",
    "p90_ms": "the student's p90 latency in ms (latency.student.p90_ms)",
    "size_mib": "the student's size on disk in MiB (size.student.bytes / 2**20)",
    "retention": "student / teacher primary metric (retention)",
}


def objective_names(settings: Mapping[str, Any] | None) -> list[str]:
    """The objectives a trial reports, checked: ``sweep.objectives`` or the default."""
    names = list((settings or {}).get("objectives") or DEFAULT_OBJECTIVES)
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"sweep.objectives: unknown objective(s) {', '.join(map(repr, unknown))}; choose from: "
                          + "; ".join(f"{k} ({v})" for k, v in OBJECTIVES.items()))
    return names


def sweeper_directions(hydra_cfg: Any, count: int) -> list[str] | None:
    """The sweeper's ``direction`` (Optuna), as a list of 'maximize'/'minimize'; None without one."""
    sweeper = getattr(hydra_cfg, "sweeper", None)
    direction = sweeper.get("direction") if sweeper is not None and hasattr(sweeper, "get") else None
    if direction is None:
        return None
    values = [direction] if isinstance(direction, str) else list(direction)
    values = [str(getattr(v, "name", v)).lower() for v in values]
    if len(values) != count:
        raise ConfigError(f"hydra.sweeper.direction has {len(values)} direction(s) but sweep.objectives names "
                          f"{count}; give one direction per objective")
    bad = [v for v in values if v not in ("maximize", "minimize")]
    if bad:
        raise ConfigError(f"hydra.sweeper.direction: {bad[0]!r} is neither maximize nor minimize")
    return values


def _value(run: Any, name: str) -> float | None:
    if run.card is None:
        return None
    if name == "metric":
        return run.metric
    if name == "p90_ms":
        return run.p90_ms
    if name == "size_mib":
        return None if run.size_bytes is None else run.size_bytes / 2**20
    return run.card.retention


def _default_direction(run: Any, name: str) -> str:
    if name == "metric":
        return "minimize" if run.card is not None and not run.card.higher_is_better else "maximize"
    return "maximize" if name == "retention" else "minimize"


def trial_objectives(run_dir: Path, settings: Mapping[str, Any] | None, directions: Sequence[str] | None,
                     overrides: Sequence[str] = (), job_num: int | None = None) -> float | tuple[float, ...]:
    """Read the trial's scorecard (or failure), write ``objectives.json``, return the objective values.

    One objective: a float (as Optuna's single-objective sweeper wants); several: a tuple.
    """
    from .score.report import assess, collect_runs

    names = objective_names(settings)
    runs = collect_runs([run_dir])
    run = next((r for r in runs if r.path.resolve() == Path(run_dir).resolve()), None)
    if run is None:  # nothing was written: count it as failed
        from .score.report import Run

        run = Run(path=Path(run_dir), status="failed", failure="the trial wrote neither scorecard nor failure")
    assess(run)
    directions = list(directions) if directions else [_default_direction(run, n) for n in names]
    penalize = bool((settings or {}).get("penalize_infeasible", False))
    values: list[float] = []
    for name, direction in zip(names, directions):
        value = _value(run, name)
        if value is None or not math.isfinite(value) or (penalize and not run.feasible):
            value = -WORST if direction == "maximize" else WORST
        values.append(float(value))
    violation = 0.0 if run.feasible else float(min(run.shortfall, WORST))
    record = {
        "objectives": names, "directions": directions, "values": values, "feasible": run.feasible,
        "constraints": [violation], "reasons": run.reasons, "status": run.status, "job_num": job_num,
        "overrides": list(overrides),
    }
    (Path(run_dir) / OBJECTIVES_FILE).write_text(json.dumps(record, indent=2))
    return values[0] if len(values) == 1 else tuple(values)


class TrialConstraints:
    """``constraints_func`` for Optuna's NSGA-II sampler under the Hydra Optuna sweeper.

    Called in the sweeper's process after each trial with Optuna's frozen trial; it finds that
    trial's ``objectives.json`` under the sweep folder (the one whose overrides hold the trial's
    parameters, newest first, each used once) and returns its constraint: ``[0.0]`` when the
    trial is feasible, ``[shortfall]`` (> 0) when not, ``[WORST]`` when the trial left nothing.
    Configure it as::

        hydra.sweeper.sampler.constraints_func:
          _target_: dsvl_adapt.sweep.TrialConstraints
          sweep_dir: ${hydra.sweep.dir}
    """

    def __init__(self, sweep_dir: str | Path) -> None:
        self.sweep_dir = Path(sweep_dir)
        self._used: set[Path] = set()

    def __call__(self, trial: Any) -> list[float]:
        wanted = {f"{name}={value}" for name, value in dict(trial.params).items()}
        found: list[tuple[float, Path, dict[str, Any]]] = []
        for path in self.sweep_dir.rglob(OBJECTIVES_FILE):
            if path in self._used:
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if wanted <= set(record.get("overrides") or ()):
                found.append((path.stat().st_mtime, path, record))
        if not found:
            return [WORST]
        _, path, record = max(found, key=lambda item: item[0])
        self._used.add(path)
        return [float(c) for c in record.get("constraints") or [WORST]]
