"""What a data check reports about one row, and what should happen to it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Action = Literal["drop", "fix", "flag"]


@dataclass
class Finding:
    """One suspicious row.

    ``row_id`` is the row's id (``file:line`` for a row that could not be read); ``reason`` a short
    slug counted in the report (``blank_image``, ``duplicate``, ``label_issue`` …); ``score`` how
    suspicious it is, 0 to 1 (the review page is ordered by it); ``action`` what the clean stage does
    unless a person decided otherwise: ``drop`` the row, ``fix`` its answer to ``suggestion``, or only
    ``flag`` it for review. ``check`` and ``level`` are filled in by the runner.
    """

    split: str
    row_id: str
    reason: str
    detail: str
    score: float = 1.0
    action: Action = "flag"
    suggestion: str | None = None
    related: list[str] = field(default_factory=list)
    check: str = ""
    level: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckSkipped(Exception):
    """Raised by a check that has nothing to run with (an optional model not configured): the report says
    ``skipped: <why>``, neither a pass nor a failure."""
