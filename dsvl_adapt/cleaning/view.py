"""The cleaned view of a dataset and a person's review decisions, applied when the data loads.

The user's files are never changed. The ``clean`` stage writes ``cleaned_view.json``: per split, the
ids of the rows it drops and of the rows whose answer it fixes (with the new answer); the rows it
keeps are listed for the record. The review page exports a decisions file (JSONL, one row a line)::

    {"split": "train", "id": "0007", "decision": "fix", "answer": "scratch"}
    {"split": "train", "id": "0019", "decision": "drop"}
    {"split": "train", "id": "0023", "decision": "keep"}

which ``clean.decisions=FILE`` applies to every load of the data (``run`` and ``clean`` alike).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..data.loading import Split
from ..errors import DataError

VIEW_FILE = "cleaned_view.json"
DECISIONS = ("keep", "fix", "drop")


@dataclass(frozen=True)
class Decision:
    """What to do with one row: ``keep`` it as it is, ``fix`` its answer to ``answer``, or ``drop`` it."""

    split: str
    row_id: str
    decision: Literal["keep", "fix", "drop"]
    answer: str | None = None

    def as_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"split": self.split, "id": self.row_id, "decision": self.decision}
        if self.decision == "fix":
            record["answer"] = self.answer
        return record


@dataclass
class CleanedView:
    """Rows to drop and answers to fix, per split, by row id (``kept`` only documents the rest)."""

    dropped: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # split -> id -> reasons
    fixed: dict[str, dict[str, str]] = field(default_factory=dict)  # split -> id -> new answer
    kept: dict[str, list[str]] = field(default_factory=dict)

    def apply(self, split: Split) -> Split:
        return apply_changes(split, set(self.dropped.get(split.name, {})), self.fixed.get(split.name, {}))

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps({"dropped": self.dropped, "fixed": self.fixed, "kept": self.kept}, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "CleanedView":
        record = json.loads(Path(path).read_text())
        return cls(record.get("dropped", {}), record.get("fixed", {}), record.get("kept", {}))


def apply_changes(split: Split, drop: set[str], fix: dict[str, str]) -> Split:
    """``split`` without the rows whose id is in ``drop`` and with the answers of ``fix`` replaced."""
    if not drop and not fix:
        return split
    rows, sources = [], []
    has_sources = len(split.sources) == len(split.rows)
    for index, row in enumerate(split.rows):
        if row.id in drop:
            continue
        if row.id in fix:
            row = row.model_copy(update={"answer": fix[row.id]})
        rows.append(row)
        if has_sources:
            sources.append(split.sources[index])
    if not rows:
        raise DataError(f"cleaning dropped every row of split {split.name!r}; keep some rows (review decisions, "
                        "or clean.label_issues=flag)")
    removed = len(split.rows) - len(rows)
    return replace(split, rows=rows, sources=sources if has_sources else split.sources,
                   available=max(split.available - removed, len(rows)))


def apply_decisions(split: Split, decisions: dict[tuple[str, str], Decision]) -> Split:
    """``split`` with a person's decisions about its rows applied (``keep`` changes nothing)."""
    drop = {row_id for (name, row_id), d in decisions.items() if name == split.name and d.decision == "drop"}
    fix = {row_id: d.answer or "" for (name, row_id), d in decisions.items()
           if name == split.name and d.decision == "fix"}
    return apply_changes(split, drop, fix)


def read_decisions(path: Path) -> dict[tuple[str, str], Decision]:
    """The decisions of a JSONL file, by (split, id); a malformed line is an error naming it. A later line
    about the same row replaces an earlier one (a person changed their mind)."""
    decisions: dict[tuple[str, str], Decision] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg}); each line is one decision object") from None
        if not isinstance(record, dict) or not {"split", "id", "decision"} <= record.keys():
            raise DataError(f"{where}: a decision needs 'split', 'id' and 'decision' (keep, fix or drop)")
        decision = record["decision"]
        if decision not in DECISIONS:
            raise DataError(f"{where}: decision {decision!r} is not one of keep, fix, drop")
        answer = record.get("answer")
        if decision == "fix" and (not isinstance(answer, str) or not answer.strip()):
            raise DataError(f"{where}: a 'fix' decision needs the new 'answer' (non-blank text)")
        key = (str(record["split"]), str(record["id"]))
        decisions[key] = Decision(key[0], key[1], decision, answer.strip() if decision == "fix" else None)
    return decisions


def write_decisions(path: Path, decisions: list[Decision]) -> Path:
    path.write_text("".join(json.dumps(d.as_json()) + "\n" for d in decisions), encoding="utf-8")
    return path


_VIEWS: dict[tuple[str, int], CleanedView] = {}


def cached_view(path: Path) -> CleanedView:
    """The view saved at ``path``, read once per process per version of the file."""
    key = (str(path), Path(path).stat().st_mtime_ns)
    if key not in _VIEWS:
        _VIEWS[key] = CleanedView.load(path)
    return _VIEWS[key]
