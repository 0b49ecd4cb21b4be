"""The ecommerce vertical: registry, metrics on hand-checked examples, JSONL and catalogue-CSV loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from dsvl_adapt.data.loading import load_split
from dsvl_adapt.errors import DataError
from dsvl_adapt.plugins import PluginManager
from dsvl_adapt.schemas import DatasetRequest

pytest.importorskip("dsvl_adapt_ecommerce")

from dsvl_adapt_ecommerce import ATTRIBUTES, CATALOGUE_QUESTIONS, DATASET  # noqa: E402
from dsvl_adapt_ecommerce import metrics as M  # noqa: E402


@pytest.fixture(scope="module")
def registry():
    return PluginManager().registry


def _rows(*attributes):
    return [SimpleNamespace(meta={"attribute": a}) for a in attributes]


def _spec(registry):
    return registry.datasets.get(DATASET)


def _request(split, source, size=1):
    return DatasetRequest(split=split, size=size, source=source)


# ------------------------------------------------------------------------------ registry
def test_registry_holds_the_vertical_and_its_parts(registry):
    vertical = registry.vertical("ecommerce")
    assert vertical.primary_metric == "attribute_accuracy"
    assert vertical.dataset in registry.datasets and vertical.prompt in registry.prompts
    assert all(m in registry.metrics for m in vertical.metrics)
    assert {f"{a}_accuracy" for a in ("category", "colour", "pattern")} <= set(vertical.metrics)
    assert vertical.targets == ["a100-serving", "cpu-batch"]
    a100 = registry.targets.get("a100-serving")
    assert a100.device == "gpu" and a100.throughput_rps and a100.batch_size == 32 and a100.latency_p90_ms is None
    assert registry.targets.get("cpu-batch").device == "cpu"
    assert vertical.objectives.min_retention is not None
    assert "pkg://dsvl_adapt_ecommerce.conf" in registry.config_search_path
    assert not [f for f in registry.failures if "ecommerce" in f]


# ------------------------------------------------------------------------------ metrics
# attribute  reference  prediction
#  colour    red        red             hit
#  colour    blue       red             miss (and a false positive for colour:red)
#  colour    red        Red.            hit after normalisation
#  pattern   striped    striped         hit
#  pattern   plain      floral print    miss (no such class: nobody's false positive)
#  category  dress      dress           hit
PRED = ["red", "red", "Red.", "striped", "floral print", "dress"]
REF = ["red", "blue", "red", "striped", "plain", "dress"]
ROWS = _rows("colour", "colour", "colour", "pattern", "pattern", "category")


def test_per_attribute_accuracy_by_hand():
    assert M.accuracy_for("colour")(PRED, REF, ROWS) == pytest.approx(2 / 3)
    assert M.accuracy_for("pattern")(PRED, REF, ROWS) == pytest.approx(1 / 2)
    assert M.accuracy_for("category")(PRED, REF, ROWS) == pytest.approx(1.0)
    assert M.accuracy_for("material")(PRED, REF, ROWS) == 0.0  # no row asks it
    # mean of the three attributes' accuracies: (2/3 + 1/2 + 1) / 3 = 13/18 = 0.7222
    assert M.attribute_accuracy(PRED, REF, ROWS) == pytest.approx(13 / 18)


def test_macro_f1_by_hand():
    # classes (from the references): colour:red, colour:blue, pattern:striped, pattern:plain, category:dress
    # colour:red      TP 2, FP 1 (row 2), FN 0  -> F1 = 2*2 / (2*2 + 1 + 0) = 4/5
    # colour:blue     TP 0, FP 0, FN 1          -> 0
    # pattern:striped TP 1                      -> 1
    # pattern:plain   TP 0, FN 1 ("floral print" is no class) -> 0
    # category:dress  TP 1                      -> 1
    # macro = (0.8 + 0 + 1 + 0 + 1) / 5 = 0.56
    per = M.per_class_f1(PRED, REF, ROWS)
    assert per[("colour", "red")] == pytest.approx(0.8) and per[("colour", "blue")] == 0.0
    assert M.attribute_macro_f1(PRED, REF, ROWS) == pytest.approx(0.56)


def test_a_value_predicted_for_another_attribute_is_no_false_positive():
    # a pattern question answered "red" must not count against colour:red
    #   colour:red TP 1 -> 1; pattern:plain FN 1 -> 0; macro = 0.5
    pred, ref, rows = ["red", "red"], ["red", "plain"], _rows("colour", "pattern")
    assert M.per_class_f1(pred, ref, rows)[("colour", "red")] == 1.0
    assert M.attribute_macro_f1(pred, ref, rows) == pytest.approx(0.5)


def test_the_attribute_is_read_from_attribute_asked_or_question_type():
    rows = [SimpleNamespace(meta={"attribute": "colour"}), SimpleNamespace(meta={"asked": "colour"}),
            SimpleNamespace(meta={"question_type": "colour", "colour": "red"}), SimpleNamespace(meta={})]
    assert [M.attribute_of(r) for r in rows] == ["colour", "colour", "colour", ""]
    accuracy = M.accuracy_for("colour")(["red", "red", "blue", "x"], ["red", "red", "red", "x"], rows)
    assert accuracy == pytest.approx(2 / 3)  # the row without an attribute is not a colour row


def test_vocabulary_matches_the_generator():
    generator = pytest.importorskip("dsvl_adapt_ecommerce.generator")
    assert tuple(generator.QUESTION_TYPES) == ATTRIBUTES
    for attribute, question in CATALOGUE_QUESTIONS.items():
        assert question in generator.QUESTIONS[attribute]
    rows = generator.generate_rows("test", 12, image_size=32)
    assert [M.attribute_of(r) for r in rows] == [r["meta"]["question_type"] for r in rows]
    refs = [r["answer"] for r in rows]
    assert M.attribute_accuracy(refs, refs, rows) == 1.0 and M.attribute_macro_f1(refs, refs, rows) == 1.0


def test_metrics_are_perfect_on_references_and_reject_length_mismatch():
    assert M.attribute_accuracy(REF, REF, ROWS) == 1.0 and M.attribute_macro_f1(REF, REF, ROWS) == 1.0
    with pytest.raises(ValueError):
        M.attribute_accuracy(["a"], ["a", "b"], [])


# ------------------------------------------------------------------------------ loaders
def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)


def test_jsonl_loader(registry, tmp_path):
    _image(tmp_path / "images" / "a.png")
    line = {"image": "images/a.png", "question": "What colour is it?", "answer": "red", "meta": {"attribute": "colour"}}
    (tmp_path / "test.jsonl").write_text(json.dumps(line) + "\n")
    split = load_split(_spec(registry), _request("test", tmp_path))
    assert len(split.rows) == 1 and split.rows[0].answer == "red" and split.rows[0].meta["attribute"] == "colour"


def _catalogue(tmp_path, lines):
    _image(tmp_path / "images" / "p1.png")
    _image(tmp_path / "images" / "p2.png", (20, 20, 160))
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_catalogue_csv_gives_one_row_per_attribute(registry, tmp_path):
    _catalogue(tmp_path, [
        "sku,image_path,category,Color,pattern,brand",   # 'Color' is read as colour
        "A1,images/p1.png,dress,red,striped,Acme",
        "A2,images/p2.png,shirt,navy,,Acme",              # pattern not annotated: two questions
    ])
    split = load_split(_spec(registry), _request("train", tmp_path))
    asked = [(r.id, r.meta["asked"], r.answer) for r in split.rows]
    assert asked == [("A1/category", "category", "dress"), ("A1/colour", "colour", "red"),
                     ("A1/pattern", "pattern", "striped"), ("A2/category", "category", "shirt"),
                     ("A2/colour", "colour", "navy")]
    first = split.rows[0]
    assert first.meta == {"sku": "A1", "category": "dress", "colour": "red", "pattern": "striped", "brand": "Acme",
                          "question_type": "category", "asked": "category"}
    assert first.question == CATALOGUE_QUESTIONS["category"] and first.image.size == (24, 24)
    assert [M.attribute_of(r) for r in split.rows] == ["category", "colour", "pattern", "category", "colour"]


def test_catalogue_row_missing_a_column_fails_by_file_and_line(registry, tmp_path):
    _catalogue(tmp_path, [
        "image_path,category,colour,pattern",
        "images/p1.png,dress,red,striped",
        "images/p2.png,shirt,navy",  # line 3: one cell short
    ])
    with pytest.raises(DataError) as info:
        load_split(_spec(registry), _request("train", tmp_path))
    message = str(info.value)
    assert f"{tmp_path / 'train.csv'}:3" in message and "missing column(s) ['pattern']" in message
    skipped = load_split(_spec(registry), _request("train", tmp_path), on_bad_row="skip")
    assert len(skipped.rows) == 3 and len(skipped.skipped) == 1


def test_catalogue_header_without_image_column_fails_by_name(registry, tmp_path):
    (tmp_path / "train.csv").write_text("sku,category\nA1,dress\n")
    with pytest.raises(DataError, match=r"train\.csv:1: header .* needs an 'image_path' column"):
        load_split(_spec(registry), _request("train", tmp_path))


def test_missing_split_names_both_formats(registry, tmp_path):
    with pytest.raises(DataError, match=r"validation\.jsonl .*validation\.csv"):
        load_split(_spec(registry), _request("validation", tmp_path))


# ------------------------------------------------------------------------------ config
def test_plugin_passes_the_conformance_kit():
    from dsvl_adapt.testing import check_plugin

    check_plugin("ecommerce").raise_for_problems()


def test_validate_composes_the_vertical():
    done = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "validate", "vertical=ecommerce"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "vertical=ecommerce" in done.stdout
