"""Load a vertical's split through its dataset factory, validating every row."""

from __future__ import annotations

import random
import re
import sys
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from ..errors import DataError, PluginError
from ..schemas import DatasetRequest, DatasetSpec, Row
from .rows import parse_row

# ``file:line`` at the start of a row's source (``/data/val.jsonl:12``, ``labels.jsonl:3 (colour)``)
_FILE_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)\b")
MAX_LISTED = 5  # duplicates named in a message


@dataclass
class Split:
    """The validated rows of one split, and the rows that were skipped (with why).

    ``available`` is how many usable rows the split's files held; ``rows`` may be a seeded sample
    of them (``data.<split>_size`` with ``data.source``). ``files`` names the files the rows were
    read from (``val.jsonl`` when the validation split is called that), ``image_files`` the image
    files every usable row referenced by path (resolved; sampled or not), and ``sources`` the kept
    rows' ``file:line``.
    """

    name: str
    rows: list[Row]
    skipped: list[str] = field(default_factory=list)
    available: int = 0
    files: list[str] = field(default_factory=list)
    image_files: set[Path] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.available


def load_split(
    spec: DatasetSpec,
    request: DatasetRequest,
    *,
    on_bad_row: Literal["fail", "skip"] = "fail",
    max_pixels: int = 50_000_000,
    allow_outside: Sequence[Path] = (),
) -> Split:
    """Call the dataset factory and validate its rows; ``on_bad_row`` decides what a bad row does.

    Every row is validated (images opened); two rows of a split with the same ``id`` are refused,
    naming both lines. All usable rows are returned, of a user's folder too: a run samples them to
    ``data.<split>_size`` with :func:`load_configured_split`.
    """
    try:
        raw_rows = iter(spec.load(request))
    except DataError:
        raise
    except Exception as exc:
        raise PluginError(f"dataset {spec.name!r} failed to load split {request.split!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    rows: list[Row] = []
    sources: list[str] = []
    skipped: list[str] = []
    image_files: set[Path] = set()
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
            rows.append(parse_row(raw, source=source, root=root, max_pixels=max_pixels,
                                  allow_outside=allow_outside, image_files=image_files))
            sources.append(source)
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
    refuse_duplicate_ids(rows, sources, request.split)
    return Split(request.split, rows, skipped, available=len(rows), files=source_files(sources),
                 image_files=image_files, sources=sources)


def sample_split(split: Split, size: int, *, seed: int) -> Split:
    """A seeded sample of ``size`` of the split's rows (all of them when it holds no more), in file order."""
    if len(split.rows) <= size:
        return split
    keep = sample_indices(len(split.rows), size, seed=seed, split=split.name)
    return replace(split, rows=[split.rows[i] for i in keep], sources=[split.sources[i] for i in keep])


def sample_indices(available: int, size: int, *, seed: int, split: str) -> list[int]:
    """``size`` of ``range(available)``, drawn with a generator seeded by the run's seed and the split's
    name (the same in every process and on every machine), in file order."""
    rng = random.Random(seed * 1_000_003 + zlib.crc32(split.encode()))
    return sorted(rng.sample(range(available), size))


def refuse_duplicate_ids(rows: Sequence[Row], sources: Sequence[str], split: str) -> None:
    """Two rows of one split with the same ``id`` are ambiguous (predictions are written by id): refuse."""
    first: dict[str, str] = {}
    clashes: list[str] = []
    for row, source in zip(rows, sources):
        if row.id in first:
            clashes.append(f"{first[row.id]} and {source} both have id {row.id!r}")
        else:
            first[row.id] = source
    if clashes:
        more = f" (and {len(clashes) - MAX_LISTED} more)" if len(clashes) > MAX_LISTED else ""
        raise DataError(f"split {split!r} has {len(clashes)} duplicate row id(s): " + "; ".join(clashes[:MAX_LISTED])
                        + f"{more}; give every row its own 'id' (or leave 'id' out to use file:line)")


def source_files(sources: Sequence[str]) -> list[str]:
    """The distinct files named by rows' ``file:line`` sources, in order of first appearance."""
    files: dict[str, None] = {}
    for source in sources:
        match = _FILE_LINE.match(source)
        if match:
            files.setdefault(match.group("file"), None)
    return list(files)


def load_configured_split(config: Any, registry: Any, split: str, image_size: int, size: int | None = None) -> Split:
    """A split of the run's vertical as ``config.data`` asks for it (source, size, bad-row policy,
    image limits, allowed outside folders); ``size`` overrides ``data.<split>_size``.

    Generated data is made at that size; a user's folder (``data.source``) is read whole, every row
    validated, then sampled to it (seeded by ``seed`` and the split's name; all rows when fewer).
    A review decisions file (``clean.decisions``) is applied before sampling; with the ``clean`` stage
    in the pipeline, unreadable rows are skipped (the stage reports and drops them).
    """
    data = config.data
    request = DatasetRequest(
        split=split,  # type: ignore[arg-type]
        size=size or getattr(data, f"{split}_size"),
        seed=config.seed,
        image_size=image_size,
        source=data.source,
    )
    spec = registry.datasets.get(registry.vertical(config.vertical.name).dataset)
    clean = getattr(config, "clean", None)
    cleaning = clean is not None and "clean" in config.pipeline.stages
    # with the clean stage, an unreadable row is one of its findings (dropped, reported), not the end of the run
    loaded = load_split(spec, request, on_bad_row="skip" if cleaning else data.on_bad_row,
                        max_pixels=data.max_image_pixels, allow_outside=data.allow_outside)
    if clean is not None and clean.decisions is not None:
        from ..cleaning.view import apply_decisions, read_decisions

        loaded = apply_decisions(loaded, read_decisions(clean.decisions))
    return sample_split(loaded, request.size, seed=config.seed) if data.source is not None else loaded
