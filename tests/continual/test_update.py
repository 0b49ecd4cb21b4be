"""`dsvl-adapt update` / `dsvl_adapt.update`: a finished run updated with new rows as a new version.

The default suite checks what is refused before any stage (on a small finished run without quantize/score) and
the replay buffer's selection; the `slow` tests run whole updates of the shared tiny run and read their
scorecards, buffers, lineage and the parent's files.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import dsvl_adapt
from dsvl_adapt.continual.buffer import next_buffer, read_buffer, select_rows, write_split
from dsvl_adapt.errors import ConfigError, DataError
from dsvl_adapt.schemas import Row

SMALL_PARENT = ["vertical=industrial", "model=reference-tiny", "model.pretrain_general=false", "finetune=fast",
                "distill=fast",
                "pipeline.stages=[load,finetune,prune.structural,distill]", "data.train_size=24",
                "data.validation_size=8", "data.test_size=8"]


def write_increment(directory: Path, *, seed: int = 7, sizes: tuple[int, int, int] = (24, 8, 12)) -> Path:
    """A small generated increment of industrial rows (another seed than the parent's) in the data.source layout."""
    from dsvl_adapt_industrial.generator import generate_rows

    for split, size in zip(("train", "validation", "test"), sizes):
        write_split(generate_rows(split, size, seed=seed, image_size=32), directory, split)
    return directory


def folder_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (symbolic links by their target path)."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(directory))] = "link:" + str(path.readlink())
        elif path.is_file():
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run with a teacher and a pruned, distilled student (no quantize or score: seconds, not minutes)."""
    run_dir = tmp_path_factory.mktemp("small-parent") / "run"
    dsvl_adapt.run(SMALL_PARENT, run_dir=run_dir)
    return run_dir


# -- refused before any stage ------------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_finished_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="holds no manifest.json"):
        dsvl_adapt.update(tmp_path, ["data.source=" + str(tmp_path)])
    unfinished = tmp_path / "unfinished"
    (unfinished / "stages" / "load").mkdir(parents=True)
    (unfinished / "stages" / "load" / "stage.json").write_text(json.dumps({"stage": "load", "artifacts": {},
                                                                           "figures": {}, "seconds": 1}))
    (unfinished / "manifest.json").write_text(json.dumps({"config": {"pipeline": {"stages": ["load", "finetune"]}}}))
    with pytest.raises(ConfigError, match=r"is not a finished run: stage\(s\) finetune did not complete"):
        dsvl_adapt.update(unfinished, ["data.source=" + str(tmp_path)])
    assert not (tmp_path / "unfinished-v2").exists()


def test_bad_new_data_is_refused_before_any_stage_and_the_parent_is_untouched(small_parent, tmp_path):
    before = folder_hashes(small_parent)
    child = small_parent.parent / "run-v2"
    with pytest.raises(ConfigError, match=r"data.source: give the folder of new rows"):
        dsvl_adapt.update(small_parent, [])
    with pytest.raises(ConfigError, match=r"data.source.*does not exist"):
        dsvl_adapt.update(small_parent, [f"data.source={tmp_path / 'missing'}"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"train.jsonl not found"):
        dsvl_adapt.update(small_parent, [f"data.source={empty}"])
    wordy = write_increment(tmp_path / "wordy", sizes=(4, 2, 2))
    lines = (wordy / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["answer"] = "a long scratch running from the upper left corner to the middle of the plate"
    lines[1] = json.dumps(row)
    (wordy / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: answer 'a long scratch.*tokens long, above the 6"):
        dsvl_adapt.update(small_parent, [f"data.source={wordy}"])
    with pytest.raises(ConfigError, match=r"update.strategy"):
        dsvl_adapt.update(small_parent, [f"data.source={write_increment(tmp_path / 'ok', sizes=(4, 2, 2))}",
                                         "update.strategy=forget-nothing"])
    with pytest.raises(ConfigError, match=r"never touches its parent"):
        dsvl_adapt.update(small_parent, [f"data.source={tmp_path / 'ok'}", f"run_dir={small_parent / 'inside'}"])
    with pytest.raises(ConfigError, match=r"update.parent is set by `dsvl-adapt update`"):
        dsvl_adapt.update(small_parent, [f"data.source={tmp_path / 'ok'}", "update.parent=/elsewhere"])
    assert not child.exists()
    assert folder_hashes(small_parent) == before


def test_the_cli_names_the_problem_and_exits_2(small_parent, tmp_path):
    result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "update", str(small_parent),
                             f"data.source={tmp_path / 'nowhere'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


# -- the replay buffer ----------------------------------------------------------------------------------------------
def _rows(answers: list[str], prefix: str = "r") -> list[Row]:
    from PIL import Image

    image = Image.new("RGB", (32, 32))
    return [Row(id=f"{prefix}{i}", image=image, question="q?", answer=answer) for i, answer in enumerate(answers)]


def test_balanced_selection_keeps_rare_answers_and_random_is_seeded():
    rows = _rows(["none"] * 90 + ["dent"] * 6 + ["crack"] * 4)
    balanced = Counter(row.answer for row in select_rows(rows, 12, "balanced", seed=0))
    assert balanced == {"none": 4, "dent": 4, "crack": 4}
    first = [row.id for row in select_rows(rows, 12, "random", seed=3)]
    assert first == [row.id for row in select_rows(rows, 12, "random", seed=3)]
    assert len(set(first)) == 12


def test_new_rows_are_repeated_to_their_training_share_and_never_dropped():
    from dsvl_adapt.continual.buffer import with_new_share

    new, replay = [f"n{i}" for i in range(200)], [f"r{i}" for i in range(1800)]
    mixed = with_new_share(new, replay, 0.5)
    assert mixed[-1800:] == replay and len(mixed) == 3600  # every replay row once, new rows cycled to half
    counts = Counter(mixed[:1800])
    assert set(counts) == set(new) and set(counts.values()) == {9}
    assert with_new_share(new, replay[:100], 0.5) == [*new, *replay[:100]]  # already above the share: as they are
    assert with_new_share(new, replay, 0.0) == [*new, *replay] and with_new_share(new, [], 0.5) == new
    assert len(with_new_share(new[:3], replay[:10], 0.25)) == 4 + 10  # ceil(0.25 / 0.75 x 10) = 4 new entries


def test_the_next_buffer_gives_new_rows_at_most_their_share_and_reads_back(tmp_path):
    old, new = _rows(["a"] * 20), _rows(["b"] * 20, prefix="new-")
    kept = next_buffer(old, new, size=10, new_share=0.3, rule="random", seed=0)
    assert Counter(row.answer for row in kept) == {"a": 7, "b": 3}
    # while the old rows are fewer than the buffer, the new ones fill it
    assert Counter(r.answer for r in next_buffer(old[:2], new, size=10, new_share=0.3, rule="random", seed=0)) \
        == {"a": 2, "b": 8}
    write_split(kept, tmp_path, "train", extra_meta={"replay_origin": "v2"})
    back = read_buffer(tmp_path)
    assert [row.id for row in back] == [row.id for row in kept]
    assert all(row.meta["replay_origin"] == "v2" for row in back)


# -- whole updates (slow) -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_update_then_update_again_keeps_the_parent_and_records_the_lineage(tiny_run, tmp_path):
    """A replay update of the tiny run, then a replay+lwf update of that one reusing its buffer; rollback scoring."""
    parent_before = folder_hashes(tiny_run)
    week1, week2 = write_increment(tmp_path / "week1", seed=7), write_increment(tmp_path / "week2", seed=8)
    fast = ["score.measure_memory=false", "update.replay.size=16"]
    v2 = tmp_path / "shop-v2"
    card = dsvl_adapt.update(tiny_run, [f"data.source={week1}", "update.strategy=replay", *fast], new_run_dir=v2)

    assert folder_hashes(tiny_run) == parent_before  # the parent is never written to
    lineage = card.lineage
    assert lineage is not None and lineage.version == 2 and lineage.strategy == "replay"
    assert Path(lineage.parent) == tiny_run.absolute()
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["config"]["update"]["parent"] == str(tiny_run.absolute())
    assert manifest["config"]["update"]["parent_manifest_sha256"] == \
        hashlib.sha256((tiny_run / "manifest.json").read_bytes()).hexdigest() == lineage.parent_manifest_sha256
    assert manifest["config"]["data"]["source"] == str(week1) and manifest["data"]["kind"] != "generated"
    assert set(lineage.scores) == {"old", "new", "general"}
    assert lineage.scores["old"].rows == 12 and lineage.scores["new"].rows == 12  # the parent's / the increment's
    for name, score in lineage.scores.items():
        assert 0 <= score.parent <= 1 and 0 <= score.update <= 1
        assert score.parent_ci[0] <= score.parent <= score.parent_ci[1]
        assert score.change == pytest.approx(score.update - score.parent, abs=1e-6)
    assert lineage.forgetting == pytest.approx(-lineage.scores["old"].change, abs=1e-6)
    assert lineage.forgetting_ci[0] <= lineage.forgetting <= lineage.forgetting_ci[1]
    check = next(c for c in card.objectives if c.name == "forgetting_update")
    assert check.limit == 0.05 and check.ok is not None
    # the new student is the deployed artifact, loaded and scored through its runtime
    assert Path(lineage.artifacts["update"]).is_relative_to(v2) and card.runtimes
    assert "update.parent" in card.stages and "prune.structural" not in manifest["config"]["pipeline"]["stages"]
    assert card.stages["update.finetune"]["full"]["planned_steps"] == 400  # a preset model: every weight trains first
    structure = json.loads((tiny_run / "stages" / "distill" / "student" / "config.json").read_text())
    assert json.loads((v2 / "stages" / "update.distill" / "student" / "config.json").read_text())["text_config"][
        "intermediate_size"] == structure["text_config"]["intermediate_size"]  # the pruned structure is kept
    for page in ("scorecard.md", "scorecard.html"):
        assert "Update against its parent" in (v2 / page).read_text()
    assert "## Lineage" in (v2 / "stages" / "update.distill" / "student" / "README.md").read_text()
    buffer = read_buffer(v2 / "stages" / "update.finetune" / "replay")
    assert len(buffer) == 16 and {row.meta["replay_origin"] for row in buffer} <= {"v2 shop-v2"}

    v2_before = folder_hashes(v2)
    card3 = dsvl_adapt.update(v2, [f"data.source={week2}", "update.strategy=replay+lwf", *fast])
    v3 = tmp_path / "shop-v3"
    assert Path(card3.provenance["run_dir"]) == v3 and card3.lineage.version == 3  # named after its parent
    assert folder_hashes(v2) == v2_before
    figures = card3.stages["update.finetune"]
    assert figures["replay_from"] == "the replay buffer of shop-v2" and figures["replay_rows"] == 16
    assert [item["version"] for item in card3.lineage.chain] == [1, 2, 3]

    report = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "report", str(tiny_run), str(v2), str(v3),
                             "--json", "--out", str(tmp_path / "report")], capture_output=True, text=True,
                            timeout=300)
    edges = json.loads(report.stdout)["lineage"]
    assert [(Path(e["parent"]).name, Path(e["child"]).name) for e in edges] == [(tiny_run.name, "shop-v2"), ("shop-v2", "shop-v3")]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Lineage (parent → child)" in page and '<img alt="old and new accuracy before and after each update"' in page

    rolled = dsvl_adapt.rescore(tiny_run, [f"data.source={week2}"], out=tmp_path / "rescore")
    assert rolled["version"] == 1 and rolled["test_rows"] == 12 and 0 <= rolled["accuracy"] <= 1
    assert json.loads((tmp_path / "rescore" / "rescore.json").read_text())["accuracy"] == rolled["accuracy"]
    assert folder_hashes(tiny_run) == parent_before


def test_the_update_pipeline_keeps_the_parents_pruned_student_unless_asked():
    from dsvl_adapt.continual.update import update_stages

    default = ["load", "finetune", "prune.structural", "prune.weights", "distill", "quantize", "export", "score"]
    kept = update_stages(default, reprune=False)
    assert kept == ["update.parent", "update.finetune", "update.distill", "quantize", "export", "score",
                    "update.score"]
    assert update_stages(kept, reprune=False) == kept  # an update of an update
    pruned_again = ["update.parent", "update.finetune", "prune.structural", "prune.weights", "update.distill",
                    "quantize", "export", "score", "update.score"]
    assert update_stages(default, reprune=True) == update_stages(kept, reprune=True) == pruned_again


# -- the full-parameter phase of an update (update.full) -----------------------------------------------------------
def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_a_preset_models_update_trains_every_weight_before_its_adapter_unless_told_never(small_parent, tmp_path):
    """Reference presets start from random weights, where a LoRA adapter alone barely learns new answers: the
    update trains every weight first (update.full.when=auto); `never` leaves the weights LoRA does not target."""
    increment = write_increment(tmp_path / "increment", sizes=(8, 4, 4))
    common = [f"data.source={increment}", "update.replay.size=8", "update.full.steps=3", "finetune.lora.train.steps=2",
              "distill.train.steps=2"]
    full = tmp_path / "full"
    dsvl_adapt.update(small_parent, common, new_run_dir=full)
    lora_only = tmp_path / "lora-only"
    dsvl_adapt.update(small_parent, [*common, "update.full.when=never"], new_run_dir=lora_only)

    def figures(run_dir: Path) -> dict:
        return json.loads((run_dir / "stages" / "update.finetune" / "stage.json").read_text())["figures"]

    assert figures(full)["full"]["steps"] == 3 and "lora" in figures(full)
    assert "full" not in figures(lora_only) and "lora" in figures(lora_only)
    parent = _weights(small_parent / "stages" / "finetune" / "teacher")
    untargeted = [k for k in parent if "vision" in k and k.endswith("weight") and parent[k].dim() == 2]
    assert untargeted
    after_full = _weights(full / "stages" / "update.finetune" / "teacher")
    after_lora = _weights(lora_only / "stages" / "update.finetune" / "teacher")
    assert all(torch.equal(after_lora[k], parent[k]) for k in untargeted)  # LoRA targets the language model only
    assert sum(not torch.equal(after_full[k], parent[k]) for k in untargeted) > len(untargeted) // 2
    with pytest.raises(ConfigError, match=r"update.full.when"):
        dsvl_adapt.update(small_parent, [*common, "update.full.when=sometimes"], new_run_dir=tmp_path / "bad")
