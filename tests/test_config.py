"""Config: Hydra composes, pydantic validates, errors name the field."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dsvl_adapt.api import validate
from dsvl_adapt.config import compose
from dsvl_adapt.errors import ConfigError


def test_default_config_composes_and_validates():
    config = validate([])
    assert config.vertical.name == "industrial"
    assert config.model.preset == "reference-small"
    assert config.pipeline.stages[0] == "load"


def test_group_choice_and_value_override(tiny_overrides):
    config, raw = compose(tiny_overrides + ["finetune.lora.r=2"])
    assert config.model.preset == "reference-tiny"
    assert config.finetune.lora.r == 2
    assert raw["finetune"]["lora"]["r"] == 2


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("finetune.full.lr=-1", "finetune.full.lr"),
        ("finetune.lora.r=0", "finetune.lora.r"),
        ("finetune.lora.dropout=1.5", "finetune.lora.dropout"),
        ("data.on_bad_row=ignore", "data.on_bad_row"),
        ("finetune.lora.target_modules=(", "finetune.lora.target_modules"),
        ("+finetune.lorra=3", "finetune.lorra"),
    ],
)
def test_bad_values_name_their_field(override, field):
    with pytest.raises(ConfigError) as info:
        validate([override])
    assert field in str(info.value)


def test_misspelled_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        validate(["finetune.lora.rr=8"])
    message = str(info.value)
    assert "finetune.lora.rr" in message and "finetune.lora.r" in message


def test_unknown_vertical_lists_installed():
    with pytest.raises(ConfigError) as info:
        validate(["vertical=nope"])
    assert "nope" in str(info.value) and "industrial" in str(info.value)


def test_unknown_stage_lists_registered():
    with pytest.raises(ConfigError) as info:
        validate(["pipeline.stages=[load,fintune]"])
    assert "fintune" in str(info.value) and "finetune" in str(info.value)


def test_model_needs_exactly_one_source():
    with pytest.raises(ConfigError) as info:
        validate(["model.preset=null"])
    assert "model" in str(info.value)


@pytest.mark.parametrize("override", ["finetune.lr=-1", "finetune.full.lr=-1", "vertical=nope", "finetune.lorra=1"])
def test_cli_rejects_bad_config_fast(override):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", override], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert time.perf_counter() - started < 10
    assert "error:" in result.stderr and "Traceback" not in result.stderr
