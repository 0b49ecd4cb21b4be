"""``dsvl-adapt report``: many runs (a sweep) side by side, their Pareto fronts and the best run.

A run is a folder holding ``scorecard.json`` (a finished run) or ``failure.json`` (a failed
trial); folders are searched recursively, so a Hydra multirun folder with numbered trial folders
works as is. A folder with ``manifest.json`` but neither file is an incomplete run.

A run is *feasible* when every objective of its vertical was checked and met, and every
latency objective of its hardware targets (``latency_p90``, ``throughput``; estimated checks
count, and are said to be estimated) was checked and met: an unknown check is never a pass. When the run's config names one target
(``vertical.target``), only that target counts. The best run is the feasible one with the best
primary metric of the student (ties: lower p90 latency, then smaller size); when none is
feasible, the nearest miss (smallest relative shortfall over its failed objectives).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ..errors import DsvlAdaptError
from .scorecard import Scorecard, _fmt, load_scorecard

TARGET_OBJECTIVES = ("latency_p90", "throughput")
IGNORED_SETTINGS = ("run_dir", "hydra.")


# -- collecting ----------------------------------------------------------------------------------
@dataclass
class Run:
    """One run of a sweep, finished or not, and what the report works out about it."""

    path: Path
    card: Scorecard | None = None
    status: str = "ok"  # ok | failed | incomplete
    failure: str | None = None  # why a failed or incomplete run has no scorecard
    overrides: dict[str, str] | None = None  # from .hydra/overrides.yaml
    config: dict[str, Any] = field(default_factory=dict)  # flattened run config
    student_dir: Path | None = None
    label: str = ""
    index: int = 0
    feasible: bool = False
    reasons: list[str] = field(default_factory=list)  # why not feasible
    shortfall: float = math.inf  # relative miss of the failed objectives (0 when feasible)
    pareto_latency: bool = False
    pareto_size: bool = False
    comparable: bool = True

    @property
    def metric(self) -> float | None:
        return None if self.card is None else self.card.accuracy.get("student")

    @property
    def general(self) -> float | None:
        """The student's accuracy on the core general set (forgetting shows here), when the run scored it."""
        return None if self.card is None else self.card.general.get("student")

    @property
    def p90_ms(self) -> float | None:
        lat = self.card and self.card.latency.get("student")
        return lat.p90_ms if lat else None

    @property
    def p90_estimated(self) -> bool:
        lat = self.card and self.card.latency.get("student")
        return bool(lat) and not lat.measured  # type: ignore[union-attr]

    @property
    def size_bytes(self) -> int | None:
        size = self.card and self.card.size.get("student")
        return size.bytes if size else None

    def setting(self, key: str) -> str:
        if self.overrides is not None:
            return self.overrides[key] if key in self.overrides else self.config.get(key, "(default)")
        return self.config.get(key, "—")

    def as_dict(self, varying: Sequence[str] = ()) -> dict[str, Any]:
        card = self.card
        return {
            "index": self.index, "label": self.label, "path": str(self.path), "status": self.status,
            "failure": self.failure, "varying": {k: self.setting(k) for k in varying},
            "overrides": self.overrides,
            "vertical": card and card.vertical, "metric": card and card.metric, "value": self.metric,
            "retention": card and card.retention, "verdict": card and card.verdict, "general": self.general,
            "p90_ms": self.p90_ms, "p90_estimated": self.p90_estimated, "size_bytes": self.size_bytes,
            "targets_fit": None if card is None else {t.name: t.fits for t in card.targets},
            "feasible": self.feasible, "reasons": self.reasons, "pareto_latency": self.pareto_latency,
            "pareto_size": self.pareto_size, "student_dir": self.student_dir and str(self.student_dir),
        }


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _run_dirs(root: Path) -> Iterable[Path]:
    names = {p.name for p in root.iterdir()} if root.is_dir() else set()
    if names & {"scorecard.json", "failure.json", "manifest.json"}:
        yield root
        return
    for child in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key):
        yield from _run_dirs(child)


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value if isinstance(value, str) else json.dumps(value)}


def _read_overrides(run_dir: Path) -> dict[str, str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    text = path.read_text()
    try:
        import yaml

        items = yaml.safe_load(text)
    except ImportError:
        items = None
    except yaml.YAMLError:
        items = None
    if not isinstance(items, list):  # no PyYAML, or a damaged file: read the plain "- key=value" lines
        items = [line[2:].strip() for line in text.splitlines() if line.startswith("- ")]
    overrides: dict[str, str] = {}
    for item in items:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not key.startswith(IGNORED_SETTINGS):
            overrides[key] = value
    return overrides


def _student_dir(run_dir: Path, stages: Sequence[str]) -> Path | None:
    """Where the last stage that produced the ``student`` artifact put it."""
    from ..engine import read_stage_artifacts

    records = [run_dir / "stages" / s / "stage.json" for s in stages]
    if not records:
        records = sorted((run_dir / "stages").glob("*/stage.json"), key=lambda p: p.stat().st_mtime)
    found = None
    for record in records:
        if not record.is_file():
            continue
        try:
            value = read_stage_artifacts(record.parent).get("student")
        except (OSError, ValueError, KeyError):
            continue
        if value:
            found = value
    return found if found is not None and found.is_dir() else None


def _read_run(run_dir: Path) -> Run:
    run = Run(path=run_dir, overrides=_read_overrides(run_dir))
    card_path, failure_path = run_dir / "scorecard.json", run_dir / "failure.json"
    use_card = card_path.is_file() and (not failure_path.is_file() or
                                        card_path.stat().st_mtime >= failure_path.stat().st_mtime)
    config: dict[str, Any] = {}
    if use_card:
        try:
            run.card = load_scorecard(card_path)
            config = run.card.provenance.get("config") or {}
        except (OSError, ValueError) as exc:  # bad JSON or fields (pydantic's error is a ValueError)
            first = str(exc).splitlines()[0] if str(exc) else ""
            run.status, run.failure = "failed", f"unreadable scorecard.json: {type(exc).__name__}: {first}"
    elif failure_path.is_file():
        run.status = "failed"
        try:
            failure = json.loads(failure_path.read_text())
            run.failure = f"{failure.get('type', 'error')}: {failure.get('error', '')}".strip()
        except (OSError, ValueError) as exc:
            run.failure = f"unreadable failure.json: {exc}"
    else:
        run.status, run.failure = "incomplete", "no scorecard.json: the run has not finished (or has no score stage)"
    if not config and (run_dir / "manifest.json").is_file():
        try:
            config = json.loads((run_dir / "manifest.json").read_text()).get("config") or {}
        except (OSError, ValueError):
            config = {}
    run.config = {k: v for k, v in _flatten(config).items() if not k.startswith(IGNORED_SETTINGS)}
    stages = (config.get("pipeline") or {}).get("stages") or [] if isinstance(config, dict) else []
    run.student_dir = _student_dir(run_dir, stages)
    return run


def collect_runs(dirs: Sequence[str | Path]) -> list[Run]:
    """Every run (finished, failed, incomplete) under ``dirs``, in natural order, labelled and numbered."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for directory in map(Path, dirs):
        if not directory.exists():
            raise DsvlAdaptError(f"{directory}: no such folder (give run folders or a multirun folder)")
        for run_dir in _run_dirs(directory if directory.is_dir() else directory.parent):
            if run_dir.resolve() not in seen:
                seen.add(run_dir.resolve())
                runs.append(_read_run(run_dir))
    roots = [p.resolve() for p in map(Path, dirs)]
    common = Path(os.path.commonpath(roots)) if roots else Path.cwd()
    for index, run in enumerate(runs, 1):
        run.index = index
        relative = os.path.relpath(run.path.resolve(), common)
        run.label = run.path.name if relative == "." else relative
    return runs


def collect_scorecards(dirs: Sequence[str | Path]) -> list[tuple[Path, Scorecard]]:
    """``(run folder, scorecard)`` of every finished run under ``dirs`` (see :func:`collect_runs` for the rest)."""
    return [(run.path, run.card) for run in collect_runs(dirs) if run.card is not None]


# -- analysis ------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the non-dominated points, by increasing cost.

    Each point is ``(metric, cost)``: the metric is maximised, the cost (p90 latency, size)
    minimised. A point is dominated when another is at least as good in both and better in
    one; equal points are both on the front. Points with a missing or NaN figure are left out.
    """
    valid = [i for i, (m, c) in enumerate(points) if m is not None and c is not None
             and not math.isnan(m) and not math.isnan(c)]
    front = []
    for i in valid:
        mi, ci = points[i]
        dominated = any(points[j][0] >= mi and points[j][1] <= ci and (points[j][0] > mi or points[j][1] < ci)
                        for j in valid if j != i)  # type: ignore[operator]
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))  # type: ignore[operator]


def _objective_miss(name: str, value: float | None, limit: float, lower_is_better: bool) -> float:
    if value is None:
        return 1.0
    scale = abs(limit) or 1.0
    return max(0.0, (value - limit) / scale if lower_is_better else (limit - value) / scale)


def assess(run: Run) -> None:
    """Work out whether ``run`` is feasible, and if not, why and by how much it misses."""
    card = run.card
    run.reasons, run.shortfall = [], 0.0
    if card is None:
        run.feasible, run.shortfall = False, math.inf
        run.reasons = [run.failure or run.status]
        return
    for objective in card.objectives:
        if objective.ok is None:
            run.reasons.append(f"{objective.name}: unknown ({objective.note or 'not checked'})")
            run.shortfall += 1.0
        elif not objective.ok:
            run.reasons.append(f"{objective.name}: {_fmt(objective.value)} (limit {_fmt(objective.limit)})")
            run.shortfall += _objective_miss(objective.name, objective.value, objective.limit,
                                             not objective.higher_is_better)
    if card.verdict is False and not any(not o.ok for o in card.objectives):
        run.reasons.append("objectives not met")
        run.shortfall += 1.0
    chosen = (card.provenance.get("config") or {}).get("vertical", {}) if isinstance(
        card.provenance.get("config"), dict) else {}
    only = chosen.get("target") if isinstance(chosen, dict) else None
    for target in card.targets:
        if only and target.name != only:
            continue
        for check in target.checks:
            if check.name in TARGET_OBJECTIVES and check.ok is None:
                run.reasons.append(f"{target.name} {check.name}: unknown ({check.note or 'not checked'})")
                run.shortfall += 1.0
            elif check.name in TARGET_OBJECTIVES and check.ok is False:
                unit = f" {check.unit}" if check.unit else ""
                run.reasons.append(f"{target.name} {check.name}: {_fmt(check.value)}{unit} (limit "
                                   f"{_fmt(check.limit)}{unit}){' estimated' if check.estimated else ''}")
                value = check.value if isinstance(check.value, (int, float)) else None
                limit = check.limit if isinstance(check.limit, (int, float)) else 0.0
                run.shortfall += _objective_miss(check.name, value, float(limit), check.name == "latency_p90")
    if run.metric is None:
        run.reasons.append("no student accuracy in the scorecard")
        run.shortfall = math.inf
    run.feasible = not run.reasons


def _signed(run: Run) -> float | None:
    if run.metric is None or run.card is None:
        return None
    return run.metric if run.card.higher_is_better else -run.metric


def choose_best(runs: Sequence[Run]) -> tuple[Run | None, bool]:
    """The best feasible run, or (when none is feasible) the nearest miss; and whether it is feasible."""
    candidates = [r for r in runs if r.card is not None and r.comparable and r.metric is not None]

    def rank(run: Run) -> tuple[float, float, float]:
        return (-(_signed(run) or 0.0), run.p90_ms if run.p90_ms is not None else math.inf,
                run.size_bytes if run.size_bytes is not None else math.inf)

    feasible = [r for r in candidates if r.feasible]
    if feasible:
        return min(feasible, key=rank), True
    if candidates:
        return min(candidates, key=lambda r: (r.shortfall, *rank(r))), False
    return None, False


def varying_settings(runs: Sequence[Run]) -> list[str]:
    """The override keys (or, without any overrides.yaml, config keys) whose values differ between runs."""
    with_overrides = [r for r in runs if r.overrides is not None]
    keys: list[str] = []
    if with_overrides:
        for run in with_overrides:
            keys += [k for k in run.overrides or {} if k not in keys]
    else:
        for run in runs:
            keys += [k for k in run.config if k not in keys]
    if len(runs) == 1:
        return keys if with_overrides else []
    return [k for k in keys if len({r.setting(k) for r in runs}) > 1]


# -- the report ----------------------------------------------------------------------------------
@dataclass
class Report:
    runs: list[Run]
    varying: list[str]
    best: Run | None
    best_feasible: bool
    path: Path | None = None
    vertical: str | None = None
    metric: str | None = None
    higher_is_better: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def size_unit(self) -> tuple[float, str]:
        from .plots import byte_unit

        return byte_unit(max((r.size_bytes for r in self.runs if r.size_bytes is not None), default=None))

    def size_text(self, n: int | None) -> str:
        return _fmt(None if n is None else n / self.size_unit[0], 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "report": self.path and str(self.path), "vertical": self.vertical, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "varying": self.varying,
            "best": self.best and self.best.as_dict(self.varying), "best_feasible": self.best_feasible,
            "counts": dict(Counter(r.status for r in self.runs)) | {"feasible": sum(r.feasible for r in self.runs)},
            "runs": [r.as_dict(self.varying) for r in self.runs], "warnings": self.warnings,
            "lineage": self.lineage(),
        }

    def lineage(self) -> list[dict[str, Any]]:
        """Parent -> child edges of the update runs reported (docs/continual.md)."""
        from .lineage import lineage_edges

        return lineage_edges([(str(r.path), r.card) for r in self.runs])


def build_report(dirs: Sequence[str | Path]) -> Report:
    """Collect and analyse; nothing is written."""
    runs = collect_runs(dirs)
    if not runs:
        raise DsvlAdaptError(f"no runs under {', '.join(map(str, dirs))} (no scorecard.json or failure.json found)")
    warnings = []
    groups = Counter((r.card.vertical, r.card.metric) for r in runs if r.card is not None)
    vertical = metric = None
    higher = True
    if groups:
        (vertical, metric), _ = groups.most_common(1)[0]
        higher = next(r.card.higher_is_better for r in runs if r.card and r.card.metric == metric)
        if len(groups) > 1:
            warnings.append(f"runs of {len(groups)} verticals/metrics; only {vertical}/{metric} runs are compared")
    for run in runs:
        assess(run)
        if run.card is not None and (run.card.vertical, run.card.metric) != (vertical, metric):
            run.comparable = False
            run.reasons.append(f"not comparable: {run.card.vertical}/{run.card.metric}")
            run.feasible = False
    comparable = [r for r in runs if r.card is not None and r.comparable]
    for attribute, cost in (("pareto_latency", lambda r: r.p90_ms), ("pareto_size", lambda r: r.size_bytes)):
        front = pareto_front([(_signed(r), cost(r)) for r in comparable])
        for i in front:
            setattr(comparable[i], attribute, True)
    if any(r.p90_estimated for r in comparable):
        warnings.append("some student latencies are estimated, not measured (marked 'est.')")
    best, best_feasible = choose_best(runs)
    return Report(runs=runs, varying=varying_settings(runs), best=best, best_feasible=best_feasible,
                  vertical=vertical, metric=metric, higher_is_better=higher, warnings=warnings)


def _href(target: Path, start: Path) -> str:
    try:
        return escape(Path(os.path.relpath(target.resolve(), start.resolve())).as_posix(), quote=True)
    except ValueError:  # another drive
        return escape(target.resolve().as_uri(), quote=True)


def _run_page(run: Run) -> Path:
    for name in ("scorecard.html", "scorecard.md", "failure.json"):
        if (run.path / name).is_file():
            return run.path / name
    return run.path


def _pareto_pngs(report: Report) -> dict[str, bytes]:
    from .plots import ParetoPoint, pareto_plot

    runs = [r for r in report.runs if r.card is not None and r.comparable and r.metric is not None]
    metric = f"student {report.metric} ({'higher' if report.higher_is_better else 'lower'} is better)"
    pngs = {}
    for name, attribute, cost, xlabel in (
        ("latency", "pareto_latency", lambda r: r.p90_ms, "student p90 latency (ms)"),
        ("size", "pareto_size", lambda r: None if r.size_bytes is None else r.size_bytes / report.size_unit[0],
         f"student size on disk ({report.size_unit[1]})"),
    ):
        points = [ParetoPoint(label=f"#{r.index}", x=cost(r), y=r.metric, feasible=r.feasible,  # type: ignore[arg-type]
                              on_front=getattr(r, attribute), best=r is report.best)
                  for r in runs if cost(r) is not None]
        png = pareto_plot(points, xlabel=xlabel, ylabel=metric,
                          title=f"{report.vertical}: {report.metric} vs {xlabel.split(' (')[0]}")
        if png is not None:
            pngs[name] = png
    return pngs


def render_report_html(report: Report, out_dir: Path) -> str:
    from .html import CSS

    e = lambda v: escape(str(v), quote=True)
    feasible = sum(r.feasible for r in report.runs)
    failed = sum(r.status != "ok" for r in report.runs)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Sweep report — {e(report.vertical or 'runs')}</title><style>{CSS}</style></head><body><main>",
             f"<h1>Sweep report — {e(report.vertical or 'runs')}</h1>",
             (f'<p class="sub">{len(report.runs)} runs: {feasible} feasible, {failed} failed or incomplete; '
              f"primary metric {e(report.metric)} of the student</p>")]
    best = report.best
    if best is not None:
        cls, title = (("ok", "best feasible run") if report.best_feasible
                      else ("bad", "no run is feasible — nearest miss"))
        links = [f'run <a href="{_href(_run_page(best), out_dir)}">{e(best.label)}</a>']
        if best.student_dir is not None:
            links.append(f'student model: <a href="{_href(best.student_dir, out_dir)}">{e(best.student_dir)}</a>')
        settings = ", ".join(f"{e(k)}={e(best.setting(k))}" for k in report.varying)
        figures = (f"{e(report.metric)} {e(_fmt(best.metric))}, p90 {e(_fmt(best.p90_ms, 1))} ms, "
                   f"{e(report.size_text(best.size_bytes))} {report.size_unit[1]}")
        why = "" if report.best_feasible else f'<br><span class="how">misses: {e("; ".join(best.reasons))}</span>'
        parts.append(f'<section id="best"><p><span class="verdict {cls}">{title}: #{best.index}</span></p>'
                     f"<p>{' — '.join(links)}<br>{figures}{'<br>' + settings if settings else ''}{why}</p></section>")
    else:
        parts.append('<section id="best"><p><span class="verdict bad">no finished run to compare</span></p></section>')
    header = ["#", "run", "status", *map(e, report.varying), e(report.metric or "metric"), "retention",
              "general", "student p90 ms", f"student {report.size_unit[1]}", "targets fit", "feasible", "Pareto (latency / size)",
              "why / failure"]
    rows = []
    for run in report.runs:
        card = run.card
        fits = "—" if card is None or not card.targets else \
            f"{sum(t.fits for t in card.targets)} / {len(card.targets)}"
        p90 = _fmt(run.p90_ms, 1) + (" est." if run.p90_estimated else "")
        front = " / ".join("yes" if flag else "—" for flag in (run.pareto_latency, run.pareto_size))
        star = " ★" if run is best else ""
        rows.append("<tr>" + "".join([
            f'<td class="nowrap">{run.index}{star}</td>',
            f'<td><a href="{_href(_run_page(run), out_dir)}">{e(run.label)}</a></td>',
            f'<td class="{"yes" if run.status == "ok" else "no"}">{e(run.status)}</td>',
            *(f"<td>{e(run.setting(k))}</td>" for k in report.varying),
            f'<td class="num">{e(_fmt(run.metric))}</td>', f'<td class="num">{e(_fmt(card and card.retention))}</td>',
            f'<td class="num">{e(_fmt(run.general))}</td>', f'<td class="num">{e(p90)}</td>',
            f'<td class="num">{e(report.size_text(run.size_bytes))}</td>',
            f"<td>{e(fits)}</td>",
            f'<td class="{"yes" if run.feasible else "no"}">{"yes" if run.feasible else "no"}</td>',
            f"<td>{front}</td>", f'<td class="how">{e("; ".join(run.reasons) if not run.feasible else "")}</td>',
        ]) + "</tr>")
    parts.append('<section id="runs"><h2>Runs</h2><div class="scroll"><table><thead><tr>' +
                 "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>" + "".join(rows) +
                 "</tbody></table></div>"
                 '<p class="how">Feasible: meets the vertical\'s objectives and every checked latency/throughput '
                 "objective of its hardware targets. ★ marks the chosen run.</p></section>")
    pngs = _pareto_pngs(report)
    if pngs:
        parts.append('<section id="pareto"><h2>Pareto fronts</h2><div class="figures">')
        for name, caption in (("latency", "primary metric vs student p90 latency"),
                              ("size", "primary metric vs student size on disk")):
            if name in pngs:
                data = base64.b64encode(pngs[name]).decode("ascii")
                parts.append(f'<figure><img alt="Pareto front: {caption}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{caption}; filled: feasible, hollow: infeasible, line: Pareto front"
                             "</figcaption></figure>")
        parts.append("</div></section>")
    edges = report.lineage()
    if edges:
        from .lineage import edge_text
        from .plots import lineage_plot

        png = lineage_plot(edges)
        figure = ("" if png is None else
                  '<figure><img alt="old and new accuracy before and after each update" '
                  f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"><figcaption>each update '
                  "against its parent, on the parent's test split and on the increment's test rows</figcaption>"
                  "</figure>")
        parts.append('<section id="lineage"><h2>Lineage (parent → child)</h2><ul>' +
                     "".join(f"<li>{e(edge_text(edge))}</li>" for edge in edges) + f"</ul>{figure}</section>")
    if report.warnings:
        parts.append('<section id="warnings"><h2>Warnings</h2><ul>' +
                     "".join(f"<li>{e(w)}</li>" for w in report.warnings) + "</ul></section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_report(dirs: Sequence[str | Path], out_dir: str | Path) -> Report:
    """Collect the runs under ``dirs`` and write ``report.html`` in ``out_dir``."""
    report = build_report(dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.path = out_dir / "report.html"
    report.path.write_text(render_report_html(report, out_dir), encoding="utf-8")
    return report


# -- command line ----------------------------------------------------------------------------------
def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """``finetune.lora.r`` -> ``r`` where the last part is unambiguous among ``keys``."""
    last = Counter(k.rsplit(".", 1)[-1] for k in keys)
    return {k: k.rsplit(".", 1)[-1] if last[k.rsplit(".", 1)[-1]] == 1 else k for k in keys}


def _print_table(report: Report) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report.vertical or 'runs'}: student {report.metric or 'metric'} across "
                        f"{len(report.runs)} runs", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("run", overflow="fold")
    short = _short_keys(report.varying)
    if report.varying:
        table.add_column("overrides that differ", overflow="fold", min_width=14)
    for name in (report.metric or "metric", "ret.", "general", "p90 ms", report.size_unit[1]):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("feasible", no_wrap=True)
    table.add_column("front", no_wrap=True)
    for run in report.runs:
        mark = "★" if run is report.best else ""
        status = "yes" if run.feasible else ("no" if run.status == "ok" else run.status)
        table.add_row(
            f"{run.index}{mark}", run.label,
            *([" ".join(f"{short[k]}={run.setting(k)}" for k in report.varying)] if report.varying else []),
            _fmt(run.metric),
            _fmt(run.card and run.card.retention, 2), _fmt(run.general, 2),
            _fmt(run.p90_ms, 1) + (" est." if run.p90_estimated else ""),
            report.size_text(run.size_bytes),
            f"[green]{status}[/]" if run.feasible else f"[red]{status}[/]",
            f"{'L' if run.pareto_latency else '-'}/{'S' if run.pareto_size else '-'}", style="bold" if mark else None,
        )
    console.print(table)
    console.print("front: on the Pareto front of the primary metric vs p90 latency (L) / size (S); ★ the chosen run",
                  style="dim", soft_wrap=True)
    for run in report.runs:
        if not run.feasible:
            console.print(f"  #{run.index} ({run.label}): {'; '.join(run.reasons)}", soft_wrap=True, highlight=False)
    best = report.best
    if best is None:
        console.print("[red]no finished run to compare[/]", soft_wrap=True)
    else:
        what = "best feasible run" if report.best_feasible else "no run is feasible; nearest miss"
        console.print(f"{what}: #{best.index} ({best.label}), {report.metric} {_fmt(best.metric)}"
                      + (f", student model: {best.student_dir}" if best.student_dir else ""), soft_wrap=True)
    from .lineage import edge_text

    for edge in report.lineage():
        console.print(f"lineage: {edge_text(edge)}", soft_wrap=True, highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    console.print(f"report: {report.path}", soft_wrap=True)


def report_main(dirs: list[str], as_json: bool = False, out: str | None = None) -> int:
    """``dsvl-adapt report DIR... [--json] [--out DIR]``.

    Writes ``report.html`` in ``out`` (default: the folder given, or the current folder for
    several) and prints a table, or JSON with ``as_json``. Exit status: 0 when a run is feasible,
    3 when none is (as ``run --fail-on-objectives``), 2 when there is nothing to report.
    """
    if not dirs:
        print("error: give one or more run folders or multirun folders", file=sys.stderr)
        return 2
    out_dir = Path(out) if out else (Path(dirs[0]) if len(dirs) == 1 and Path(dirs[0]).is_dir() else Path.cwd())
    try:
        report = write_report(dirs, out_dir)
    except DsvlAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _print_table(report)
    return 0 if report.best_feasible else 3
