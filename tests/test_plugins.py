"""The plugin manager: entry points, built-ins through the same hooks, isolation of failures."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from dsvl_adapt import hookimpl
from dsvl_adapt.engine import LazyStage
from dsvl_adapt.errors import ConfigError
from dsvl_adapt.plugins import PluginManager
from dsvl_adapt.schemas import HardwareTarget, MetricSpec


def _plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def test_builtins_and_installed_vertical_are_registered():
    manager = PluginManager()
    registry = manager.registry
    assert {"load", "finetune", "score"} <= set(registry.stages.names())
    assert registry.stages.owner("finetune") == "dsvl_adapt.builtins"
    assert "industrial" in registry.verticals.names()
    assert "pkg://dsvl_adapt_industrial.conf" in registry.config_search_path
    names = {info.name: info for info in manager.plugins()}
    assert "dsvl_adapt_register_stages" in names["dsvl_adapt.builtins"].hooks
    assert names["industrial"].version == "0.1.0"


def test_a_plugin_that_raises_is_reported_and_others_still_load():
    manager = PluginManager()

    def boom(register):
        raise RuntimeError("database not reachable")

    def good(register):
        register(MetricSpec(name="always_half", compute=lambda p, r, rows: 0.5))

    manager.register(_plugin("broken", dsvl_adapt_register_metrics=boom), name="broken")
    manager.register(_plugin("fine", dsvl_adapt_register_metrics=good), name="fine")
    registry = manager.registry
    assert "always_half" in registry.metrics.names()
    assert "industrial" in registry.verticals.names()
    assert any("broken" in f and "database not reachable" in f for f in registry.failures)


def test_duplicate_names_are_rejected_naming_both_plugins():
    manager = PluginManager()

    def dup(register):
        register(MetricSpec(name="accuracy", compute=lambda p, r, rows: 1.0))

    manager.register(_plugin("copycat", dsvl_adapt_register_metrics=dup), name="copycat")
    failures = manager.registry.failures
    assert any("copycat" in f and "industrial" in f and "accuracy" in f for f in failures)


def test_invalid_object_is_reported_with_its_field():
    manager = PluginManager()

    def bad_target(register):
        register(HardwareTarget(name="npu", device="npu", runtime="onnxruntime", memory_gb=-1, dtypes=["int8"]))

    manager.register(_plugin("badtarget", dsvl_adapt_register_hardware_targets=bad_target), name="badtarget")
    failures = manager.registry.failures
    assert any("badtarget" in f and "memory_gb" in f for f in failures)


def test_wrong_type_registered_is_reported():
    manager = PluginManager()
    manager.register(_plugin("wrong", dsvl_adapt_register_verticals=lambda register: register({"name": "x"})),
                     name="wrong")
    assert any("wrong" in f and "Vertical" in f for f in manager.registry.failures)


def test_lazy_stage_from_a_plugin_is_registered():
    manager = PluginManager()
    stage = LazyStage("noop", "does nothing", "dsvl_adapt.models.stage:LoadStage")
    manager.register(_plugin("stages", dsvl_adapt_register_stages=lambda register: register(stage)), name="stages")
    assert manager.registry.stages.get("noop") is stage


def test_unknown_names_list_what_is_installed():
    registry = PluginManager().registry
    with pytest.raises(ConfigError, match="installed: .*industrial"):
        registry.vertical("nope")
    with pytest.raises(ConfigError, match="new-plugin legal"):
        registry.vertical("legal")


def _cli_plugins(env_extra: dict[str, str]) -> list[dict]:
    import os

    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "plugins", "--json"], capture_output=True,
                         text=True, env=env, timeout=60, check=True)
    return json.loads(out.stdout)


def test_cli_plugins_json_lists_plugins_with_versions_and_hooks():
    plugins = {p["name"]: p for p in _cli_plugins({})}
    assert plugins["industrial"]["source"] == "entry point"
    assert plugins["industrial"]["version"] == "0.1.0"
    assert "dsvl_adapt_register_verticals" in plugins["industrial"]["hooks"]
    assert plugins["dsvl_adapt.builtins"]["source"] == "builtin"


def test_environment_block_and_allow_lists():
    assert "industrial" not in {p["name"] for p in _cli_plugins({"DSVL_ADAPT_BLOCK_PLUGINS": "industrial"})}
    assert "industrial" not in {p["name"] for p in _cli_plugins({"DSVL_ADAPT_PLUGINS": ""})}
    assert "industrial" in {p["name"] for p in _cli_plugins({"DSVL_ADAPT_PLUGINS": "industrial"})}


def test_plugin_that_fails_to_import_is_reported(tmp_path):
    dist = tmp_path / "brokenplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dsvl_adapt]\nbrokenplug = brokenplug_missing_module\n")
    import os

    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "plugins", "--json"], capture_output=True,
                         text=True, env=env, timeout=60, check=True)
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert "brokenplug_missing_module" in plugins["brokenplug"]["errors"][0]
    assert "industrial" in plugins  # the others still load
