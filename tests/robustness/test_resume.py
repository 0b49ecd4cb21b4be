"""Runs that survive: kill -9 inside every stage, run again, and end with the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dsvl_adapt.config import compose

KILLER = textwrap.dedent('''
    """Test plugin: SIGKILLs its own process inside the stage named by DSVL_TEST_KILL_IN.

    In a training stage it waits for a complete checkpoint (``step-N/complete.json``) that meets
    DSVL_TEST_KILL_WHEN: ``under:<folder>`` (the checkpoint lies under that folder, e.g. ``lora``)
    or ``patience`` (the checkpoint counts at least one evaluation without improvement); any
    checkpoint when unset.
    """
    import json, os, signal, threading, time
    from pathlib import Path
    from dsvl_adapt import hookimpl

    TRAINING = {"finetune", "distill"}

    def _wanted(marker):
        when = os.environ.get("DSVL_TEST_KILL_WHEN", "")
        if when.startswith("under:"):
            return when[len("under:"):] in marker.parts
        if when == "patience":
            return json.loads(marker.read_text())["best"]["bad_evals"] >= 1
        return True

    def _kill_when_checkpointed(work_dir):
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if any(_wanted(marker) for marker in Path(work_dir).glob("**/step-*/complete.json")):
                    os.kill(os.getpid(), signal.SIGKILL)
            except (OSError, ValueError):  # a checkpoint folder renamed or removed while we looked
                pass
            time.sleep(0.02)

    @hookimpl
    def dsvl_adapt_before_stage(stage, context):
        if stage.name != os.environ.get("DSVL_TEST_KILL_IN"):
            return
        if stage.name in TRAINING:  # die after the first checkpoint inside the stage
            threading.Thread(target=_kill_when_checkpointed, args=(context.work_dir,), daemon=True).start()
        else:
            os.kill(os.getpid(), signal.SIGKILL)
''')


@pytest.fixture(scope="module")
def killer_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("killer")
    (root / "dsvl_test_killer.py").write_text(KILLER)
    dist = root / "dsvl_test_killer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dsvl-test-killer\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dsvl_adapt]\nkiller = dsvl_test_killer\n")
    return root


def _run(args: list[str], killer: Path, kill_in: str | None = None, when: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1", DSVL_TEST_KILL_WHEN=when,
               PYTHONPATH=f"{killer}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if kill_in:
        env["DSVL_TEST_KILL_IN"] = kill_in
    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow  # ~4 min: a kill inside every stage, each resumed; the default suite resumes runs in test_engine and test_readme
def test_kill_inside_every_stage_then_resume_gives_the_uninterrupted_result(tiny_run, tiny_overrides, tmp_path,
                                                                           killer_path):
    run_dir = tmp_path / "killed"
    args = [*tiny_overrides, f"run_dir={run_dir}"]
    stages = compose(tiny_overrides)[0].pipeline.stages
    for stage in stages:
        result = _run(args, killer_path, kill_in=stage)
        assert result.returncode == -signal.SIGKILL, f"{stage}: {result.stderr[-2000:]}"
        assert not (run_dir / "stages" / stage / "stage.json").exists(), f"{stage} completed before the kill"
        if stage in ("finetune", "distill"):  # killed after a checkpoint; the next run must continue from it
            assert list((run_dir / "stages" / f"{stage}.partial").rglob("complete.json"))
            assert not pickles_under(run_dir), f"{stage}: a killed training stage left pickles"
        # the next iteration's run resumes this stage, then gets killed in the following one
    final = _run(args, killer_path)
    assert final.returncode == 0, final.stderr[-3000:]

    resumed = json.loads((run_dir / "scorecard.json").read_text())
    reference = json.loads((tiny_run / "scorecard.json").read_text())
    assert resumed["accuracy"] == reference["accuracy"]
    assert resumed["metrics"] == reference["metrics"]
    for predictions in (tiny_run / "stages" / "score").glob("predictions-*.jsonl"):
        assert (run_dir / "stages" / "score" / predictions.name).read_text() == predictions.read_text()
    finetune = json.loads((run_dir / "stages" / "finetune" / "stage.json").read_text())["figures"]
    distill = json.loads((run_dir / "stages" / "distill" / "stage.json").read_text())["figures"]
    assert finetune["full"]["resumed_from"] is not None and distill["resumed_from"] is not None


def pickles_under(folder: Path) -> list[Path]:
    """Files under ``folder`` that need Python's pickle to be read: pickle streams (``\\x80 <protocol>`` ... ``.``),
    torch.save archives (a zip holding a .pkl) and files named as pickles."""
    import zipfile

    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix in (".pkl", ".pickle", ".pt", ".pth"):
            found.append(path)
        elif data[:1] == b"\x80" and len(data) > 2 and 2 <= data[1] <= 5 and data.endswith(b"."):
            found.append(path)
        elif zipfile.is_zipfile(path) and any(n.endswith(".pkl") for n in zipfile.ZipFile(path).namelist()):
            found.append(path)
    return found


# Early stopping that matters: with a high learning rate the validation loss (evaluated every step) goes up and down,
# so with patience 2 distillation stops early and keeps an earlier step's weights; with a checkpoint every step, the
# killer finds one that holds a patience count of 1 and best weights that are not the current ones.
PATIENCE = ["pipeline.stages=[load,finetune,distill]", "distill.train.steps=12", "distill.train.eval_every=1",
            "distill.train.checkpoint_every=1", "distill.train.patience=2", "distill.train.lr=0.02"]


@pytest.mark.slow
def test_a_kill_under_early_stopping_resumes_to_identical_weights(tiny_overrides, tmp_path, killer_path):
    """Killed inside LoRA (dropout: random draws) and inside distill at a checkpoint whose patience counter is 1 and
    whose best weights are an earlier step's: the resumed run ends with the uninterrupted run's weights, byte for
    byte, and no file of the run folder is a pickle at any point."""
    args = [*tiny_overrides, *PATIENCE]
    reference = _run([*args, f"run_dir={tmp_path / 'reference'}"], killer_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    figures = json.loads((tmp_path / "reference" / "stages" / "distill" / "stage.json").read_text())["figures"]
    assert figures["stopped_early"] and figures["best_step"] < figures["steps"], figures  # the scenario holds

    run_dir = tmp_path / "killed"
    killed_at = {}
    for stage, phase, when in (("finetune", "lora/checkpoints", "under:lora"), ("distill", "checkpoints", "patience")):
        killed = _run([*args, f"run_dir={run_dir}"], killer_path, kill_in=stage, when=when)
        assert killed.returncode == -signal.SIGKILL, f"{stage}: {killed.stderr[-2000:]}"
        assert not (run_dir / "stages" / stage / "stage.json").exists()
        markers = list((run_dir / "stages" / f"{stage}.partial" / phase).glob("step-*/complete.json"))
        assert len(markers) == 1, markers  # only the newest checkpoint of a phase is kept
        checkpoint = json.loads(markers[0].read_text())
        killed_at[stage] = checkpoint["step"]
        if stage == "distill":
            assert checkpoint["best"]["bad_evals"] == 1 and checkpoint["best"]["step"] < checkpoint["step"]
        assert not pickles_under(run_dir), pickles_under(run_dir)
    final = _run([*args, f"run_dir={run_dir}"], killer_path)
    assert final.returncode == 0, final.stderr[-3000:]

    finetune = json.loads((run_dir / "stages" / "finetune" / "stage.json").read_text())["figures"]
    resumed = json.loads((run_dir / "stages" / "distill" / "stage.json").read_text())["figures"]
    assert finetune["lora"]["resumed_from"] == killed_at["finetune"]
    assert resumed["resumed_from"] == killed_at["distill"]
    assert resumed["history"] == figures["history"] and resumed["best_step"] == figures["best_step"]
    for artifact in ("finetune/teacher/model.safetensors", "distill/student/model.safetensors"):
        reference_bytes = (tmp_path / "reference" / "stages" / artifact).read_bytes()
        assert (run_dir / "stages" / artifact).read_bytes() == reference_bytes, artifact
    assert not pickles_under(run_dir), pickles_under(run_dir)


OFFLINE_RUN = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline run")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import dsvl_adapt
dsvl_adapt.run(sys.argv[2:], run_dir=sys.argv[1])
"""


def test_same_config_and_seed_give_identical_results_with_the_network_blocked(tiny_run, tiny_overrides, tmp_path):
    """Determinism (a second run equals the first) and offline operation (sockets refused) in one run."""
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1")
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", OFFLINE_RUN, str(tmp_path / "again"), *tiny_overrides],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "scorecard.json").read_text())
    reference = json.loads((tiny_run / "scorecard.json").read_text())
    assert again["metrics"] == reference["metrics"]
    for artifact in ("finetune/teacher/model.safetensors", "distill/student/model.safetensors"):
        assert (tmp_path / "again" / "stages" / artifact).read_bytes() == (tiny_run / "stages" / artifact).read_bytes()
