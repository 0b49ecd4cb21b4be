"""The engine end to end on reference-tiny: stages, artifacts, manifest, resume, observers."""

from __future__ import annotations

import json
import types

import pytest

import dsvl_adapt
from dsvl_adapt import hookimpl
from dsvl_adapt.api import execute
from dsvl_adapt.config import compose
from dsvl_adapt.engine import StageResult, read_stage_artifacts
from dsvl_adapt.errors import ConfigError, StageError
from dsvl_adapt.plugins import get_manager


def test_tiny_run_writes_every_stage_and_the_scorecard(tiny_run):
    peaks = []
    for stage in ("load", "finetune", "score"):
        record = json.loads((tiny_run / "stages" / stage / "stage.json").read_text())
        assert record["stage"] == stage and record["seconds"] > 0
        peaks.append(record["process_peak_rss_bytes"])
    assert peaks == sorted(peaks) and peaks[0] > 50 * 2**20  # the process's peak so far, at each stage's end
    assert not list((tiny_run / "stages").glob("*.partial"))
    card = dsvl_adapt.load_scorecard(tiny_run)
    assert set(card.accuracy) == {"base", "teacher", "student"}
    assert card.metric == "accuracy" and set(card.metrics["teacher"]) == {"accuracy", "miss_rate", "overkill_rate"}
    assert set(card.general) == {"base", "teacher", "student"}  # the general-capability (forgetting) check
    assert all(0.0 <= v <= 1.0 for v in card.general.values())
    assert card.latency["teacher"].p50_ms > 0 and card.latency["teacher"].runtime.startswith("torch-eager")
    assert card.size["teacher"].bytes > 0 and card.params["teacher"] > 0
    assert (tiny_run / "scorecard.md").read_text().startswith("# Scorecard — industrial")


def test_scorecard_gives_the_constant_answer_floor(tiny_run):
    from collections import Counter

    card = dsvl_adapt.load_scorecard(tiny_run)
    lines = (tiny_run / "stages" / "score" / "predictions-teacher.jsonl").read_text().splitlines()
    references = [json.loads(line)["reference"] for line in lines]
    most = Counter(references).most_common(1)[0][1]
    assert set(card.constant_answer) == set(card.metrics["teacher"])
    assert card.constant_answer["accuracy"] == pytest.approx(most / len(references))
    assert "most common answer scores accuracy" in (tiny_run / "scorecard.md").read_text()


def test_manifest_records_config_versions_seed(tiny_run):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["config"]["model"]["preset"] == "reference-tiny"
    assert manifest["seed"] == 0
    assert {"torch", "transformers", "peft"} <= set(manifest["versions"])
    assert any(p["name"] == "industrial" for p in manifest["plugins"])


def test_rerun_skips_complete_stages(tiny_run, tiny_overrides, capsys):
    config, raw = compose(tiny_overrides + [f"run_dir={tiny_run}"])
    before = (tiny_run / "stages" / "finetune" / "stage.json").stat().st_mtime
    logs: list[str] = []
    execute(config, raw, tiny_run, log=logs.append)
    assert all("skipped" in line for line in logs)
    assert (tiny_run / "stages" / "finetune" / "stage.json").stat().st_mtime == before


def test_same_run_dir_with_other_config_is_refused(tiny_run, tiny_overrides):
    config, raw = compose(tiny_overrides + ["finetune.lora.r=2", f"run_dir={tiny_run}"])
    with pytest.raises(ConfigError, match="finetune.lora.r"):
        execute(config, raw, tiny_run)


def test_observer_hooks_see_each_stage(tmp_path, tiny_overrides):
    seen: list[tuple[str, str]] = []

    def before(stage, context):
        seen.append(("before", stage.name))

    def after(stage, context, result):
        assert isinstance(result, StageResult)
        seen.append(("after", stage.name))

    observer = types.ModuleType("observer")
    observer.dsvl_adapt_before_stage = hookimpl(before)
    observer.dsvl_adapt_after_stage = hookimpl(after)
    manager = get_manager()
    manager.register(observer, name="observer")
    try:
        config, raw = compose(tiny_overrides + ["pipeline.stages=[load]"])
        execute(config, raw, tmp_path / "run")
    finally:
        manager.unregister("observer")
    assert seen == [("before", "load"), ("after", "load")]


def test_failing_stage_keeps_earlier_outputs(tmp_path, tiny_overrides):
    class Exploding:
        name = "explode"
        description = "always fails"

        def run(self, context):
            raise RuntimeError("kaboom")

    plugin = types.ModuleType("exploding")
    plugin.dsvl_adapt_register_stages = hookimpl(lambda register: register(Exploding()))
    manager = get_manager()
    manager.register(plugin, name="exploding")
    try:
        config, raw = compose(tiny_overrides + ["pipeline.stages=[load,explode]"])
        with pytest.raises(StageError, match="explode.*kaboom"):
            execute(config, raw, tmp_path / "run")
    finally:
        manager.unregister("exploding")
    assert (tmp_path / "run" / "stages" / "load" / "stage.json").is_file()
    assert not (tmp_path / "run" / "stages" / "explode").exists()


def test_a_local_checkpoint_directory_runs_through_the_pipeline(tiny_run, tmp_path):
    """`model=local model.path=DIR`: no full-parameter phase (the weights are trained), LoRA only."""
    teacher = tiny_run / "stages" / "finetune" / "teacher"
    card = dsvl_adapt.run(["model=local", f"model.path={teacher}", "finetune=fast", "data.train_size=16",
                           "data.validation_size=4", "data.test_size=4", "score.latency_repeats=1",
                           "pipeline.stages=[load,finetune,score]"], run_dir=tmp_path / "local")
    record = json.loads((tmp_path / "local" / "stages" / "finetune" / "stage.json").read_text())["figures"]
    assert "full" not in record and record["lora"]["steps"] == 6
    base = read_stage_artifacts(tmp_path / "local" / "stages" / "load")["base"]
    assert (base / "model.safetensors").resolve() == (teacher / "model.safetensors").resolve()  # linked, not copied
    assert card.params["base"] == card.params["teacher"]


def _cli(*args: str, cwd=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "DSVL_ADAPT_NO_PROGRESS": "1"})


def test_a_refused_run_leaves_the_folder_and_its_report_as_they_were(tiny_run, tiny_overrides, tmp_path):
    """Another configuration in a finished run's folder is refused before Hydra writes there: the first run's
    .hydra/ records stay, no failure.json appears, and ``dsvl-adapt report`` says what it said before."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    report_before = _cli("report", str(run))
    assert "report:" in report_before.stdout, report_before.stderr[-2000:]
    refused = _cli("run", *tiny_overrides, "finetune.lora.r=2", f"run_dir={run}")
    assert refused.returncode == 2
    assert "different configuration" in refused.stderr and "finetune.lora.r" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == before
    assert not (run / "failure.json").exists()
    report_after = _cli("report", str(run))
    assert (report_after.returncode, report_after.stdout) == (report_before.returncode, report_before.stdout)


def test_a_run_dir_that_cannot_be_written_gets_one_line(tiny_overrides, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _cli("run", *tiny_overrides, f"run_dir={blocker / 'run'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: run_dir: {blocker} is not a folder; choose a run_dir you can write to (run_dir=PATH)"]
