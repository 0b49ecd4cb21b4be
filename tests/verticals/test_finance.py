"""The finance vertical: registry, ANLS / exact match on hand-checked examples, JSONL and PDF loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dsvl_adapt.data.loading import load_split
from dsvl_adapt.errors import DataError
from dsvl_adapt.plugins import PluginManager
from dsvl_adapt.schemas import DatasetRequest

pytest.importorskip("dsvl_adapt_finance")
pytest.importorskip("pypdfium2")

from dsvl_adapt_finance import DATASET, FIELDS  # noqa: E402
from dsvl_adapt_finance import metrics as M  # noqa: E402


@pytest.fixture(scope="module")
def registry():
    return PluginManager().registry


def _spec(registry):
    return registry.datasets.get(DATASET)


def _request(split, source, size=1):
    return DatasetRequest(split=split, size=size, source=source)


# ------------------------------------------------------------------------------ registry
def test_registry_holds_the_vertical_and_its_parts(registry):
    vertical = registry.vertical("finance")
    assert vertical.primary_metric == "anls"
    assert vertical.dataset in registry.datasets and vertical.prompt in registry.prompts
    assert all(m in registry.metrics for m in vertical.metrics)
    assert {f"anls_{f}" for f in FIELDS} | {f"em_{f}" for f in FIELDS} <= set(vertical.metrics)
    xeon = registry.targets.get("cpu-xeon-ort")
    assert (xeon.device, xeon.runtime, xeon.dtypes, xeon.latency_p90_ms) == ("cpu", "onnxruntime", ["int8"], 200)
    assert vertical.targets[0] == "cpu-xeon-ort"
    assert any(registry.targets.get(t).device == "gpu" for t in vertical.targets)
    assert vertical.objectives.min_retention is not None
    assert "pkg://dsvl_adapt_finance.conf" in registry.config_search_path
    assert not [f for f in registry.failures if "finance" in f]


# ------------------------------------------------------------------------------ metrics
def test_levenshtein_by_hand():
    assert M.levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert M.levenshtein("", "abc") == 3 and M.levenshtein("abc", "abc") == 0


# reference      prediction     Levenshtein / max length = NL     s = 1 - NL if NL < 0.5 else 0
# "1,234.50"     "1,234.50"     0 / 8  = 0                        1
# "acme corp"    "acme co"      2 / 9  = 0.2222                   7/9 = 0.7778
# "2024-03-15"   "2023-03-15"   1 / 10 = 0.1                      0.9
# "total"        "xyz"          5 / 5  = 1                        0
# "abcd"         "abxy"         2 / 4  = 0.5 (not < tau)          0   (the official script would keep 0.5)
# "USD 12"       "usd 12."      normalised equal                  1
REF = ["1,234.50", "acme corp", "2024-03-15", "total", "abcd", "USD 12"]
PRED = ["1,234.50", "acme co", "2023-03-15", "xyz", "abxy", "usd 12."]
FIELD_OF = ["total", "vendor", "date", "total", "vendor", "total"]
ROWS = [SimpleNamespace(meta={"field": f}) for f in FIELD_OF]


def test_anls_by_hand():
    assert [M.similarity(r, p) for r, p in zip(REF, PRED)] == pytest.approx([1, 7 / 9, 0.9, 0, 0, 1])
    # (1 + 7/9 + 0.9 + 0 + 0 + 1) / 6 = 3.6778 / 6 = 0.61296
    assert M.anls(PRED, REF, ROWS) == pytest.approx((1 + 7 / 9 + 0.9 + 1) / 6)


def test_exact_match_by_hand():
    assert M.em(PRED, REF, ROWS) == pytest.approx(2 / 6)  # rows 1 and 6


def test_per_field_by_hand():
    # total rows 1, 4, 6: ANLS (1 + 0 + 1) / 3, EM 2/3
    # vendor rows 2, 5: ANLS (7/9 + 0) / 2, EM 0;  date row 3: ANLS 0.9, EM 0
    assert M.anls_for("total")(PRED, REF, ROWS) == pytest.approx(2 / 3)
    assert M.anls_for("vendor")(PRED, REF, ROWS) == pytest.approx(7 / 18)
    assert M.anls_for("date")(PRED, REF, ROWS) == pytest.approx(0.9)
    assert M.em_for("total")(PRED, REF, ROWS) == pytest.approx(2 / 3)
    assert M.em_for("vendor")(PRED, REF, ROWS) == 0.0
    assert M.anls_for("iban")(PRED, REF, ROWS) == 0.0  # no row asks it


def test_the_field_is_read_from_field_or_question_type():
    rows = [SimpleNamespace(meta={"field": "vendor"}), SimpleNamespace(meta={"question_type": "vendor"}),
            SimpleNamespace(meta={"question_type": "paid", "vendor": "Acme Supplies"})]
    assert [M.field_of(r) for r in rows] == ["vendor", "vendor", "paid"]
    # vendor rows: "acme supplies" vs "acme suppl" -> NL 3/13, s = 10/13; and an exact hit
    assert M.anls_for("vendor")(["acme suppl", "nordic tech", "yes"], ["acme supplies", "nordic tech", "no"], rows) \
        == pytest.approx((10 / 13 + 1) / 2)


def test_fields_match_the_generator():
    generator = pytest.importorskip("dsvl_adapt_finance.generator")
    assert tuple(generator.QUESTION_TYPES) == FIELDS
    rows = generator.generate_rows("test", 18)
    assert {M.field_of(r) for r in rows} == set(FIELDS)
    refs = [r["answer"] for r in rows]
    assert M.anls(refs, refs, rows) == 1.0 and all(M.em_for(f)(refs, refs, rows) == 1.0 for f in FIELDS)


def test_other_accepted_answers_in_meta_count():
    rows = [SimpleNamespace(meta={"answers": ["12.5"]})]
    # best over {"12.50": NL 1/5 -> 0.8, "12.5": 1}
    assert M.anls(["12.5"], ["12.50"], rows) == 1.0 and M.em(["12.5"], ["12.50"], rows) == 1.0
    assert M.anls(["12.5"], ["12.50"], []) == pytest.approx(0.8) and M.em(["12.5"], ["12.50"], []) == 0.0


# ------------------------------------------------------------------------------ loaders
def _page(text, size=(300, 120)):
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).rectangle([20, 40, 200, 80], fill="black")
    ImageDraw.Draw(img).text((20, 10), text, fill="black")
    return img


def _pdf_folder(tmp_path, split="test", labels=None):
    folder = tmp_path / split
    folder.mkdir(parents=True)
    first, second = _page("INVOICE 17"), _page("TOTAL 12.50", size=(200, 300))
    first.save(folder / "invoice.pdf", "PDF", resolution=72, save_all=True, append_images=[second])
    lines = labels or [
        {"file": "invoice.pdf", "page": 1, "question": "What is the invoice number?", "answer": "17",
         "meta": {"field": "invoice_number"}},
        {"file": "invoice.pdf", "page": 2, "question": "What is the total?", "answer": "12.50",
         "meta": {"field": "total"}},
    ]
    (folder / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


def test_pdf_pages_load_as_images(registry, tmp_path):
    _pdf_folder(tmp_path)
    split = load_split(_spec(registry), _request("test", tmp_path))
    first, second = split.rows
    # rendered at 144 dpi = 2x the 72 dpi the page was written at
    assert first.image.size == (600, 240) and second.image.size == (400, 600)
    assert first.meta == {"field": "invoice_number", "file": "invoice.pdf", "page": 1}
    pixels = np.asarray(first.image)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[120, 200].max() < 60  # paper white, box black
    assert second.answer == "12.50" and second.meta["page"] == 2


def test_corrupt_pdf_fails_by_name(registry, tmp_path):
    folder = _pdf_folder(tmp_path, labels=[{"file": "broken.pdf", "question": "Total?", "answer": "1"}])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 20)
    with pytest.raises(DataError) as info:
        load_split(_spec(registry), _request("test", tmp_path))
    assert f"{folder / 'labels.jsonl'}:1" in str(info.value) and f"{folder / 'broken.pdf'}" in str(info.value)
    assert "not a readable PDF" in str(info.value)


def test_missing_page_fails_by_name_and_page(registry, tmp_path):
    _pdf_folder(tmp_path, labels=[{"file": "invoice.pdf", "page": 3, "question": "Total?", "answer": "1"}])
    with pytest.raises(DataError, match=r"invoice\.pdf: has no page 3 \(it has 2 pages"):
        load_split(_spec(registry), _request("test", tmp_path))


def test_jsonl_loader(registry, tmp_path):
    _page("TOTAL 3.00").save(tmp_path / "doc.png")
    line = {"image": "doc.png", "question": "What is the total?", "answer": "3.00", "meta": {"field": "total"}}
    (tmp_path / "validation.jsonl").write_text(json.dumps(line) + "\n")
    split = load_split(_spec(registry), _request("validation", tmp_path))
    assert split.rows[0].answer == "3.00" and split.rows[0].image.size == (300, 120)


# ------------------------------------------------------------------------------ config
def test_plugin_passes_the_conformance_kit():
    from dsvl_adapt.testing import check_plugin

    check_plugin("finance").raise_for_problems()


def test_validate_composes_the_vertical():
    done = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "validate", "vertical=finance"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "vertical=finance" in done.stdout
