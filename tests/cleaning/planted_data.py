"""A small e-commerce data folder (data.source layout) with known, planted faults (shared by the cleaning tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

#: train row id -> the fault planted in it and the reason the clean checks must give
PLANTED = {
    "blank": "blank_image",
    "broken": "unreadable",
    "dup": "duplicate",
    "leak": "leak_test",
    "wrongattr": "ecommerce_not_attribute_value",
    "conflict": "conflicting_answers",
}


def write_split(folder: Path, split: str, rows: list[dict]) -> None:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        path = images / f"{row['id']}.png"
        if isinstance(row["image"], Image.Image):
            row["image"].save(path)
        lines.append(json.dumps({"id": row["id"], "image": f"images/{row['id']}.png", "question": row["question"],
                                 "answer": row["answer"]}))
    (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def build_planted_folder(folder: Path, train_size: int = 72) -> Path:
    from dsvl_adapt_ecommerce.generator import ATTRIBUTES, generate_rows

    train = generate_rows("train", train_size, seed=0, image_size=64)
    validation = generate_rows("validation", 24, seed=0, image_size=64)
    test = generate_rows("test", 24, seed=0, image_size=64)
    colour = next(r for r in train if r["meta"]["asked"] == "colour")
    train += [
        {"id": "blank", "image": Image.new("RGB", (64, 64), (128, 128, 128)), "question": train[0]["question"],
         "answer": train[0]["answer"]},
        {"id": "broken", "image": None, "question": train[1]["question"], "answer": train[1]["answer"]},
        {"id": "dup", "image": train[3]["image"].copy(), "question": train[3]["question"], "answer": train[3]["answer"]},
        {"id": "leak", "image": test[0]["image"].copy(), "question": test[0]["question"], "answer": test[0]["answer"]},
        {"id": "wrongattr", "image": colour["image"].copy(), "question": colour["question"], "answer": "mug"},
        {"id": "conflict", "image": train[5]["image"].copy(), "question": train[5]["question"],
         "answer": next(a for a in ATTRIBUTES[train[5]["meta"]["asked"]] if a != train[5]["answer"])},
    ]
    write_split(folder, "train", train)
    write_split(folder, "validation", validation)
    write_split(folder, "test", test)
    good = (folder / "images" / f"{train[2]['id']}.png").read_bytes()
    (folder / "images" / "broken.png").write_bytes(good[: len(good) // 3])  # a truncated PNG
    return folder
