"""General ability: the pretrained reference base (cached), replay of general rows, and forgetting that shows.

The reference presets can learn the core general set before the vertical fine-tune
(``model.pretrain_general``), once per machine, then taken from a cache. Replay
(``finetune.replay_general``, ``distill.replay_general``) mixes general rows into training so that
a long vertical fine-tune does not wipe out what the base knew; the scorecard's general row shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

import dsvl_adapt
from dsvl_adapt.api import validate
from dsvl_adapt.errors import ConfigError

QUICK_PRETRAIN = ["model.pretrain_general=true", "model.pretrain.steps=4", "model.pretrain.batch_size=4",
                  "model.pretrain.rows=16", "model.pretrain.validation_rows=8", "model.pretrain.warmup_steps=1"]


def _load_figures(run_dir: Path) -> dict:
    return json.loads((run_dir / "stages" / "load" / "stage.json").read_text())["figures"]


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "stages" / "load" / "base" / "model.safetensors"))


def test_the_pretrained_base_is_trained_once_then_taken_from_the_user_cache(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    common = [*tiny_overrides, *QUICK_PRETRAIN, "pipeline.stages=[load]"]
    dsvl_adapt.run(common, run_dir=tmp_path / "first")
    first = _load_figures(tmp_path / "first")["pretrain_general"]
    assert first["from_cache"] is False and first["steps"] == 4
    entry = Path(first["cache"])
    assert entry.parent == tmp_path / "xdg" / "dsvl-adapt" / "pretrained"
    assert (entry / "pretrain.json").is_file() and not list(entry.parent.glob(".*partial"))
    assert 0 <= first["general_floor"] <= 1 and 0 <= first["general_accuracy"] <= 1

    dsvl_adapt.run(common, run_dir=tmp_path / "second")
    second = _load_figures(tmp_path / "second")["pretrain_general"]
    assert second["from_cache"] is True and second["key"] == first["key"]
    a, b = _weights(tmp_path / "first"), _weights(tmp_path / "second")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)



def test_the_cache_key_follows_what_the_weights_depend_on():
    from dsvl_adapt.config import GeneralPretrainSection
    from dsvl_adapt.models.presets import get_preset
    from dsvl_adapt.models.pretrain import pretrain_key
    from dsvl_adapt.models.tokenizer import train_tokenizer
    from dsvl_adapt.plugins import get_registry

    prompt = get_registry().prompts.get("general-vqa")
    settings = GeneralPretrainSection(steps=10, lr=1e-3)
    tokenizer = train_tokenizer(["Is the part ok? yes"])

    def key(**change):
        args = dict(preset=get_preset("reference-tiny"), tokenizer=tokenizer, settings=settings, seed=0,
                    device="cpu", prompt=prompt) | change
        return pretrain_key(args.pop("preset"), args.pop("tokenizer"), args.pop("settings"), **args)

    same = key()
    assert key() == same
    others = [key(settings=GeneralPretrainSection(steps=11, lr=1e-3)), key(seed=1), key(device="cuda"),
              key(preset=get_preset("reference-small")), key(tokenizer=train_tokenizer(["Is the scan clear? no"])),
              key(prompt=SimpleNamespace(system="Other.", user=prompt.user))]
    assert same not in others and len(set(others)) == len(others)


def test_a_run_cache_dir_holds_the_pretrained_base(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dsvl_adapt.run([*tiny_overrides, *QUICK_PRETRAIN, "pipeline.stages=[load]", f"cache_dir={tmp_path / 'cache'}"],
                   run_dir=tmp_path / "run")
    record = _load_figures(tmp_path / "run")["pretrain_general"]
    assert Path(record["cache"]).parent == tmp_path / "cache" / "pretrained"
    assert not (tmp_path / "xdg").exists()


def test_switched_off_the_base_is_the_random_preset(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dsvl_adapt.run([*tiny_overrides, *QUICK_PRETRAIN, "model.pretrain_general=false", "pipeline.stages=[load]"],
                   run_dir=tmp_path / "run")
    assert "pretrain_general" not in _load_figures(tmp_path / "run")
    assert not (tmp_path / "xdg").exists()


@pytest.mark.parametrize("key", ["finetune.replay_general", "distill.replay_general"])
@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_a_replay_share_outside_0_to_1_is_refused_naming_the_field(key, value):
    with pytest.raises(ConfigError) as info:
        validate([f"{key}={value}"])
    assert key in str(info.value)


def test_replay_adds_general_rows_that_make_up_the_share(tiny_overrides):
    from dsvl_adapt.data.replay import with_general_replay
    from dsvl_adapt.models.checkpoint import build_reference
    from dsvl_adapt.models.tokenizer import train_tokenizer
    from dsvl_adapt.plugins import get_registry

    config = validate(tiny_overrides)
    _, processor = build_reference("reference-tiny", train_tokenizer(["Is the part ok? yes"]))
    context = SimpleNamespace(registry=get_registry(), config=config)
    vertical = [SimpleNamespace(prompt_ids=[1], answer_ids=[2], pixels={})] * 40
    assert with_general_replay(context, processor, vertical, 0.0) == vertical
    mixed = with_general_replay(context, processor, vertical, 0.2)
    assert mixed[:40] == vertical and len(mixed) == 50  # 10 of 50 rows: a share of 0.2
    general_prompt = get_registry().prompts.get("general-vqa").system
    extra = processor.tokenizer.decode(mixed[40].prompt_ids)
    assert general_prompt in extra  # encoded with the general set's own prompt


# A tiny base that knows the general set, then a long vertical fine-tune (full parameters) with and
# without replay. The base, pretrained once, is shared by both runs through the cache.
FORGETTING = ["vertical=industrial", "model=reference-tiny", "model.pretrain_general=true", "pipeline=teacher",
              "finetune.full_when=always", "finetune.full.steps=300", "finetune.full.lr=2e-3",
              "finetune.full.eval_every=100", "finetune.full.checkpoint_every=100", "finetune.lora.train.steps=0",
              "data.train_size=200", "data.validation_size=16", "data.test_size=32", "score.general_size=96",
              "score.models=[base,teacher]", "score.latency_repeats=2", "score.latency_warmup=1"]


@pytest.mark.slow
def test_a_long_finetune_without_replay_forgets_and_replay_keeps_general_ability(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    forgot = dsvl_adapt.run([*FORGETTING, cache, "finetune.replay_general=0"], run_dir=tmp_path / "no-replay")
    kept = dsvl_adapt.run([*FORGETTING, cache, "finetune.replay_general=0.2"], run_dir=tmp_path / "replay")
    assert forgot is not None and kept is not None
    floor = _load_figures(tmp_path / "no-replay")["pretrain_general"]["general_floor"]
    base = forgot.general["base"]
    assert kept.general["base"] == base  # the same pretrained base
    assert base > floor + 0.15, (base, floor)  # the base knows the general set
    assert forgot.general["teacher"] < base - 0.1, forgot.general  # forgetting shows in the scorecard
    assert kept.general["teacher"] > forgot.general["teacher"] + 0.1, (kept.general, forgot.general)
    assert kept.general["teacher"] >= base - 0.1, (kept.general, base)  # replay keeps (nearly) all of it
    assert kept.accuracy["teacher"] > 0.5 and forgot.accuracy["teacher"] > 0.5  # both learnt the vertical
