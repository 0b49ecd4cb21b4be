"""Load a vertical's split through its dataset factory, validating every row."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import DataError, PluginError
from ..schemas import DatasetRequest, DatasetSpec, Row
from .rows import parse_row


@dataclass
class Split:
    """The validated rows of one split, and the rows that were skipped (with why)."""

    name: str
    rows: list[Row]
    skipped: list[str] = field(default_factory=list)


def load_split(
    spec: DatasetSpec,
    request: DatasetRequest,
    *,
    on_bad_row: Literal["fail", "skip"] = "fail",
    max_pixels: int = 50_000_000,
) -> Split:
    """Call the dataset factory and validate its rows; ``on_bad_row`` decides what a bad row does."""
    try:
        raw_rows = iter(spec.load(request))
    except DataError:
        raise
    except Exception as exc:
        raise PluginError(f"dataset {spec.name!r} failed to load split {request.split!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    rows: list[Row] = []
    skipped: list[str] = []
    index = 0
    while True:
        try:
            raw = next(raw_rows)
        except StopIteration:
            break
        except DataError:
            raise
        except Exception as exc:
            raise PluginError(f"dataset {spec.name!r} raised while producing split {request.split!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
        source = f"{spec.name}/{request.split}[{index}]"
        root = None
        if isinstance(raw, dict):
            raw = dict(raw)
            source = raw.pop("_source", source)
            root = Path(raw.pop("_root")) if raw.get("_root") else None
            error = raw.pop("_error", None)
        else:
            error = None
        index += 1
        try:
            if error:
                raise DataError(f"{source}: {error}")
            rows.append(parse_row(raw, source=source, root=root, max_pixels=max_pixels))
        except DataError as exc:
            if on_bad_row == "fail":
                raise DataError(f"{exc}\n(to skip bad rows and count them in the scorecard, set data.on_bad_row=skip)") \
                    from None
            skipped.append(str(exc))
            print(f"skipped: {exc}", file=sys.stderr)
    if not rows:
        where = f" in {request.source}" if request.source else ""
        raise DataError(f"split {request.split!r} of dataset {spec.name!r}{where} has no usable rows"
                        f"{f' ({len(skipped)} skipped)' if skipped else ''}; every split needs at least one row")
    return Split(request.split, rows, skipped)
