"""The ``runtimes`` catalog of the registry (hook ``dsvl_adapt_register_runtimes``): what it accepts and refuses,
and the backend of an artifact directory."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from dsvl_adapt import hookimpl
from dsvl_adapt.errors import ConfigError, PluginError
from dsvl_adapt.plugins import PluginManager
from dsvl_adapt.runtimes.contract import Artifact, Capabilities, Inventory


class MarkerBackend:
    """A minimal, complete backend: it owns directories holding ``<name>.json``."""

    description = "test backend"

    def __init__(self, name: str = "marker-rt", marker: str | None = None) -> None:
        self.name = name
        self.marker = marker or f"{name}.json"

    def available(self):
        return None

    def capabilities(self):
        return Capabilities()

    def prepare(self, request):
        request.out_dir.mkdir(parents=True, exist_ok=True)
        (request.out_dir / self.marker).write_text("{}")
        return Artifact(directory=request.out_dir, runtime=self.name, weights="fp32")

    def load(self, directory, *, threads=None):
        raise NotImplementedError

    def owns(self, directory):
        return (Path(directory) / self.marker).is_file()

    def inventory(self, directory):
        return Inventory(files=())


def _manager(name: str, *backends) -> PluginManager:
    manager = PluginManager(load_entry_points=False)
    module = types.ModuleType(name)

    def dsvl_adapt_register_runtimes(register):
        for backend in backends:
            register(backend)

    module.dsvl_adapt_register_runtimes = hookimpl(dsvl_adapt_register_runtimes)
    manager.register(module, name=name)
    return manager


def test_a_plugin_backend_registers_beside_the_built_in_ones():
    registry = _manager("acme", MarkerBackend()).registry
    assert registry.failures == []
    assert {"torch", "onnxruntime", "openvino", "marker-rt"} <= set(registry.runtimes.names())
    assert registry.runtimes.owner("marker-rt") == "acme"
    assert registry.runtimes.owner("onnxruntime") == "dsvl_adapt.builtins"


class NoLoad(MarkerBackend):
    load = None  # type: ignore[assignment]


class Missing:
    name = "half-done"
    description = "x"

    def available(self):
        return None


@pytest.mark.parametrize(("backend", "words"), [
    (Missing(), ["'lousy'", "lacks capabilities, prepare, load, owns, inventory", "RuntimeBackend"]),
    (MarkerBackend, ["'lousy'", "the class MarkerBackend", "register(MarkerBackend())"]),
    (MarkerBackend("Acme NPU"), ["'lousy'", "'Acme NPU'", "lowercase slug"]),
    (NoLoad(), ["'lousy'", "load is not a method"]),
    (MarkerBackend("onnxruntime"), ["'onnxruntime' is registered twice", "'dsvl_adapt.builtins'", "'lousy'"]),
])
def test_what_is_not_a_backend_is_refused_naming_the_plugin(backend, words):
    registry = _manager("lousy", backend).registry
    failures = [f for f in registry.failures if f.startswith("lousy:")]
    assert len(failures) == 1, registry.failures
    for word in words:
        assert word in failures[0], failures[0]
    assert registry.runtimes.get("onnxruntime").description  # the built-in one is untouched


def test_an_artifact_finds_its_backend_and_two_claimants_are_an_error(tmp_path):
    registry = _manager("acme", MarkerBackend()).registry
    (tmp_path / "marker-rt.json").write_text("{}")
    assert registry.runtime_for(tmp_path).name == "marker-rt"
    assert registry.runtime_for(tmp_path / "elsewhere") is None
    greedy = _manager("greedy", MarkerBackend(), MarkerBackend("copy-rt", marker="marker-rt.json")).registry
    with pytest.raises(PluginError, match="several runtime backends: 'marker-rt'.*'copy-rt'"):
        greedy.runtime_for(tmp_path)


def test_an_unknown_backend_lists_the_registered_ones():
    registry = PluginManager(load_entry_points=False).registry
    with pytest.raises(ConfigError, match="unknown runtime backend 'tensorrt'; installed: onnxruntime, openvino, "
                                          "torch.*docs/plugins/runtimes.md"):
        registry.runtimes.get("tensorrt")


class Crashing(MarkerBackend):
    def owns(self, directory):
        raise OSError("disk gone")


def test_a_backend_whose_owns_raises_is_named(tmp_path):
    registry = _manager("shaky", Crashing("shaky-rt")).registry
    with pytest.raises(PluginError, match="runtime backend 'shaky-rt' \\(plugin 'shaky'\\): owns\\(.*\\) raised "
                                          "OSError: disk gone"):
        registry.runtime_for(tmp_path)
