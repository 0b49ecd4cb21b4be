"""The README's commands are tests: each fenced ``dsvl-adapt ...`` command runs as written, relative paths
included, in a fresh working folder.

Commands that would train for minutes get the smoke overrides (the tiny preset, fast schedules, small splits)
appended, for keys the command does not set itself; placeholder paths a user would replace with their own
(``/models/...``, ``/data/...``) are replaced by a small checkpoint and data folder made here. The opening
block (what a new user types first) and the commands that take seconds run in the default suite; the rest of
the README's commands run under ``-m slow``. A command this file does not know how to run fails the test, so
a new README command cannot go untested.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

SMOKE = [
    "model=reference-tiny", "finetune=fast", "distill=fast", "data.train_size=48", "data.validation_size=8",
    "data.test_size=12", "score.latency_repeats=3", "score.latency_warmup=1",
]
#: subcommands that read configuration or metadata only: they run as written, in seconds
QUICK = ("validate", "plugins", "targets", "schema", "--help", "new-plugin", "check-plugin")
#: subcommands that read what earlier commands wrote: they run in the README's order, in the slow test
SEQUENTIAL = ("report",)


def readme_commands(text: str | None = None) -> list[tuple[int, str]]:
    """(block number, command) for every ``dsvl-adapt`` command in the README's fenced shell blocks; a line
    chained with ``&&`` contributes its ``dsvl-adapt`` part. Comments are dropped."""
    text = README.read_text() if text is None else text
    found = []
    blocks = re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, flags=re.M | re.S)
    for number, block in enumerate(blocks):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("#"):
                continue
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("dsvl-adapt ") or part == "dsvl-adapt":
                    found.append((number, part))
    return found


def _executable() -> list[str]:
    """The ``dsvl-adapt`` console script of this environment (as a user's shell finds it after ``pip install``)."""
    script = Path(sys.executable).parent / "dsvl-adapt"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dsvl_adapt.cli"]


def _with_smoke(args: list[str]) -> list[str]:
    """``args`` plus each smoke override whose key the command does not set (``model=local`` keeps its model)."""
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    extra = []
    for override in SMOKE:
        key = override.split("=", 1)[0]
        if key in keys or (key == "model" and "model.path" in keys):
            continue
        extra.append(override)
    return args + extra


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory, tiny_run) -> dict[str, str]:
    """The README's stand-ins for a user's own files, made real: a DeepSeek-VL checkpoint (the tiny run's base, a
    complete Hugging Face checkpoint directory) and a JSONL + images data folder of the industrial task."""
    from dsvl_adapt.plugins import get_registry
    from dsvl_adapt.schemas import DatasetRequest

    root = tmp_path_factory.mktemp("user-files")
    checkpoint = root / "checkpoint"
    shutil.copytree(tiny_run / "stages" / "load" / "base", checkpoint)
    data = root / "data"
    (data / "images").mkdir(parents=True)
    spec = get_registry().datasets.get(get_registry().vertical("industrial").dataset)
    for split, size in (("train", 48), ("validation", 8), ("test", 12)):
        lines = []
        for row in spec.load(DatasetRequest(split=split, size=size, seed=0, image_size=32)):
            image = f"images/{split}-{row['id']}.png"
            row["image"].save(data / image)
            lines.append(json.dumps({"id": row["id"], "image": image, "question": row["question"],
                                     "answer": row["answer"]}))
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return {"/models/deepseek-vl-1.3b-chat": str(checkpoint), "/data/my-line": str(data)}


def _run(command: str, cwd: Path, placeholders: dict[str, str]) -> subprocess.CompletedProcess:
    args = shlex.split(command)[1:]
    args = [next((a.replace(k, v) for k, v in placeholders.items() if k in a), a) for a in args]
    if args and args[0] == "run":
        args = _with_smoke(args)
    elif not args or args[0] not in QUICK + SEQUENTIAL:
        pytest.fail(f"the README command {command!r} is not one this test knows how to run: teach tests/test_readme.py")
    env = {**os.environ, "DSVL_ADAPT_NO_PROGRESS": "1"}
    return subprocess.run([*_executable(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_readme_opens_with_install_run_and_test_commands():
    first = readme_commands()[0]
    assert first[0] == 0 and first[1].startswith("dsvl-adapt run "), first
    opening = README.read_text().split("```", 2)[1]
    assert "pip install torch==2.13.0" in opening and "python -m pytest -q" in opening


def test_readme_first_command_as_written_with_a_relative_run_dir(tmp_path, placeholders):
    """The opening block's run, from a fresh working folder, with its relative ``run_dir``: it finishes, leaves the
    scorecard where the README says, and the same command again resumes (every stage skipped)."""
    command = next(c for n, c in readme_commands() if n == 0 and c.startswith("dsvl-adapt run"))
    run_dir = Path(re.search(r"run_dir=(\S+)", command).group(1))
    assert not run_dir.is_absolute()
    first = _run(command, tmp_path, placeholders)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / run_dir / "scorecard.json").is_file()
    assert (tmp_path / run_dir / "scorecard.md").is_file()
    again = _run(command, tmp_path, placeholders)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "complete, skipped" in again.stderr and "done in" not in again.stderr


def test_a_run_folder_moved_elsewhere_still_resumes(tmp_path, tiny_run):
    """Recorded artifact paths are relative to the run folder: a copy elsewhere resumes and reports from itself."""
    from dsvl_adapt.engine import read_stage_artifacts

    moved = tmp_path / "moved"
    shutil.copytree(tiny_run, moved)
    for record in (moved / "stages").glob("*/stage.json"):
        for path in read_stage_artifacts(record.parent).values():
            assert path.is_relative_to(moved) and path.exists(), (record, path)
        assert ".partial" not in record.read_text(), record
    shutil.rmtree(moved / "stages" / "score")  # the last stage runs again, reading every artifact from the copy
    from conftest import TINY

    result = subprocess.run([*_executable(), "run", *TINY, f"run_dir={moved}"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "DSVL_ADAPT_NO_PROGRESS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if "done in" in line] == \
        [line for line in result.stderr.splitlines() if line.startswith("[score] done in")]
    assert (moved / "scorecard.json").is_file()
    assert str(tiny_run) not in (moved / "stages" / "score" / "stage.json").read_text()


@pytest.mark.parametrize("command", [c for _, c in readme_commands() if c.split()[1] in QUICK])
def test_readme_quick_commands_as_written(tmp_path, placeholders, command):
    result = _run(command, tmp_path, placeholders)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_readme_commands_as_written(tmp_path, placeholders):
    """Every command of the README after the opening block, in the README's order, in one working folder (a later
    command may read what an earlier one wrote, as ``report`` reads the sweep)."""
    for _, command in [(n, c) for n, c in readme_commands() if n > 0]:
        result = _run(command, tmp_path, placeholders)
        # report exits 3 when no run meets its objectives, which smoke-sized runs do not: it still finished
        allowed = (0, 3) if command.split()[1] == "report" else (0,)
        assert result.returncode in allowed, (command, result.stderr[-3000:])
