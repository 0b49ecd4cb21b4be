"""The bad-input catalogue, as a user meets it on the command line: a clear message, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

QUICK = ["model=reference-tiny", "finetune=fast", "distill=fast", "pipeline.stages=[load,finetune,score]",
         "data.train_size=8", "data.validation_size=2", "data.test_size=2", "score.latency_repeats=1"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _dataset(root: Path, bad_line: bytes | None = None, bad_image: bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
    for split in ("train", "validation", "test"):
        question = f"What defect is on this {split} part?"  # test rows must not repeat train rows (leakage)
        rows = [json.dumps({"image": f"{i % 3}.png", "question": question, "answer": "none"}).encode()
                for i in range(4)]
        if bad_image is not None:
            (root / "bad.png").write_bytes(bad_image)
            rows.append(json.dumps({"image": "bad.png", "question": question, "answer": "dent"}).encode())
        if bad_line is not None:
            rows.append(bad_line)
        (root / f"{split}.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    return root


@pytest.mark.parametrize(("case", "dataset_args", "needle"), [
    ("truncated image", {"bad_image": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40}, "bad.png"),
    ("zero-byte image", {"bad_image": b""}, "empty (0 bytes)"),
    ("row missing answer", {"bad_line": b'{"image": "0.png", "question": "q"}'}, "missing 'answer'"),
    ("non-UTF-8 line", {"bad_line": b'{"image": "0.png", "question": "\xff", "answer": "x"}'}, "UTF-8"),
    ("path escaping the root", {"bad_line": b'{"image": "../../etc/passwd", "question": "q", "answer": "x"}'},
     "outside the dataset folder"),
])
def test_bad_rows_fail_with_file_and_line_and_the_fix(tmp_path, case, dataset_args, needle):
    data = _dataset(tmp_path / "data", **dataset_args)
    result = _cli("run", *QUICK, f"data.source={data}", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert needle in result.stderr and "train.jsonl:5" in result.stderr and "on_bad_row=skip" in result.stderr


def test_skip_policy_counts_skipped_rows_in_the_scorecard(tmp_path):
    data = _dataset(tmp_path / "data", bad_line=b"{broken json")
    result = _cli("run", *QUICK, f"data.source={data}", "data.on_bad_row=skip", f"run_dir={tmp_path / 'run'}",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    card = json.loads((tmp_path / "run" / "scorecard.json").read_text())
    assert card["skipped_rows"]["train"] == 1 and card["skipped_rows"]["test"] == 1


def test_empty_split_is_named_before_any_stage(tmp_path):
    data = _dataset(tmp_path / "data")
    (data / "test.jsonl").write_text("")
    result = _cli("run", *QUICK, f"data.source={data}", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "'test'" in result.stderr and "no usable rows" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "stages").exists()  # found by the preflight, before the first stage


@pytest.mark.parametrize(("override", "named", "fix"), [
    ("finetune.full.lr=-1", "finetune.full.lr: Input should be greater than 0", "(got -1)"),
    ("vertical=nope", "unknown vertical 'nope'", "installed verticals: "),
    ("pipeline.stages=[load,nope]", "pipeline.stages: unknown stage(s) 'nope'", "registered: "),
    ("model.path=/does/not/exist", "model.path: ", "/does/not/exist does not exist; give a local Hugging Face "
                                                   "DeepSeek-VL checkpoint directory"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, override, named, fix):
    """The message names the input at fault and says what to do (or lists the valid choices)."""
    result = _cli("run", *QUICK, override, f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert named in result.stderr and fix in result.stderr, result.stderr
    assert not (tmp_path / "run" / "stages").exists()


def test_a_plugin_that_raises_is_reported_by_name(tmp_path):
    plugin = tmp_path / "plug"
    plugin.mkdir()
    (plugin / "raising_plugin.py").write_text(
        "from dsvl_adapt import hookimpl\n"
        "@hookimpl\ndef dsvl_adapt_register_metrics(register):\n    raise RuntimeError('license server down')\n")
    dist = plugin / "raising_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: raising-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dsvl_adapt]\nraising = raising_plugin\n")
    env = dict(os.environ, PYTHONPATH=f"{plugin}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "plugins"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0
    assert "raising" in result.stdout and "license server down" in result.stdout and "industrial" in result.stdout


@pytest.mark.slow
def test_another_tasks_data_warns_and_its_rates_are_not_applicable(tmp_path):
    """industrial pointed at data labelled with colours: a warning before the first stage, and miss_rate /
    overkill_rate are null ("—"), never 0.000, their best value."""
    from dsvl_adapt.scaffold.sample import write_sample_folder

    data = write_sample_folder(tmp_path / "colours")
    result = _cli("run", *QUICK, "vertical=industrial", f"data.source={data}", f"run_dir={tmp_path / 'run'}",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning: industrial:"))
    assert "4 of 4 test answers" in warning and "scratch, dent, stain, crack, none" in warning
    assert "miss_rate" in warning and "overkill_rate" in warning and "new-plugin NAME --data files" in warning
    card = json.loads((tmp_path / "run" / "scorecard.json").read_text())
    for model, values in card["metrics"].items():
        assert values["miss_rate"] is None and values["overkill_rate"] is None, (model, values)
        assert isinstance(values["accuracy"], float)
    assert card["constant_answer"]["miss_rate"] is None
    markdown = (tmp_path / "run" / "scorecard.md").read_text()
    assert "| miss_rate | — |" in markdown


def test_the_answer_format_warning_needs_most_answers_outside_the_labels(tmp_path):
    from dsvl_adapt_industrial import answer_format_warning

    data = _dataset(tmp_path / "data")  # four answers, all 'none': in the label set
    assert answer_format_warning(data) is None
    with (data / "test.jsonl").open("a") as handle:  # 4 of 8 outside: not most
        handle.writelines(json.dumps({"image": "0.png", "question": "q", "answer": a}) + "\n"
                          for a in ("red", "blue", "red", "cat"))
    assert answer_format_warning(data) is None
    with (data / "test.jsonl").open("a") as handle:  # 5 of 9 outside
        handle.write(json.dumps({"image": "0.png", "question": "q", "answer": "dog"}) + "\n")
    warning = answer_format_warning(data)
    assert warning is not None and "5 of 9 test answers" in warning and "'red', 'blue', 'cat', 'dog'" in warning
    assert "miss_rate: no test answer is a defect" in warning and "overkill_rate" not in warning
    assert answer_format_warning(tmp_path / "missing") is None  # the load stage names a missing folder
