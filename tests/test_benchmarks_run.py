"""Every benchmark's smallest form runs to its end and prints its JSON, so a benchmark cannot rot behind a changed
API unnoticed (``precision.py`` once did, after the runtime contract changed ``runtime_metric``).

Running them takes minutes each (``-m slow``); the default suite only checks that every script in ``benchmarks/``
has its smallest form here, so a new benchmark cannot be left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

#: script -> its smallest arguments ("{tmp}" is the test's temporary folder)
SMALLEST: dict[str, list[str]] = {
    "checkpoint_memory.py": ["--preset", "reference-tiny", "--work", "{tmp}/work"],
    "cleaning.py": ["--quick", "--teacher", "--cost-rows", "120", "--work", "{tmp}/work"],
    "compression.py": ["--quick", "--work", "{tmp}/work"],
    "continual.py": ["--quick", "--out", "{tmp}/runs"],
    "generation.py": ["--quick", "--work", "{tmp}/work"],
    "learnability.py": ["industrial", "--train-rows", "32", "--test-rows", "16", "--steps", "4", "--warmup", "1",
                        "--image-size", "32"],
    "precision.py": ["--quick", "--work", "{tmp}/work"],
    "prefill_logits.py": ["--quick", "--work", "{tmp}/work"],
    "recovery.py": ["--quick", "--out", "{tmp}/runs"],
    "runtimes.py": ["--quick", "--work", "{tmp}/work"],
    "serving.py": ["--quick", "--work", "{tmp}/work"],
    "sparse_matmul.py": ["--quick"],
    "tokens.py": ["--quick", "--work", "{tmp}/work"],
}


def last_json_object(stdout: str) -> dict:
    """The JSON object a benchmark prints last (libraries such as NNCF log to stdout before it)."""
    starts = [i for i, line in enumerate(stdout.splitlines(keepends=True)) if line.startswith("{")]
    assert starts, f"no JSON object on stdout:\n{stdout[-2000:]}"
    text = "".join(stdout.splitlines(keepends=True)[starts[-1]:])
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


def test_every_benchmark_has_its_smallest_form_listed():
    scripts = {p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SMALLEST), f"add {sorted(scripts - set(SMALLEST))}, drop {sorted(set(SMALLEST) - scripts)}"


def test_last_json_object_skips_library_logs():
    printed = 'INFO:nncf:bits\n{"a": 1}\nINFO: more\n{\n "b": {\n  "c": 2\n }\n}\n'
    assert last_json_object(printed) == {"b": {"c": 2}}
    with pytest.raises(AssertionError):
        last_json_object("no object here\n")


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_smallest_form_runs(script, tmp_path):
    plugins = [str(ROOT / "plugins" / name) for name in ("industrial", "medical", "ecommerce", "finance")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *plugins])}
    args = [a.replace("{tmp}", str(tmp_path)) for a in SMALLEST[script]]
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stderr[-4000:]}"
    result = last_json_object(done.stdout)
    assert isinstance(result, dict) and result, f"{script} printed an empty result"
