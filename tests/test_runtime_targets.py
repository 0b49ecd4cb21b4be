"""Target runtimes checked against the registered backends when a run is validated, and ``dsvl-adapt targets``
showing each target's backend and whether it is available here."""

from __future__ import annotations

import json
import types

import pytest

from dsvl_adapt import cli, hookimpl
from dsvl_adapt.config import compose
from dsvl_adapt.engine import check_runtimes
from dsvl_adapt.errors import ConfigError
from dsvl_adapt.plugins import PluginManager


def test_quantize_backend_must_be_registered():
    from dsvl_adapt.api import validate

    with pytest.raises(ConfigError, match="quantize.backend: 'tensorrt' is not a registered runtime backend; "
                                          "registered: onnxruntime, openvino, torch"):
        validate(["vertical=industrial", "model=reference-tiny", "quantize.backend=tensorrt"])


def _vertical_with_target(runtime: str) -> tuple[PluginManager, object]:
    from dsvl_adapt.schemas import HardwareTarget, Vertical

    manager = PluginManager()
    module = types.ModuleType("typo")
    module.dsvl_adapt_register_hardware_targets = hookimpl(lambda register: register(HardwareTarget(
        name="typo-box", device="cpu", runtime=runtime, memory_gb=4, dtypes=["fp32"])))
    module.dsvl_adapt_register_verticals = hookimpl(lambda register: register(Vertical(
        name="typo", description="x", dataset="industrial-surfaces", prompt="industrial-inspection",
        metrics=["accuracy"], targets=["typo-box", "cpu-box"])))
    manager.register(module, name="typo")
    config, _raw = compose(["vertical=industrial", "model=reference-tiny"])
    config = config.model_copy(update={"vertical": config.vertical.model_copy(update={"name": "typo"})})
    return manager, config


def test_a_target_runtime_that_is_a_typo_is_an_error_with_the_suggestion():
    manager, config = _vertical_with_target("onnxruntim")
    with pytest.raises(ConfigError, match="hardware target 'typo-box' \\(plugin 'typo'\\): runtime 'onnxruntim' is "
                                          "not a registered backend; did you mean 'onnxruntime'\\?"):
        check_runtimes(config, manager.registry)


def test_a_target_runtime_with_no_backend_here_is_a_note_not_an_error():
    manager, config = _vertical_with_target("tensorrt")
    notes = check_runtimes(config, manager.registry)
    assert len(notes) == 1 and "'typo-box' runs on 'tensorrt', which no installed backend provides" in notes[0]
    # the vertical's first target: the stages prepare for quantize.backend instead
    assert f"quantize/export prepare for quantize.backend={config.quantize.backend!r}" in notes[0]


def test_targets_shows_each_backend_and_whether_it_is_available(capsys):
    assert cli.main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "cpu-box: cpu / onnxruntime (available)" in out
    assert "hospital-t4: gpu / tensorrt (not available: no installed backend provides 'tensorrt'" in out
    assert "runtime backends:" in out and "  openvino: OpenVINO (CPU)" in out
    assert cli.main(["targets", "--json", "--runtimes"]) == 0
    listing = json.loads(capsys.readouterr().out)
    box = next(t for t in listing["targets"] if t["name"] == "cpu-box")
    assert box["backend"] == "onnxruntime" and box["backend_available"] is True
    t4 = next(t for t in listing["targets"] if t["name"] == "hospital-t4")
    assert t4["backend"] is None and t4["backend_available"] is False
    assert {r["name"] for r in listing["runtimes"]} >= {"torch", "onnxruntime", "openvino"}
