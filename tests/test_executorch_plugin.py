"""The ExecuTorch runtime backend ships as its own plugin package (issue 16, item 3): ``pip install ".[executorch]"``
adds it, and registered like any plugin it brings its backend and the hardware targets that use it.

Fast: no export here (``plugins/executorch/tests`` exports, loads and generates; those tests are ``slow``). Neither
ExecuTorch nor torch is needed to register the plugin: the backend imports them when it prepares or loads."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from dsvl_adapt import hookspecs
from dsvl_adapt.plugins import PluginManager
from dsvl_adapt.runtimes.contract import RuntimeBackend
from dsvl_adapt.testing import registered_plugin

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "plugins" / "executorch"


def _plugin_module():
    try:
        return importlib.import_module("dsvl_adapt_executorch")
    except ModuleNotFoundError:  # not installed: import it from the source tree
        sys.path.insert(0, str(PLUGIN_DIR))
        return importlib.import_module("dsvl_adapt_executorch")


def test_the_executorch_extra_installs_the_plugin_package_which_brings_executorch():
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = root["project"]["optional-dependencies"]["executorch"]
    assert extra == ["dsvl-adapt-executorch @ {root:uri}/plugins/executorch"]
    plugin = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())
    project = plugin["project"]
    assert project["name"] == "dsvl-adapt-executorch"
    assert any(dep.startswith("executorch") for dep in project["dependencies"])
    assert project["entry-points"]["dsvl_adapt"] == {"executorch": "dsvl_adapt_executorch"}
    packages = plugin["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert packages == ["dsvl_adapt_executorch"] and (PLUGIN_DIR / "dsvl_adapt_executorch" / "__init__.py").is_file()
    assert (PLUGIN_DIR / "README.md").is_file()


def test_registered_plugin_supplies_the_backend_and_targets_that_use_it():
    module = _plugin_module()
    manager = PluginManager(load_entry_points=False)
    with registered_plugin(module, "executorch", manager=manager):
        registry = manager.registry
        assert not [f for f in registry.failures if f.startswith("executorch")], registry.failures
        targets = {t.name: t for t in registry.targets if registry.targets.owner(t.name) == "executorch"}
        assert set(targets) == {"phone-cpu", "edge-arm"}
        assert all(t.runtime == "executorch" and t.device == "cpu" for t in targets.values())
        assert targets["edge-arm"].dtypes == ["int8"] and targets["edge-arm"].memory_gb < targets["phone-cpu"].memory_gb

        backends: list = []
        if hasattr(hookspecs, "dsvl_adapt_register_runtimes"):  # the runtime registry of issue 16
            backends = [b for b in registry.runtimes if registry.runtimes.owner(b.name) == "executorch"]
        else:  # before the hookspec lands, pluggy keeps the implementation unchecked; call it as the registry will
            for impl in manager.pm.hook.dsvl_adapt_register_runtimes.get_hookimpls():
                if impl.plugin_name == "executorch":
                    impl.function(register=backends.append)
        assert [b.name for b in backends] == ["executorch"]
        backend = backends[0]
        assert isinstance(backend, RuntimeBackend)
        assert backend.capabilities().kv_cache
        reason = backend.available()
        if importlib.util.find_spec("executorch") is None:
            assert 'pip install "dsvl-adapt[executorch]"' in reason
        else:
            assert reason is None
