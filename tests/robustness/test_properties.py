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


# dotted path -> (type, lower bound, lower inclusive, upper bound, upper inclusive), as RunConfig declares them
NUMERIC_FIELDS = {
    "finetune.full.lr": (float, 0.0, False, 1.0, True),
    "finetune.lora.r": (int, 1, True, 1024, True),
    "finetune.lora.dropout": (float, 0.0, True, 1.0, False),
    "data.train_size": (int, 1, True, None, True),
    "prune.structural.lm_mlp_ratio": (float, 0.0, True, 1.0, False),
    "distill.temperature": (float, 0.0, False, None, True),
    "score.latency_repeats": (int, 1, True, None, True),
}


def _should_accept(path: str, value: object) -> bool:
    """Whether pydantic (lax mode) must accept ``value`` for the field at ``path``."""
    kind, low, low_inclusive, high, high_inclusive = NUMERIC_FIELDS[path]
    if isinstance(value, str) or isinstance(value, bool):
        return False  # the strategy's strings are letters only: never a number
    if kind is int and isinstance(value, float) and not value.is_integer():
        return False  # 2.5 is not an int; 3.0 is
    above = value >= low if low_inclusive else value > low
    below = high is None or (value <= high if high_inclusive else value < high)
    return above and below


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(NUMERIC_FIELDS)),
       st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
                 st.integers(-10, 10**6), st.text(alphabet="abcxyz", max_size=5),
                 st.sampled_from([0, 1, 0.0, 1.0, 0.5, -0.0, 1024, 1025, 2.0, 2.5])))
def test_config_validation_accepts_valid_values_and_rejects_invalid_ones_by_name(base_config, path, value):
    """Every in-range value is accepted; every out-of-range or non-numeric one is refused, naming the field."""
    import copy

    raw = copy.deepcopy(base_config)
    node = raw
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    if _should_accept(path, value):
        config = validate(raw)
        accepted = config
        for key in path.split("."):
            accepted = getattr(accepted, key)
        assert accepted == value
    else:
        with pytest.raises(ConfigError) as refused:
            validate(raw)
        assert path in str(refused.value)


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
                          st.sampled_from(["scratch", "dent", "none", "crack", "stain", "red", "cat"])),
                min_size=1, max_size=30))
def test_industrial_rates_stay_in_range_or_say_not_applicable(pairs):
    """A rate is a fraction over the parts it is about, and None (not applicable) exactly when the test
    answers hold no such part: never 0.0, its best value, for data it cannot judge."""
    from dsvl_adapt_industrial.metrics import LABELS, accuracy, miss_rate, not_applicable, overkill_rate

    predictions, references = map(list, zip(*pairs))
    defective = [r for r in references if r in LABELS and r != "none"]
    good = [r for r in references if r == "none"]
    assert 0.0 <= accuracy(predictions, references) <= 1.0
    assert accuracy(references, references) == 1.0
    for metric, parts in ((miss_rate, defective), (overkill_rate, good)):
        value = metric(predictions, references)
        if parts:
            assert 0.0 <= value <= 1.0 and metric(references, references) == 0.0
            assert metric.__name__ not in not_applicable(references)
        else:
            assert value is None and metric(references, references) is None
            assert metric.__name__ in not_applicable(references)
    if defective:  # calling every part good misses every defect
        assert miss_rate(["none"] * len(references), references) == 1.0
