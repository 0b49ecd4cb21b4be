"""The plugin manager: loads plugins and builds the registry of what they supply.

Plugins come from the ``dsvl_adapt`` entry-point group; the core's own parts
(:mod:`dsvl_adapt.builtins`) are registered through the same hooks. Each plugin is loaded
and each hook implementation is called on its own, so a plugin that fails to import or
raises is reported by name and does not stop the others.

Environment variables:

``DSVL_ADAPT_PLUGINS``
    Comma-separated allow-list of entry-point plugins to load (set it empty to load none).
``DSVL_ADAPT_BLOCK_PLUGINS``
    Comma-separated plugins never to load.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

import pluggy
from pydantic import ValidationError

from . import hookspecs
from .errors import ConfigError, PluginError
from .runtimes.contract import RuntimeBackend
from .schemas import DataCheck, DatasetSpec, HardwareTarget, MetricSpec, PromptTemplate, Vertical

ENTRY_POINT_GROUP = "dsvl_adapt"
BUILTIN_MODULES = ("dsvl_adapt.builtins",)
SHIPPED_VERTICALS = ("industrial", "medical", "ecommerce", "finance")

hookimpl = pluggy.HookimplMarker("dsvl_adapt")

T = TypeVar("T")


@dataclass
class PluginInfo:
    """What ``dsvl-adapt plugins`` shows for one plugin."""

    name: str
    version: str | None
    source: str  # "builtin" or "entry point"
    hooks: list[str] = field(default_factory=list)
    load_errors: list[str] = field(default_factory=list)  # import or registration failures
    hook_errors: list[str] = field(default_factory=list)  # failures while building the registry (rebuilt each time)

    @property
    def errors(self) -> list[str]:
        return self.load_errors + self.hook_errors

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source, "hooks": self.hooks,
                "errors": self.errors}


class Catalog(Generic[T]):
    """Named objects of one kind, each remembered with the plugin that registered it."""

    def __init__(self, kind: str, check: Callable[[Any, str], None], hint: Callable[[str], str] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self._hint = hint

    def add(self, item: Any, plugin: str) -> None:
        self._check(item, plugin)
        name = item.name
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {self._owners[name]!r} and by {plugin!r}; "
                "rename one of them or block a plugin with DSVL_ADAPT_BLOCK_PLUGINS"
            )
        self._items[name] = item
        self._owners[name] = plugin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            available = ", ".join(sorted(self._items)) or "none"
            hint = self._hint(name) if self._hint else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; installed: {available}.{hint}") from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


def _vertical_hint(name: str) -> str:
    if name in SHIPPED_VERTICALS:
        return f' Install it with: pip install "dsvl-adapt[{name}]"'
    return " Write one with: dsvl-adapt new-plugin " + name


def _instance_of(schema: type) -> Callable[[Any, str], None]:
    def check(item: Any, plugin: str) -> None:
        if not isinstance(item, schema):
            raise PluginError(
                f"plugin {plugin!r} registered a {type(item).__name__} where dsvl_adapt.schemas.{schema.__name__} "
                "is expected"
            )

    return check


#: What a runtime backend must have (dsvl_adapt.runtimes.contract.RuntimeBackend): attributes, then methods.
BACKEND_ATTRIBUTES = ("name", "description")
BACKEND_METHODS = ("available", "capabilities", "prepare", "load", "owns", "inventory")
_SLUG = re.compile(r"^[a-z][a-z0-9_-]*$")


def _check_backend(backend: Any, plugin: str) -> None:
    """A runtime backend must satisfy :class:`~dsvl_adapt.runtimes.contract.RuntimeBackend` (an instance, with a
    slug ``name``); the message names the plugin and what is missing."""
    where = "see dsvl_adapt.runtimes.contract.RuntimeBackend and docs/plugins/runtimes.md"
    if isinstance(backend, type):
        raise PluginError(f"plugin {plugin!r} registered the class {backend.__name__} as a runtime backend; register "
                          f"an instance: register({backend.__name__}())")
    missing = [a for a in BACKEND_ATTRIBUTES + BACKEND_METHODS if not hasattr(backend, a)]
    if missing:
        raise PluginError(f"plugin {plugin!r} registered a {type(backend).__name__} that is not a runtime backend: it "
                          f"lacks {', '.join(missing)} ({where})")
    not_callable = [m for m in BACKEND_METHODS if not callable(getattr(backend, m))]
    if not_callable:
        raise PluginError(f"plugin {plugin!r} registered runtime backend {type(backend).__name__} whose "
                          f"{', '.join(not_callable)} is not a method ({where})")
    name = backend.name
    if not isinstance(name, str) or not _SLUG.match(name):
        raise PluginError(f"plugin {plugin!r} registered runtime backend {type(backend).__name__} with name {name!r}; "
                          "a name is a lowercase slug (^[a-z][a-z0-9_-]*$), what HardwareTarget.runtime says")
    if not isinstance(backend.description, str):
        raise PluginError(f"plugin {plugin!r} registered runtime backend {name!r} whose description is not a string")
    if not isinstance(backend, RuntimeBackend):  # pragma: no cover - the checks above cover the protocol
        raise PluginError(f"plugin {plugin!r} registered {name!r}, which does not satisfy RuntimeBackend ({where})")


def _runtime_hint(name: str) -> str:
    return (" A target's runtime must be a registered backend: install the plugin that provides it, or write one "
            "(docs/plugins/runtimes.md).")


def _check_stage(stage: Any, plugin: str) -> None:
    for attr in ("name", "description", "run"):
        if not hasattr(stage, attr):
            raise PluginError(f"plugin {plugin!r} registered a stage without `{attr}` (see dsvl_adapt.engine.Stage)")


def _check_token_reducer(item: Any, plugin: str) -> None:
    from .compress.tokens.contract import check_reducer

    check_reducer(item, plugin)


@dataclass
class Registry:
    """Everything the installed plugins supply, by kind."""

    verticals: Catalog[Vertical]
    datasets: Catalog[DatasetSpec]
    prompts: Catalog[PromptTemplate]
    metrics: Catalog[MetricSpec]
    targets: Catalog[HardwareTarget]
    stages: Catalog[Any]
    runtimes: Catalog[RuntimeBackend]
    config_search_path: list[str]
    failures: list[str]
    token_reducers: Catalog[Any] = field(default_factory=lambda: Catalog("token reducer", _check_token_reducer))
    data_checks: Catalog[DataCheck] = field(default_factory=lambda: Catalog("data check", _instance_of(DataCheck)))

    def vertical(self, name: str) -> Vertical:
        return self.verticals.get(name)

    def runtime_for(self, directory: str | Path) -> RuntimeBackend | None:
        """The registered backend whose ``owns(directory)`` is true (None when none does); two owners are an
        error naming both plugins."""
        directory = Path(directory)
        owners = []
        for backend in self.runtimes:
            try:
                owned = backend.owns(directory)
            except Exception as exc:  # a plugin's bug, reported as such
                raise PluginError(f"runtime backend {backend.name!r} (plugin {self.runtimes.owner(backend.name)!r}): "
                                  f"owns({str(directory)!r}) raised {type(exc).__name__}: {exc}") from exc
            if owned:
                owners.append(backend)
        if len(owners) > 1:
            names = ", ".join(f"{b.name!r} (plugin {self.runtimes.owner(b.name)!r})" for b in owners)
            raise PluginError(f"{directory} is claimed by several runtime backends: {names}; each backend's owns() "
                              "must recognise only its own artifacts")
        return owners[0] if owners else None


class PluginManager:
    """Loads plugins once and builds the :class:`Registry` from their hooks."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("dsvl_adapt")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._registry: Registry | None = None
        for module_name in BUILTIN_MODULES:
            self.register(importlib.import_module(module_name), name=module_name, source="builtin")
        if load_entry_points:
            self._load_entry_points()

    # -- loading -----------------------------------------------------------------------
    def register(self, plugin: Any, name: str, source: str = "registered", version: str | None = None) -> None:
        """Register a plugin object (a module or an instance with hookimpls)."""
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self.info[name] = PluginInfo(name, version, source, load_errors=[f"could not register: {exc}"])
            return
        hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.info[name] = PluginInfo(name, version, source, hooks=hooks)
        self._registry = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.info.pop(name, None)
        self._registry = None

    def _load_entry_points(self) -> None:
        allow = _env_list("DSVL_ADAPT_PLUGINS")
        block = set(_env_list("DSVL_ADAPT_BLOCK_PLUGINS") or [])
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in block or (allow is not None and ep.name not in allow):
                continue
            if self.pm.has_plugin(ep.name):
                continue
            version = ep.dist.version if ep.dist is not None else None
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not stop the others
                self.info[ep.name] = PluginInfo(
                    ep.name, version, "entry point",
                    load_errors=[f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"],
                )
                continue
            self.register(plugin, name=ep.name, source="entry point", version=version)

    # -- calling hooks -----------------------------------------------------------------
    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook on its own; failures are recorded by plugin."""
        results = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
            try:
                results.append((impl.plugin_name, impl.function(**args)))
            except Exception as exc:
                message = f"{hook_name} raised {type(exc).__name__}: {exc}"
                self._record_failure(impl.plugin_name, message)
        return results

    def _record_failure(self, plugin: str, message: str) -> None:
        info = self.info.setdefault(plugin, PluginInfo(plugin, None, "registered"))
        info.hook_errors.append(message)

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Fire an observer hook; an observer that raises is reported, the run goes on."""
        before = {name: len(info.hook_errors) for name, info in self.info.items()}
        self.call_each(hook_name, **kwargs)
        for name, info in self.info.items():
            for message in info.hook_errors[before.get(name, 0):]:
                print(f"warning: plugin {name!r}: {message}", file=sys.stderr)

    # -- the registry ------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        for info in self.info.values():
            info.hook_errors.clear()
        catalogs = {
            "verticals": (Catalog("vertical", _instance_of(Vertical), _vertical_hint), "dsvl_adapt_register_verticals"),
            "datasets": (Catalog("dataset", _instance_of(DatasetSpec)), "dsvl_adapt_register_datasets"),
            "prompts": (Catalog("prompt", _instance_of(PromptTemplate)), "dsvl_adapt_register_prompts"),
            "metrics": (Catalog("metric", _instance_of(MetricSpec)), "dsvl_adapt_register_metrics"),
            "targets": (Catalog("hardware target", _instance_of(HardwareTarget)),
                        "dsvl_adapt_register_hardware_targets"),
            "stages": (Catalog("stage", _check_stage), "dsvl_adapt_register_stages"),
            "runtimes": (Catalog("runtime backend", _check_backend, _runtime_hint), "dsvl_adapt_register_runtimes"),
            "token_reducers": (Catalog("token reducer", _check_token_reducer), "dsvl_adapt_register_token_reducers"),
            "data_checks": (Catalog("data check", _instance_of(DataCheck)), "dsvl_adapt_register_data_checks"),
        }
        for catalog, hook_name in catalogs.values():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name

                def register(item: Any, _plugin: str = plugin, _catalog: Catalog = catalog) -> None:
                    _catalog.add(item, _plugin)

                try:
                    impl.function(register=register)
                except ValidationError as exc:
                    self._record_failure(plugin, f"{hook_name}: invalid object: {_pydantic_summary(exc)}")
                except Exception as exc:
                    self._record_failure(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}")
        search_path: list[str] = []
        for _plugin, entries in self.call_each("dsvl_adapt_config_search_path"):
            if entries:
                search_path.extend([entries] if isinstance(entries, str) else list(entries))
        failures = [f"{name}: {message}" for name, info in self.info.items() for message in info.errors]
        return Registry(**{key: cat for key, (cat, _hook) in catalogs.items()},
                        config_search_path=search_path, failures=failures)

    def plugins(self) -> list[PluginInfo]:
        _ = self.registry  # hook failures show up in the report
        return sorted(self.info.values(), key=lambda i: (i.source != "builtin", i.name))


def _pydantic_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or exc.title}: {err['msg']}" for err in exc.errors()
    ) + f" (in {exc.title})"


def load_target(target: str) -> Any:
    """The object a ``"package.module:attribute"`` target names, imported now. Built-in parts (stages, token
    reducers, data checks) are registered by target and imported when first used, so loading plugins stays fast."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


_manager: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def get_registry() -> Registry:
    return get_manager().registry


def reset() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in a running process)."""
    global _manager
    _manager = None


__all__ = [
    "Catalog", "PluginInfo", "PluginManager", "Registry", "get_manager", "get_registry", "hookimpl",
    "reset",
]
