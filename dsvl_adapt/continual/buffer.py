"""The replay buffer: a bounded selection of earlier rows, stored with each version for the next update.

A buffer is a folder in the data.source layout (``train.jsonl`` + ``images/``), so it can be read, inspected and
fed back like any user folder. Each version writes its own buffer (its parent's is never changed): candidates are
the parent's buffer rows (or, for a first run, its train split) and the increment's new train rows, the new ones
limited to ``new_share`` of the buffer so that older increments keep a place.

Selection rules (``update.replay.selection``):

* ``random``: a seeded sample of the candidates;
* ``balanced``: round-robin over reference answers (each answer's rows in seeded order), so a rare answer
  keeps as many rows as a common one while the size allows.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

from ..data.jsonl import read_jsonl_split
from ..data.rows import parse_row
from ..schemas import Row

IMAGES = "images"


def select_rows(rows: Sequence[Row], size: int, rule: Literal["random", "balanced"], seed: int) -> list[Row]:
    """``size`` of ``rows`` (all of them when there are fewer) by ``rule``, in a seeded order."""
    if len(rows) <= size:
        return list(rows)
    rng = random.Random(seed)
    if rule == "random":
        return rng.sample(list(rows), size)
    by_answer: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_answer[row.answer].append(row)
    for group in by_answer.values():
        rng.shuffle(group)
    answers = sorted(by_answer)
    picked: list[Row] = []
    depth = 0
    while len(picked) < size:
        for answer in answers:
            group = by_answer[answer]
            if depth < len(group) and len(picked) < size:
                picked.append(group[depth])
        depth += 1
    return picked


T = TypeVar("T")


def with_new_share(new: Sequence[T], replay: Sequence[T], share: float) -> list[T]:
    """``new`` repeated in order (cycling) until it is at least ``share`` of the returned new + replay items, then
    ``replay``: a large buffer does not drown the increment's rows. ``share`` 0 (or no replay) repeats nothing."""
    if not new or not replay or share <= 0:
        return [*new, *replay]
    wanted = max(len(new), math.ceil(share / (1 - share) * len(replay)))
    return [*(new[i % len(new)] for i in range(wanted)), *replay]


def next_buffer(old: Sequence[Row], new: Sequence[Row], *, size: int, new_share: float,
                rule: Literal["random", "balanced"], seed: int) -> list[Row]:
    """The buffer a version keeps: new rows up to ``new_share`` of ``size`` (more when the old are fewer), then old."""
    new_quota = max(size - len(old), round(size * new_share))
    kept_new = select_rows(new, min(new_quota, size), rule, seed)
    kept_old = select_rows(old, size - len(kept_new), rule, seed + 1)
    return [*kept_old, *kept_new]


def write_split(rows: Sequence[Row | dict[str, Any]], directory: Path, split: str, *,
                extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``rows`` (validated rows, or a generator's dicts with a PIL ``image``) as ``directory/<split>.jsonl``
    with PNG images under ``images/<split>/``: a folder in the data.source layout. ``extra_meta`` is added to
    each row's meta where it does not already set the key."""
    images = directory / IMAGES / split
    images.mkdir(parents=True, exist_ok=True)
    with (directory / f"{split}.jsonl").open("w") as handle:
        for index, row in enumerate(rows):
            fields = ({"id": row.id, "image": row.image, "question": row.question, "answer": row.answer,
                       "meta": row.meta} if isinstance(row, Row) else dict(row))
            name = f"{IMAGES}/{split}/{index:06d}.png"
            fields["image"].save(directory / name)
            meta = {**(extra_meta or {}), **(fields.get("meta") or {})}
            record = {"id": fields["id"], "image": name, "question": fields["question"], "answer": fields["answer"]}
            if meta:
                record["meta"] = meta
            handle.write(json.dumps(record, default=str) + "\n")
    return directory


def write_buffer(rows: Sequence[Row], directory: Path, *, origin: str) -> Path:
    """Write a replay buffer; ``origin`` (the version that first kept a row) goes into the meta of rows without one."""
    return write_split(rows, directory, "train", extra_meta={"replay_origin": origin})


def read_buffer(directory: Path) -> list[Row]:
    """The rows of a stored buffer, validated like a user's folder."""
    rows = []
    for raw in read_jsonl_split(directory, "train"):
        raw = dict(raw)
        source = raw.pop("_source")
        root = Path(raw.pop("_root"))
        rows.append(parse_row(raw, source=source, root=root))
    return rows
