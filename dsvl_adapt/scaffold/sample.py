"""A tiny labelled data folder in the ``data.source`` layout, shipped in every scaffolded plugin's tests.

``sample_files()`` returns the folder's files as ``{relative path: bytes}``::

    train.jsonl  validation.jsonl  test.jsonl  images/train-0.png ...

Each line is ``{"id", "image", "question", "answer"}`` with the image path relative to the file.
The pictures are one coloured shape (a square or a circle) on a light background, 32 x 32 pixels;
the question asks for its colour. Every picture differs (size and place vary with the split and the
row), so no test row repeats a training row. The bytes are the same on every call: PNG encoding in
Pillow is deterministic.

It is deliberately small (a few kilobytes): enough for ``check_plugin(..., data_source=DIR)`` and a
smoke run, not to learn anything.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

#: rows per split in the sample folder
SAMPLE_ROWS = {"train": 8, "validation": 4, "test": 4}
COLOURS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (225, 195, 30)}
QUESTION = "What colour is the shape?"
IMAGE_SIZE = 32


def _picture(split_index: int, row: int, colour: str) -> bytes:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (235, 232, 225))
    draw = ImageDraw.Draw(image)
    half = 7 + (row + split_index) % 4  # 7..10 px: big enough at any input size
    cx = 10 + (3 * row + 5 * split_index) % 12
    cy = 10 + (5 * row + 3 * split_index) % 12
    box = [cx - half, cy - half, cx + half, cy + half]
    (draw.ellipse if (row + split_index) % 2 else draw.rectangle)(box, fill=COLOURS[colour])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sample_files() -> dict[str, bytes]:
    """Every file of the sample folder, ``{relative path: bytes}``."""
    files: dict[str, bytes] = {}
    colours = list(COLOURS)
    for split_index, (split, count) in enumerate(SAMPLE_ROWS.items()):
        lines = []
        for row in range(count):
            colour = colours[(row + split_index) % len(colours)]
            image = f"images/{split}-{row}.png"
            files[image] = _picture(split_index, row, colour)
            lines.append(json.dumps({"id": f"sample-{split}-{row}", "image": image, "question": QUESTION,
                                     "answer": colour}))
        files[f"{split}.jsonl"] = ("\n".join(lines) + "\n").encode()
    return files


def write_sample_folder(directory: Path | str) -> Path:
    """Write the sample folder into ``directory`` (created if missing); returns it."""
    directory = Path(directory)
    for relative, data in sample_files().items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


__all__ = ["SAMPLE_ROWS", "sample_files", "write_sample_folder"]
