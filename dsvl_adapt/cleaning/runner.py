"""Run the registered data checks, level 1 then level 2, and turn their findings into a report and a
cleaned view (what the ``clean`` stage and ``dsvl-adapt clean`` write)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.loading import Split
from ..schemas import DataCheck
from .data import CleaningData
from .findings import CheckSkipped, Finding
from .view import CleanedView, Decision, apply_changes

REPORT_FILE = "clean_report.json"
REVIEW_FILE = "review.html"


@dataclass
class CleaningReport:
    """What cleaning found and did. ``usable_share`` is the share of the rows in that end up usable: kept or
    fixed, and not left flagged without a decision (the seed's 62% -> 89% measure); ``clean_share`` the share
    no check had anything to say about."""

    vertical: str
    rows_in: dict[str, int]
    findings: list[Finding]
    actions: dict[str, dict[str, str]]  # split -> id -> drop | fix | flag | keep (rows with a finding or decision)
    checks: dict[str, dict[str, Any]]
    decided: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total_in(self) -> int:
        return sum(self.rows_in.values())

    def count(self, action: str) -> int:
        return sum(1 for rows in self.actions.values() for a in rows.values() if a == action)

    def flagged_by_reason(self) -> dict[str, int]:
        rows = {(f.split, f.row_id, f.reason) for f in self.findings}
        return dict(sorted(Counter(reason for _, _, reason in rows).items()))

    def flagged_by_level(self) -> dict[str, int]:
        rows = {(f.split, f.row_id, f.level) for f in self.findings}
        return {str(level): n for level, n in sorted(Counter(level for _, _, level in rows).items())}

    def figures(self) -> dict[str, Any]:
        """The figures the stage records and the scorecard shows under ``data``."""
        total = self.total_in
        flagged_rows = {(f.split, f.row_id) for f in self.findings}
        usable = total - self.count("drop") - self.count("flag")
        return {
            "rows_in": total,
            "rows_in_by_split": self.rows_in,
            "flagged": self.flagged_by_reason(),
            "flagged_by_level": self.flagged_by_level(),
            "rows_flagged": len(flagged_rows),
            "dropped": self.count("drop"),
            "fixed": self.count("fix"),
            "open": self.count("flag"),
            "decided": self.decided,
            "clean_share": round((total - len(flagged_rows)) / total, 4) if total else None,
            "usable_share": round(usable / total, 4) if total else None,
            "checks": {name: record["status"] for name, record in self.checks.items()},
        }

    def as_dict(self) -> dict[str, Any]:
        return {"vertical": self.vertical, "figures": self.figures(), "seconds": round(self.seconds, 2),
                "checks": self.checks, "notes": self.notes, "actions": self.actions,
                "findings": [f.as_dict() for f in sorted(self.findings, key=lambda f: -f.score)]}

    def view(self, splits: dict[str, Split]) -> CleanedView:
        """Rows dropped and answers fixed, per split; every other row of ``splits`` is kept."""
        suggestions = _suggestions(self.findings)
        dropped: dict[str, dict[str, list[str]]] = {}
        fixed: dict[str, dict[str, str]] = {}
        reasons: dict[tuple[str, str], list[str]] = {}
        for f in self.findings:
            reasons.setdefault((f.split, f.row_id), []).append(f.reason)
        for name, rows in self.actions.items():
            for row_id, action in rows.items():
                if action == "drop":
                    dropped.setdefault(name, {})[row_id] = sorted(set(reasons.get((name, row_id), ["decision"])))
                elif action == "fix" and (name, row_id) in suggestions:
                    fixed.setdefault(name, {})[row_id] = suggestions[(name, row_id)]
        kept = {name: [r.id for r in split.rows if r.id not in dropped.get(name, {})] for name, split in splits.items()}
        return CleanedView(dropped, fixed, kept)


def applicable_checks(checks: Sequence[DataCheck], vertical: str, skip: Sequence[str] = ()) -> list[DataCheck]:
    """The checks that apply to ``vertical`` and are not skipped, level 1 first (registration order kept)."""
    chosen = [c for c in checks if c.name not in skip and (c.verticals is None or vertical in c.verticals)]
    return sorted(chosen, key=lambda c: c.level)


def run_checks(data: CleaningData, checks: Sequence[DataCheck], decisions: dict[tuple[str, str], Decision],
               *, level2: bool = True, log: Callable[[str], None] = print) -> CleaningReport:
    """Run level 1 checks on ``data``, then (``level2``) level 2 checks on what level 1 keeps.

    A check that raises is recorded as ``unknown`` with the error (never as a pass); the others still run.
    A person's decision (``keep``, ``fix``, ``drop``) overrides what the checks would do with that row.
    """
    started = time.perf_counter()
    rows_in = {name: len(split.rows) + len(split.skipped) for name, split in data.splits.items()}
    findings: list[Finding] = []
    statuses: dict[str, dict[str, Any]] = {}
    level1 = [c for c in checks if c.level == 1]
    level2_checks = [c for c in checks if c.level == 2]
    _run(level1, data, findings, statuses, log)
    if level2_checks and level2:
        actions = _resolve(findings, decisions, data.settings.label_issues)
        trimmed = {name: _without(split, {i for i, a in actions.get(name, {}).items() if a == "drop"})
                   for name, split in data.splits.items()}
        _run(level2_checks, replace(data, splits=trimmed, _memo={}), findings, statuses, log)
    elif level2_checks:
        for check in level2_checks:
            statuses[check.name] = {"level": 2, "status": "not run (clean.level2=false)", "findings": 0}
    actions = _resolve(findings, decisions, data.settings.label_issues)
    decided = sum(1 for (name, _), _d in decisions.items() if name in data.splits)
    return CleaningReport(data.vertical, rows_in, findings, actions, statuses, decided,
                          time.perf_counter() - started)


def _run(checks: Sequence[DataCheck], data: CleaningData, findings: list[Finding],
         statuses: dict[str, dict[str, Any]], log: Callable[[str], None]) -> None:
    for check in checks:
        started = time.perf_counter()
        try:
            found = list(check.run(data))
        except CheckSkipped as exc:
            statuses[check.name] = {"level": check.level, "status": f"skipped: {exc}", "findings": 0}
            continue
        except Exception as exc:  # one broken check must not hide what the others found
            statuses[check.name] = {"level": check.level, "status": f"unknown: {type(exc).__name__}: {exc}",
                                    "findings": 0}
            log(f"clean: check {check.name!r} could not run ({type(exc).__name__}: {exc}); its result is unknown")
            continue
        for finding in found:
            finding.check, finding.level = check.name, check.level
        findings.extend(found)
        statuses[check.name] = {"level": check.level, "status": "ran", "findings": len(found),
                                "seconds": round(time.perf_counter() - started, 2)}


def _resolve(findings: Sequence[Finding], decisions: dict[tuple[str, str], Decision],
             label_issues: str) -> dict[str, dict[str, str]]:
    """One action per row: a person's decision; else drop if any finding drops it; else fix if one fixes it
    (with a suggestion); else flag."""
    actions: dict[str, dict[str, str]] = {}
    for f in findings:
        action = f.action
        if f.reason == "label_issue" and label_issues != "flag":
            action = label_issues if (label_issues == "drop" or f.suggestion) else "flag"
        current = actions.setdefault(f.split, {}).get(f.row_id)
        if current is None or _RANK[action] > _RANK[current]:
            actions[f.split][f.row_id] = action
    for (name, row_id), decision in decisions.items():
        actions.setdefault(name, {})[row_id] = decision.decision
    return actions


_RANK = {"keep": 0, "flag": 1, "fix": 2, "drop": 3}


def _suggestions(findings: Sequence[Finding]) -> dict[tuple[str, str], str]:
    best: dict[tuple[str, str], Finding] = {}
    for f in findings:
        if f.suggestion and ((f.split, f.row_id) not in best or f.score > best[(f.split, f.row_id)].score):
            best[(f.split, f.row_id)] = f
    return {key: f.suggestion for key, f in best.items() if f.suggestion}


def _without(split: Split, drop: set[str]) -> Split:
    return apply_changes(split, drop, {}) if drop else split


def write_outputs(report: CleaningReport, splits: dict[str, Split], out_dir: Path, *,
                  review_rows: int = 300) -> dict[str, Path]:
    """``clean_report.json``, ``cleaned_view.json`` and the review page ``review.html`` in ``out_dir``."""
    from .review import write_review_page
    from .view import VIEW_FILE

    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / REPORT_FILE
    report_path.write_text(json.dumps(report.as_dict(), indent=1, default=str))
    view_path = report.view(splits).save(out_dir / VIEW_FILE)
    review = write_review_page(report, splits, out_dir / REVIEW_FILE, limit=review_rows)
    return {"clean_report": report_path, "clean_view": view_path, "review_page": review}


def summary_table(report: CleaningReport) -> str:
    """A short plain-text table for the console."""
    figures = report.figures()
    lines = [f"clean: {figures['rows_in']} rows in ({', '.join(f'{k} {v}' for k, v in report.rows_in.items())}); "
             f"{figures['rows_flagged']} flagged, {figures['dropped']} dropped, {figures['fixed']} fixed, "
             f"{figures['open']} left for review; usable share {figures['usable_share']:.1%} "
             f"(rows with no finding: {figures['clean_share']:.1%})"]
    if figures["flagged"]:
        width = max(len(reason) for reason in figures["flagged"])
        lines.append(f"  {'reason'.ljust(width)}  rows")
        lines += [f"  {reason.ljust(width)}  {n:>4}" for reason, n in figures["flagged"].items()]
    unknown = [f"{name} ({status})" for name, status in figures["checks"].items() if status != "ran"]
    if unknown:
        lines.append("  checks not made: " + "; ".join(unknown))
    return "\n".join(lines)
