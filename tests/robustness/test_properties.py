"""Property tests (hypothesis): the row parser, config validation and metrics hold for any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsvl_adapt.config import ConfigError, validate
from dsvl_adapt.data.rows import parse_row
from dsvl_adapt.errors import DataError
from dsvl_adapt.metrics import exact_match, normalize_answer
from dsvl_adapt.config import compose

IMAGE = Image.new("RGB", (4, 4))
values = st.one_of(st.none(), st.text(max_size=20), st.binary(max_size=20), st.integers(), st.lists(st.integers()),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["image", "question", "answer", "id", "meta", "extra"]), values, max_size=6))
def test_row_parser_returns_a_row_or_a_data_error_naming_the_source(raw):
    raw = dict(raw)
    if "image" in raw and raw["image"] is not None:
        raw["image"] = IMAGE
    try:
        row = parse_row(raw, source="rows.jsonl:3")
    except DataError as exc:
        assert "rows.jsonl:3" in str(exc)
    else:
        assert row.question.strip() and row.answer.strip() and row.image.mode == "RGB"


@pytest.fixture(scope="module")
def base_config():
    return compose([])[1]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["finetune.full.lr", "finetune.lora.r", "finetune.lora.dropout", "data.train_size",
                        "prune.structural.lm_mlp_ratio", "distill.temperature", "score.latency_repeats"]),
       st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
                 st.integers(-10, 10**6), st.text(max_size=5)))
def test_config_validation_accepts_or_names_the_field(base_config, path, value):
    import copy

    raw = copy.deepcopy(base_config)
    node = raw
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    try:
        validate(raw)
    except ConfigError as exc:
        assert path in str(exc)


answers = st.text(alphabet="abc .!?XYZ", max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(answers, answers), min_size=1, max_size=20))
def test_exact_match_is_a_fraction_and_perfect_on_references(pairs):
    predictions, references = map(list, zip(*pairs))
    value = exact_match(predictions, references)
    assert 0.0 <= value <= 1.0
    assert exact_match(references, references) == 1.0
    assert normalize_answer(normalize_answer(predictions[0])) == normalize_answer(predictions[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["scratch", "dent", "none", "crack", "stain", "blob"]),
                          st.sampled_from(["scratch", "dent", "none", "crack", "stain"])), min_size=1, max_size=30))
def test_industrial_rates_stay_in_range_and_are_consistent(pairs):
    from dsvl_adapt_industrial.metrics import accuracy, miss_rate, overkill_rate

    predictions, references = map(list, zip(*pairs))
    for metric in (accuracy, miss_rate, overkill_rate):
        assert 0.0 <= metric(predictions, references) <= 1.0
    assert accuracy(references, references) == 1.0
    assert miss_rate(references, references) == 0.0 and overkill_rate(references, references) == 0.0
