"""A third party's runtime backend, exactly as docs/plugins/runtimes.md prints it, installed as a plugin: registered,
named by a hardware target, listed by ``dsvl-adapt targets``, and a tiny run exports with it and is scored through it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from dsvl_adapt.plugins import PluginManager

pytest.importorskip("onnxruntime", reason="the example backend delegates to ONNX Runtime's export")

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins" / "runtimes.md"

PARTS = '''
from dsvl_adapt.schemas import HardwareTarget, Objectives, Vertical


@hookimpl
def dsvl_adapt_register_hardware_targets(register):
    register(HardwareTarget(name="acme-box", description="Acme edge box", device="cpu", runtime="acme-ort",
                            memory_gb=8, dtypes=["fp32", "int8"], latency_p90_ms=60000))


@hookimpl
def dsvl_adapt_register_verticals(register):
    register(Vertical(name="acmetest", description="industrial's data on the Acme box", dataset="industrial-surfaces",
                      prompt="industrial-inspection", metrics=["accuracy"], targets=["acme-box"], max_answer_tokens=6,
                      objectives=Objectives(min_accuracy=0.0, floor_margin=None, max_forgetting=None)))


@hookimpl
def dsvl_adapt_config_search_path():
    return "pkg://dsvl_adapt_acme.conf"
'''


def backend_source() -> str:
    """The example backend's module, as the page prints it."""
    match = re.search(r"<!-- doc-test: acme-backend -->\n```python\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)
    assert match, "docs/plugins/runtimes.md lost its '<!-- doc-test: acme-backend -->' block"
    return match.group(1)


@pytest.fixture(scope="module")
def acme_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An installed-looking plugin: the page's backend, a target naming it and a vertical using that target."""
    root = tmp_path_factory.mktemp("acme-plugin")
    package = root / "dsvl_adapt_acme"
    (package / "conf" / "vertical").mkdir(parents=True)
    (package / "__init__.py").write_text(backend_source() + PARTS)
    (package / "conf" / "__init__.py").write_text("")
    (package / "conf" / "vertical" / "acmetest.yaml").write_text("# @package _global_\nvertical:\n  name: acmetest\n")
    dist = root / "dsvl_adapt_acme-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dsvl-adapt-acme\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dsvl_adapt]\nacme = dsvl_adapt_acme\n")
    return {"PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, env=dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1", **env),
                          timeout=timeout)


def test_the_documented_backend_registers_like_the_built_in_ones():
    module = types.ModuleType("dsvl_adapt_acme_doc")
    exec(compile(backend_source(), "runtimes.md acme-backend", "exec"), module.__dict__)
    manager = PluginManager(load_entry_points=False)
    manager.register(module, name="acme")
    registry = manager.registry
    assert registry.failures == []
    backend = registry.runtimes.get("acme-ort")
    assert registry.runtimes.owner("acme-ort") == "acme"
    assert backend.available() is None and backend.capabilities().quantization_modes == ("dynamic",)


def test_targets_lists_the_plugin_backend(acme_env, tmp_path):
    result = _cli(["targets"], acme_env, tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "acme-box: cpu / acme-ort (available)" in result.stdout
    assert "  acme-ort: ONNX Runtime with Acme's packaging" in result.stdout and "[acme]" in result.stdout


def test_a_mode_the_plugin_backend_does_not_offer_is_refused_at_validate(acme_env, tmp_path):
    result = _cli(["validate", "vertical=acmetest", "model=reference-tiny", "quantize.mode=static"], acme_env, tmp_path,
                  timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "backend 'acme-ort' does not offer bits=8 mode='static'" in result.stderr
    assert "modes: dynamic" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_tiny_run_exports_with_the_plugin_backend_and_is_scored_through_it(acme_env, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "vertical=acmetest", "model=reference-tiny", "finetune=fast", "distill=fast",
            "data.train_size=32", "data.validation_size=8", "data.test_size=8", "prune.weights.sparsity=0",
            "score.models=[student]", "score.general_size=0", "score.measure_memory=false",
            "score.latency_repeats=2", "score.latency_warmup=0", f"run_dir={run_dir}"]
    result = _cli(args, acme_env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((run_dir / "scorecard.json").read_text())
    quantize = card["stages"]["quantize"]
    assert quantize["backend"] == "acme-ort" and quantize["packaging"] == "acme" and quantize["bits"] == 8
    deploy = run_dir / "stages" / "quantize" / "acme-ort-int8"
    assert (deploy / "acme.json").is_file() and (deploy / "graphs" / "export.json").is_file()
    assert card["stages"]["export"]["reused"]  # the backend's related["onnx"] graphs, not a second export
    runtimes = card["runtimes"]
    assert "acme-ort-int8" in runtimes, list(runtimes)
    acme = runtimes["acme-ort-int8"]
    assert acme["runtime"] == "acme-ort" and acme["dtype"] == "int8" and Path(acme["path"]) == deploy.resolve()
    assert "accuracy" in acme["metrics"] and acme["latency"]["measured"]
    fit = next(t for t in card["targets"] if t["name"] == "acme-box")
    latency = next(c for c in fit["checks"] if c["name"] == "latency_p90")
    assert latency["estimated"] is False and "(acme-ort)" in latency["note"]
