"""Rows and images: every bad input names itself and the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dsvl_adapt.data.images import open_image
from dsvl_adapt.data.jsonl import read_jsonl_split
from dsvl_adapt.data.loading import load_split
from dsvl_adapt.data.rows import parse_row
from dsvl_adapt.errors import DataError, PluginError
from dsvl_adapt.schemas import DatasetRequest, DatasetSpec


def _png(path, mode="RGB", size=(16, 16)):
    Image.new(mode, size).save(path)
    return path


def test_valid_row_loads_rgb_image(tmp_path):
    _png(tmp_path / "a.png", mode="L")
    row = parse_row({"image": "a.png", "question": "q?", "answer": " scratch "}, source="t:1", root=tmp_path)
    assert row.image.mode == "RGB" and row.answer == "scratch" and row.id == "t:1"


@pytest.mark.parametrize(("raw", "needle"), [
    ({"image": "a.png", "question": "q"}, "missing 'answer'"),
    ({"image": "a.png", "answer": "x"}, "missing 'question'"),
    ({"image": "a.png", "question": "q", "answer": "x", "label": 1}, "unknown field"),
    ({"image": "a.png", "question": b"\xff\xfe", "answer": "x"}, "UTF-8"),
    ({"image": "a.png", "question": "q", "answer": "x", "meta": [1]}, "'meta' must be an object"),
    ({"image": "../outside.png", "question": "q", "answer": "x"}, "outside the dataset folder"),
    ({"image": "missing.png", "question": "q", "answer": "x"}, "does not exist"),
    ([1, 2], "must be an object"),
])
def test_bad_rows_name_source_and_problem(tmp_path, raw, needle):
    _png(tmp_path / "a.png")
    _png(tmp_path.parent / "outside.png")
    with pytest.raises(DataError) as info:
        parse_row(raw, source="train.jsonl:7", root=tmp_path)
    assert "train.jsonl:7" in str(info.value) and needle in str(info.value)


def test_zero_byte_truncated_and_corrupt_images(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    good = _png(tmp_path / "good.png", size=(64, 64))
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "corrupt.png").write_bytes(b"not an image at all" * 10)
    with pytest.raises(DataError, match="empty"):
        open_image(tmp_path / "empty.png", source="s")
    with pytest.raises(DataError, match="damaged|not a readable image"):
        open_image(tmp_path / "truncated.png", source="s")
    with pytest.raises(DataError, match="not a readable image"):
        open_image(tmp_path / "corrupt.png", source="s")


def test_decompression_bomb_is_refused(tmp_path):
    path = _png(tmp_path / "big.png", mode="L", size=(400, 400))
    with pytest.raises(DataError, match="max_image_pixels"):
        open_image(path, source="s", max_pixels=10_000)


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "1", "I;16", "F"])
def test_image_modes_convert_to_rgb(tmp_path, mode):
    if mode == "I;16":
        image = Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200)  # mode I;16
    else:
        image = Image.new(mode, (16, 16))
    converted = open_image(image, source="s")
    assert converted.mode == "RGB" and converted.size == (16, 16)


def test_sixteen_bit_keeps_its_contrast():
    array = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 250)
    sixteen = Image.fromarray(array)
    assert sixteen.mode == "I;16"
    converted = np.asarray(open_image(sixteen, source="s"))
    assert converted.min() == 0 and converted.max() == 255


def _write_jsonl(directory, split, lines):
    (directory / f"{split}.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_jsonl_split_with_bad_lines_fail_or_skip(tmp_path):
    _png(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "question": "q?", "answer": "dent"}).encode()
    _write_jsonl(tmp_path, "train", [good, b"{not json", b"\xff\xfe bad", good, b"[1]"])
    spec = DatasetSpec(name="user", load=lambda req: read_jsonl_split(tmp_path, req.split))
    request = DatasetRequest(split="train", size=10)
    with pytest.raises(DataError) as info:
        load_split(spec, request)
    assert "train.jsonl:2" in str(info.value) and "on_bad_row=skip" in str(info.value)
    split = load_split(spec, request, on_bad_row="skip")
    assert len(split.rows) == 2 and len(split.skipped) == 3
    assert any("train.jsonl:3" in s and "UTF-8" in s for s in split.skipped)


def test_empty_split_is_an_error(tmp_path):
    _write_jsonl(tmp_path, "test", [b""])
    spec = DatasetSpec(name="user", load=lambda req: read_jsonl_split(tmp_path, req.split))
    with pytest.raises(DataError, match="no usable rows"):
        load_split(spec, DatasetRequest(split="test", size=1))


def test_missing_split_file_names_the_expected_files(tmp_path):
    spec = DatasetSpec(name="user", load=lambda req: read_jsonl_split(tmp_path, req.split))
    with pytest.raises(DataError, match="validation.jsonl"):
        load_split(spec, DatasetRequest(split="validation", size=1))


def test_dataset_factory_that_raises_is_a_plugin_error():
    def broken(request):
        raise KeyError("oops")

    with pytest.raises(PluginError, match="dataset 'broken-ds'"):
        load_split(DatasetSpec(name="broken-ds", load=broken), DatasetRequest(split="train", size=1))
