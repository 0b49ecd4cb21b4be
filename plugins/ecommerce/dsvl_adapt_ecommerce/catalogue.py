"""Read a product-catalogue CSV: one product per line, one question per attribute.

Layout::

    DIR/train.csv  DIR/validation.csv  DIR/test.csv
    DIR/images/...                        image paths are relative to the CSV's folder

Columns (a header line is required; order does not matter):

``image_path``
    the product photo (``image`` is accepted too).
``category``, ``colour``, ``pattern``
    attribute columns (``color`` is read as ``colour``). At least one is required. Each
    non-empty cell becomes one row asking that attribute, with ``meta["question_type"]`` and
    ``meta["asked"]`` naming it (as the generator's rows); an empty cell means "not annotated"
    and asks nothing.
``sku`` or ``id``
    optional product id; every column but the image path is kept in each row's ``meta``.

A line with fewer or more cells than the header, or without an image path, is reported as
``file:line``; ``data.on_bad_row`` decides whether that stops the run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

IMAGE_COLUMNS = ("image_path", "image")
ID_COLUMNS = ("sku", "id", "product_id")
ALIASES = {"color": "colour", "colour": "colour"}


def _column(name: str) -> str:
    key = name.strip().lower().replace(" ", "_")
    return ALIASES.get(key, key)


def read_catalogue_csv(path: str | Path, *, attributes: Sequence[str],
                       questions: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Yield raw rows (one per annotated attribute of each product) of a catalogue CSV.

    ``attributes`` are the attribute columns understood; ``questions[attribute]`` is the
    question asked for it.
    """
    from dsvl_adapt.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise DataError(f"{path}: the file is empty; it needs a header line "
                                f"(image_path,{','.join(attributes)})") from None
            columns = [_column(c) for c in header]
            image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
            present = [a for a in attributes if a in columns]
            if image_col is None or not present:
                raise DataError(
                    f"{path}:1: header {header} needs an 'image_path' column and at least one attribute column "
                    f"of {list(attributes)}")
            duplicates = sorted({c for c in columns if columns.count(c) > 1})
            if duplicates:
                raise DataError(f"{path}:1: column(s) {duplicates} appear more than once in the header")
            id_col = next((c for c in ID_COLUMNS if c in columns), None)
            for cells in reader:
                line = reader.line_num
                source = f"{path}:{line}"
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(columns):
                    missing = columns[len(cells):]
                    what = (f"is missing column(s) {missing}" if missing
                            else f"has {len(cells) - len(columns)} cell(s) more than the header")
                    yield {"_source": source, "_error": f"line has {len(cells)} cells for {len(columns)} columns: "
                                                        f"it {what}"}
                    continue
                record = {c: v.strip() for c, v in zip(columns, cells)}
                if not record[image_col]:
                    yield {"_source": source, "_error": f"'{image_col}' is empty"}
                    continue
                asked = [a for a in present if record[a]]
                if not asked:
                    yield {"_source": source,
                           "_error": f"no attribute value on this line (columns {present} are empty)"}
                    continue
                product = record.get(id_col) if id_col else None
                extra = {c: v for c, v in record.items() if c != image_col and v}  # all values, as the generator
                for attribute in asked:
                    yield {"_source": f"{source} ({attribute})", "_root": str(path.parent),
                           "id": f"{product or path.stem + '-' + str(line)}/{attribute}",
                           "image": record[image_col], "question": questions[attribute],
                           "answer": record[attribute], "meta": {**extra, "question_type": attribute,
                                                                  "asked": attribute}}
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc}); save the CSV as UTF-8") from None
    except csv.Error as exc:
        where = f"{path}:{reader.line_num}" if reader is not None else str(path)
        raise DataError(f"{where}: malformed CSV ({exc})") from None
