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
    """Test plugin: SIGKILLs its own process inside the stage named by DSVL_TEST_KILL_IN."""
    import os, signal, threading, time
    from pathlib import Path
    from dsvl_adapt import hookimpl

    TRAINING = {"finetune", "distill"}

    def _kill_when_checkpointed(work_dir):
        deadline = time.time() + 120
        while time.time() < deadline:
            if list(Path(work_dir).rglob("complete.json")):
                os.kill(os.getpid(), signal.SIGKILL)
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


def _run(args: list[str], killer: Path, kill_in: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1",
               PYTHONPATH=f"{killer}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if kill_in:
        env["DSVL_TEST_KILL_IN"] = kill_in
    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *args], capture_output=True, text=True,
                          env=env, timeout=600)


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
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1", OMP_WAIT_POLICY="PASSIVE")  # as the CLI sets it
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", OFFLINE_RUN, str(tmp_path / "again"), *tiny_overrides],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "again" / "scorecard.json").read_text())
    reference = json.loads((tiny_run / "scorecard.json").read_text())
    assert again["metrics"] == reference["metrics"]
    for artifact in ("finetune/teacher/model.safetensors", "distill/student/model.safetensors"):
        assert (tmp_path / "again" / "stages" / artifact).read_bytes() == (tiny_run / "stages" / artifact).read_bytes()
