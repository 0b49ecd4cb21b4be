"""A user's data folder as users have it (data.source): split names, sizes, symbolic links, duplicate ids,
test rows that are train rows, and the checks made before the first stage (`validate` and `run`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dsvl_adapt
from dsvl_adapt.api import execute, validate
from dsvl_adapt.config import compose
from dsvl_adapt.data.loading import load_configured_split
from dsvl_adapt.errors import ConfigError, DataError
from dsvl_adapt.plugins import get_registry

SETTINGS = ["vertical=industrial", "finetune=fast", "distill=fast", "score.latency_repeats=1", "score.latency_warmup=0",
            "score.general_size=0"]
TINY = ["model=reference-tiny", *SETTINGS]
SIZES = {"train": 12, "validation": 4, "test": 20}
ANSWERS = ("scratch", "dent", "none")


def make_folder(root: Path, *, validation_name: str = "validation", image_dir: str = "images",
                sizes: dict[str, int] = SIZES) -> Path:
    """A folder of distinct random 16x16 images and one JSONL file per split, rows with ids."""
    rng = np.random.default_rng(0)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    for split, count in sizes.items():
        lines = []
        for i in range(count):
            name = f"{split}-{i}.png"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / image_dir / name)
            lines.append(json.dumps({"id": f"{split}-{i}", "image": f"{image_dir}/{name}",
                                     "question": "What defect is visible?", "answer": ANSWERS[i % 3]}))
        file = validation_name if split == "validation" else split
        (root / f"{file}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _validate(folder: Path, *overrides: str) -> list[str]:
    logs: list[str] = []
    validate([*TINY, f"data.source={folder}", *overrides], log=logs.append)
    return logs


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def _stage_figures(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "stages" / stage / "stage.json").read_text())["figures"]


# ------------------------------------------------------------------------------ split names
@pytest.mark.parametrize("name", ["val", "valid", "dev"])
def test_validation_split_may_be_called_val_valid_or_dev(tmp_path, name):
    folder = make_folder(tmp_path / "data", validation_name=name)
    logs = _validate(folder)
    assert any(f"validation 4 ({name}.jsonl)" in line for line in logs), logs
    config, _ = compose([*TINY, f"data.source={folder}"])
    split = load_configured_split(config, get_registry(), "validation", 32)
    assert [Path(f).name for f in split.files] == [f"{name}.jsonl"] and len(split.rows) == 4


def test_two_files_for_the_validation_split_are_refused_naming_both(tmp_path):
    folder = make_folder(tmp_path / "data", validation_name="val")
    (folder / "dev.jsonl").write_text((folder / "val.jsonl").read_text())
    with pytest.raises(DataError, match=r"val\.jsonl and dev\.jsonl"):
        _validate(folder)


# ------------------------------------------------------------------------------ sizes
def test_sizes_take_a_seeded_sample_of_the_folder_in_file_order(tmp_path):
    folder = make_folder(tmp_path / "data")
    registry = get_registry()
    config, _ = compose([*TINY, f"data.source={folder}", "data.test_size=8"])
    first = load_configured_split(config, registry, "test", 32)
    again = load_configured_split(config, registry, "test", 32)
    ids = [row.id for row in first.rows]
    assert len(ids) == 8 and first.available == 20 and first.sampled
    assert ids == [row.id for row in again.rows]  # deterministic
    assert ids == sorted(ids, key=lambda i: int(i.split("-")[1]))  # file order kept
    other_seed, _ = compose([*TINY, f"data.source={folder}", "data.test_size=8", "seed=1"])
    assert [row.id for row in load_configured_split(other_seed, registry, "test", 32).rows] != ids


def test_a_size_above_the_split_uses_every_row_and_says_so_once(tmp_path):
    folder = make_folder(tmp_path / "data")
    logs = _validate(folder, "data.train_size=500", "data.validation_size=4", "data.test_size=20")
    notes = [line for line in logs if line.startswith("data:")]
    assert len(notes) == 1, logs
    assert "train: train.jsonl holds 12 usable rows, fewer than data.train_size=500; all are used" in notes[0]
    assert "validation" not in notes[0] and "test" not in notes[0]  # sizes that fit are not mentioned
    config, _ = compose([*TINY, f"data.source={folder}", "data.train_size=500"])
    split = load_configured_split(config, get_registry(), "train", 32)
    assert len(split.rows) == split.available == 12


# ------------------------------------------------------------------------------ symbolic links
def _link_image_folder(folder: Path, target: Path) -> None:
    """Move the images to ``target`` and leave ``folder/images`` as a relative symbolic link to it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder / "images", target)
    (folder / "images").symlink_to(os.path.relpath(target, folder))


def test_an_image_folder_linked_inside_the_data_folder_is_accepted(tmp_path):
    folder = make_folder(tmp_path / "data")
    _link_image_folder(folder, folder / "store" / "pictures")
    logs = _validate(folder)
    assert any("test 20 (test.jsonl)" in line for line in logs), logs


def test_an_image_folder_linked_outside_is_refused_with_the_reason_and_the_option(tmp_path):
    folder = make_folder(tmp_path / "data")
    elsewhere = tmp_path / "shared" / "pictures"
    _link_image_folder(folder, elsewhere)
    with pytest.raises(DataError) as refused:
        _validate(folder)
    message = str(refused.value)
    assert "train.jsonl:1" in message and "symbolic link" in message and str(folder / "images") in message
    assert f"data.allow_outside=[{elsewhere.resolve()}]" in message
    _validate(folder, f"data.allow_outside=[{tmp_path / 'shared'}]")  # allowed by name: accepted


def test_a_linked_image_file_is_judged_by_where_it_leads(tmp_path):
    folder = make_folder(tmp_path / "data")
    outside = tmp_path / "elsewhere.png"
    os.replace(folder / "images" / "test-3.png", outside)
    (folder / "images" / "test-3.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"test\.jsonl:4: .*symbolic link .*test-3\.png"):
        _validate(folder)
    _validate(folder, f"data.allow_outside=[{tmp_path}]")
    os.replace(outside, folder / "kept.png")  # the same link, now leading inside the data folder
    (folder / "images" / "test-3.png").unlink()
    (folder / "images" / "test-3.png").symlink_to(folder / "kept.png")
    _validate(folder)


def test_allow_outside_must_name_existing_folders(tmp_path):
    folder = make_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match="data.allow_outside"):
        _validate(folder, f"data.allow_outside=[{tmp_path / 'nope'}]")


# ------------------------------------------------------------------------------ duplicates and leakage
def test_duplicate_ids_in_a_split_are_refused_naming_file_lines_and_id(tmp_path):
    folder = make_folder(tmp_path / "data")
    rows = _rows(folder / "test.jsonl")
    rows[4]["id"] = rows[1]["id"]
    _write_rows(folder / "test.jsonl", rows)
    with pytest.raises(DataError) as refused:
        _validate(folder)
    message = str(refused.value)
    assert "test.jsonl:2 and" in message and "test.jsonl:5 both have id 'test-1'" in message


def _leak(folder: Path, count: int) -> None:
    """Make ``count`` test rows repeat train rows: the same picture in another file, the question recased."""
    train, test = _rows(folder / "train.jsonl"), _rows(folder / "test.jsonl")
    for i in range(count):
        copy = f"images/copy-{i}.png"
        Image.open(folder / train[i]["image"]).save(folder / copy)
        test[i * 2] = {**test[i * 2], "image": copy, "question": "  what DEFECT is visible "}
    _write_rows(folder / "test.jsonl", test)


def test_test_rows_that_repeat_train_rows_are_refused_with_count_and_examples(tmp_path):
    folder = make_folder(tmp_path / "data")
    _leak(folder, 2)
    with pytest.raises(DataError) as refused:
        _validate(folder)
    message = str(refused.value)
    assert "2 of 20 test rows are also train rows" in message and "data.max_overlap=2" in message
    assert "test.jsonl:1 = " in message and "train.jsonl:1" in message


def test_allowed_overlap_is_counted_in_the_load_stage_figures(tmp_path):
    folder = make_folder(tmp_path / "data")
    _leak(folder, 2)
    dsvl_adapt.run([*TINY, f"data.source={folder}", "data.max_overlap=2", "pipeline.stages=[load]"],
                   run_dir=tmp_path / "run")
    data = _stage_figures(tmp_path / "run", "load")["data"]
    assert data["test_train_overlap"] == 2 and len(data["test_train_overlap_examples"]) == 2
    assert data["splits"]["test"] == {"file": "test.jsonl", "rows": 20, "available": 20, "skipped": 0}


def test_generated_data_records_its_overlap_and_generator(tmp_path):
    dsvl_adapt.run([*TINY, "pipeline.stages=[load]", "data.train_size=16", "data.validation_size=4",
                    "data.test_size=8"], run_dir=tmp_path / "run")
    data = _stage_figures(tmp_path / "run", "load")["data"]
    assert data["test_train_overlap"] == 0 and data["source"] is None
    assert data["splits"]["test"]["rows"] == 8
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["generator"] == {"dataset": "industrial-surfaces", "seed": 0,
                                             "sizes": {"train": 16, "validation": 4, "test": 8}}


# ------------------------------------------------------------------------------ preflight
def test_a_broken_test_row_fails_validate_and_run_before_the_first_stage(tmp_path):
    folder = make_folder(tmp_path / "data")
    with (folder / "test.jsonl").open("a") as handle:
        handle.write('{"image": "images/test-0.png", "question": "What defect is visible?"}\n')
    validate = _cli("validate", *TINY, f"data.source={folder}", cwd=tmp_path)
    assert validate.returncode == 2 and "test.jsonl:21" in validate.stderr and "missing 'answer'" in validate.stderr
    assert "configuration is valid" not in validate.stdout
    run = _cli("run", *TINY, f"data.source={folder}", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 2 and "test.jsonl:21" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "run" / "stages").exists()


def test_a_data_source_that_does_not_exist_fails_validate(tmp_path):
    result = _cli("validate", *TINY, f"data.source={tmp_path / 'nonexistent'}", cwd=tmp_path)
    assert result.returncode == 2 and "data.source" in result.stderr and "does not exist" in result.stderr


def test_lora_target_modules_matching_nothing_fail_validate_with_the_module_paths():
    with pytest.raises(ConfigError) as refused:
        validate([*TINY, r"finetune.lora.target_modules=.*language_model\.layers\.\d+\.qproj"])
    message = str(refused.value)
    assert "matches no Linear module" in message and "model.language_model.layers.N.self_attn.q_proj" in message
    validate([*TINY, r"finetune.lora.target_modules=.*language_model\.layers\.\d+\.self_attn\.q_proj"])


def test_a_layer_map_naming_a_missing_layer_fails_validate():
    with pytest.raises(ConfigError, match=r"distill.layer_map: 1 -> 2 .*has 2 language-model layers"):
        validate([*TINY, "distill.layer_map={0: 1, 1: 2}"])
    validate([*TINY, "distill.layer_map={0: 1, 1: 1}"])
    validate([*TINY, "distill.layer_map={0: 1, 1: 2}", "pipeline.stages=[load,finetune]"])  # no distill


def test_the_meta_skeleton_has_the_module_paths_of_the_real_model(tmp_path):
    from dsvl_adapt.models.checkpoint import build_reference, load_checkpoint, save_checkpoint
    from dsvl_adapt.models.tokenizer import train_tokenizer
    from dsvl_adapt.preflight import linear_module_names, model_config

    import torch

    tokenizer = train_tokenizer(["What defect is visible? scratch dent none"] * 4, vocab_size=300)
    model, processor = build_reference("reference-tiny", tokenizer)
    save_checkpoint(model, processor, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    real = [name for name, module in loaded.named_modules() if isinstance(module, torch.nn.Linear)]
    preset, _ = compose(TINY)
    local, _ = compose([*SETTINGS, "model=local", f"model.path={tmp_path / 'ckpt'}"])
    assert linear_module_names(model_config(preset)) == real
    assert linear_module_names(model_config(local)) == real
    with pytest.raises(ConfigError, match=str(tmp_path / "ckpt")):
        validate([*SETTINGS, "model=local", f"model.path={tmp_path / 'ckpt'}", "distill.layer_map={0: 9}"])


# ------------------------------------------------------------------------------ data in the key and the manifest
def _change_one_label(path: Path) -> None:
    rows = _rows(path)
    rows[0]["answer"] = "dent" if rows[0]["answer"] != "dent" else "scratch"
    _write_rows(path, rows)


def _run(folder: Path, run_dir: Path, *overrides: str) -> list[str]:
    config, raw = compose([*TINY, f"data.source={folder}", f"run_dir={run_dir}", *overrides])
    logs: list[str] = []
    execute(config, raw, run_dir, log=logs.append)
    return logs


def test_a_changed_label_reruns_finetune_instead_of_taking_it_from_the_cache(tmp_path):
    folder = make_folder(tmp_path / "data")
    cache = f"cache_dir={tmp_path / 'cache'}"
    stages = ["pipeline.stages=[load,finetune]", "finetune.full.steps=4", "finetune.lora.train.steps=2"]
    _run(folder, tmp_path / "a", cache, *stages)
    same = _run(folder, tmp_path / "b", cache, *stages)
    assert any(line.startswith("[finetune] taken from the cache") for line in same), same  # the cache works
    _change_one_label(folder / "test.jsonl")
    changed = _run(folder, tmp_path / "c", cache, *stages)
    assert not any("taken from the cache" in line for line in changed), changed
    assert any(line.startswith("[finetune] data changed since the cached run") and "test.jsonl (changed)" in line
               for line in changed), changed
    assert not (tmp_path / "c" / "stages" / "finetune" / "from-cache.txt").exists()


def test_a_run_folder_resumed_after_its_data_changed_is_refused_naming_the_file(tmp_path):
    folder = make_folder(tmp_path / "data")
    _run(folder, tmp_path / "run", "pipeline.stages=[load]")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["kind"] == "folder" and "images/test-0.png" in manifest["data"]["files"]
    assert len(manifest["data"]["files"]["train.jsonl"]["sha256"]) == 64
    assert all("skipped" in line for line in _run(folder, tmp_path / "run", "pipeline.stages=[load]")
               if line.startswith("[load]"))  # unchanged data resumes
    _change_one_label(folder / "train.jsonl")
    Image.new("RGB", (16, 16)).save(folder / "images" / "extra.png")
    with pytest.raises(ConfigError) as refused:
        _run(folder, tmp_path / "run", "pipeline.stages=[load]")
    message = str(refused.value)
    assert "train.jsonl (changed)" in message and "images/extra.png (added)" in message
    assert "restore the data" in message and "new run_dir" in message


# ------------------------------------------------------------------------------ as the user runs it
def test_val_jsonl_a_linked_image_folder_and_test_size_8_run_and_score_8_rows(tmp_path):
    folder = make_folder(tmp_path / "data", validation_name="val")
    _link_image_folder(folder, folder / "store" / "pictures")
    result = _cli("run", *TINY, f"data.source={folder}", "data.test_size=8", "pipeline.stages=[load,finetune,score]",
                  f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test: a seeded sample of 8 of the 20 rows of test.jsonl (data.test_size=8)" in result.stderr
    card = json.loads((tmp_path / "run" / "scorecard.json").read_text())
    assert card["test_rows"] == 8 and card["stages"]["load"]["data"]["test_train_overlap"] == 0
    data = _stage_figures(tmp_path / "run", "load")["data"]
    assert data["splits"]["validation"]["file"] == "val.jsonl"
    assert data["splits"]["test"] == {"file": "test.jsonl", "rows": 8, "available": 20, "skipped": 0}
