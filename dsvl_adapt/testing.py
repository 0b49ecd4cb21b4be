"""A test kit for plugin authors: register a plugin for one test, and check everything it supplies.

Opt in from a plugin's tests::

    from dsvl_adapt.testing import check_plugin, dsvl_plugin, registered_plugin  # noqa: F401

    def test_my_vertical_passes_the_kit():
        check_plugin("legal-docs").raise_for_problems()

or load the fixtures for a whole test suite with ``pytest_plugins = ["dsvl_adapt.testing"]`` in
the root ``conftest.py``.

:func:`check_plugin` validates what a plugin supplies against the schemas, the way the core will
use it: registration errors, the vertical's references, dataset rows of every split (through the
core's :func:`~dsvl_adapt.data.loading.load_split`), prompt fields against those rows, metric
values, direction and that a metric tells right answers from wrong ones, hardware targets, stages
and the vertical's Hydra config. Every problem names the hook and the field at fault. Given a
sample data folder (``data_source=DIR``), it also loads every split from that folder through the
dataset's ``request.source`` branch, the way ``data.source=DIR`` will. It is also a command::

    python -m dsvl_adapt.testing legal-docs [--data DIR]
    dsvl-adapt check-plugin legal-docs [--data DIR]

This module imports neither torch nor Hydra until a check needs them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import math
import numbers
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .plugins import PluginManager, get_manager

try:  # the fixtures need pytest; check_plugin does not
    import pytest
except ImportError:  # pragma: no cover - pytest is a dev dependency
    pytest = None  # type: ignore[assignment]

SPLITS = ("train", "validation", "test")
VERTICALS = "dsvl_adapt_register_verticals"
DATASETS = "dsvl_adapt_register_datasets"
PROMPTS = "dsvl_adapt_register_prompts"
METRICS = "dsvl_adapt_register_metrics"
TARGETS = "dsvl_adapt_register_hardware_targets"
STAGES = "dsvl_adapt_register_stages"
SEARCH_PATH = "dsvl_adapt_config_search_path"
WRONG_ANSWER = "zzz-not-an-answer"
CONSTANT_ANSWERS_TRIED = 8  # "every prediction is this reference": the most common few references
FILE_ONLY_HINT = "data.source"  # a file-only dataset's refusal to generate must name the fix


# ------------------------------------------------------------------------------ registering
def _default_name(plugin: Any) -> str:
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return f"{type(plugin).__name__}-{id(plugin):x}"


def _forget(manager: PluginManager, name: str) -> None:
    if manager.pm.has_plugin(name):
        manager.unregister(name)
    else:  # registration failed: pluggy never held it, only its error report exists
        manager.info.pop(name, None)
        manager._registry = None  # noqa: SLF001 - the report listed it; rebuild without it


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str | None = None, *,
                      manager: PluginManager | None = None) -> Iterator[PluginManager]:
    """Register ``plugin`` (a module or an object with hookimpls) for the ``with`` block.

    It goes on the process-wide manager (:func:`dsvl_adapt.plugins.get_manager`) unless
    ``manager`` is given, so :func:`dsvl_adapt.run`, ``compose`` and :func:`check_plugin` see it;
    it is unregistered on exit, even when the block raises. Yields the manager. A registration
    that pluggy refuses (a misspelt hook argument) is recorded in the manager's report, as for an
    installed plugin; :func:`check_plugin` shows it.
    """
    manager = manager or get_manager()
    name = name or _default_name(plugin)
    if manager.pm.has_plugin(name) or name in manager.info:
        raise ValueError(f"a plugin named {name!r} is already registered; pass another name=")
    manager.register(plugin, name=name)
    try:
        yield manager
    finally:
        _forget(manager, name)


def plugin_module(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A throwaway plugin module: ``plugin_module("fake", dsvl_adapt_register_metrics=fn)``.

    Each keyword must be a hook name; the function is marked with :data:`dsvl_adapt.hookimpl`.
    """
    from . import hookimpl, hookspecs

    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        if hook_name not in hookspecs.HOOK_NAMES:
            raise ValueError(f"{hook_name!r} is not a dsvl-adapt hook; hooks: {', '.join(hookspecs.HOOK_NAMES)}")
        setattr(module, hook_name, hookimpl(function))
    return module


def _dsvl_plugin() -> Iterator[Callable[..., PluginManager]]:
    """Register plugins for one test: ``dsvl_plugin(module_or_object, name=None)``.

    Returns the process-wide manager; everything registered is unregistered after the test.
    """
    with contextlib.ExitStack() as stack:

        def register(plugin: Any, name: str | None = None) -> PluginManager:
            return stack.enter_context(registered_plugin(plugin, name))

        yield register


dsvl_plugin = pytest.fixture(_dsvl_plugin, name="dsvl_plugin") if pytest is not None else _dsvl_plugin


# ------------------------------------------------------------------------------ the report
@dataclass
class CheckReport:
    """What :func:`check_plugin` found: ``ok``, ``problems`` and what was ``checked``."""

    plugin: str
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, hook: str, message: str) -> None:
        text = f"{hook}: {message}" if hook else message
        if text not in self.problems:
            self.problems.append(text)

    def raise_for_problems(self) -> "CheckReport":
        """Raise ``AssertionError`` listing every problem; returns the report when there are none."""
        if self.problems:
            raise AssertionError(str(self))
        return self

    def __str__(self) -> str:
        if self.ok:
            return f"plugin {self.plugin!r}: OK ({'; '.join(self.checked) or 'nothing to check'})"
        lines = [f"plugin {self.plugin!r}: {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the checks
def check_plugin(plugin: str | types.ModuleType | Any, *, rows_per_split: int = 4, image_size: int = 128,
                 compose_config: bool = True, data_source: str | Path | None = None) -> CheckReport:
    """Check everything ``plugin`` supplies; never raises for the plugin's faults.

    ``plugin`` is an installed plugin's entry-point name (``"industrial"``), an importable module
    name, or a module/object with hookimpls; one that is not registered yet is registered on the
    process-wide manager for the check and unregistered after. ``rows_per_split`` rows of each
    split are loaded at ``image_size`` pixels.

    ``data_source`` is a sample data folder in the layout ``data.source`` takes (``train.jsonl``,
    ``validation.jsonl``, ``test.jsonl`` and the images they name): every dataset of the plugin
    is also loaded from it, with ``request.source`` set, so the branch that reads a user's files is
    checked too, and its rows feed the prompt and metric checks. A dataset that has no generated
    data (a file-only vertical) may then refuse ``request.source=None`` with a ``DataError`` that
    names ``data.source``.
    """
    manager = get_manager()
    name, obj, problem = _resolve(manager, plugin)
    if problem:
        return CheckReport(name, problems=[problem])
    source = None if data_source is None else Path(data_source).expanduser()
    if source is not None and not source.is_dir():
        return CheckReport(name, problems=[f"data_source {str(data_source)!r} is not a folder: give the sample data "
                                           "folder (train.jsonl, validation.jsonl, test.jsonl and their images)"])
    if obj is not None:
        with registered_plugin(obj, name, manager=manager):
            return _check(manager, name, rows_per_split, image_size, compose_config, source)
    return _check(manager, name, rows_per_split, image_size, compose_config, source)


def _resolve(manager: PluginManager, plugin: Any) -> tuple[str, Any, str | None]:
    """(registered name, object to register for the check or None, problem)."""
    if isinstance(plugin, str):
        if manager.pm.has_plugin(plugin) or plugin in manager.info:
            return plugin, None, None
        try:
            found = importlib.util.find_spec(plugin) if plugin.replace(".", "").replace("_", "").isalnum() else None
        except (ImportError, ValueError):
            found = None
        if found is None:
            return plugin, None, _not_installed(manager, plugin)
        try:
            plugin = importlib.import_module(plugin)
        except Exception as exc:
            return plugin, None, f"plugin module {plugin!r} failed to import: {type(exc).__name__}: {exc}"
    registered = manager.pm.get_name(plugin)
    if registered is not None:
        return registered, None, None
    return _default_name(plugin), plugin, None


def _not_installed(manager: PluginManager, name: str) -> str:
    import os

    installed = sorted(n for n, info in manager.info.items() if info.source == "entry point")
    why = ""
    if name in [part.strip() for part in (os.environ.get("DSVL_ADAPT_BLOCK_PLUGINS") or "").split(",")]:
        why = " It is blocked by DSVL_ADAPT_BLOCK_PLUGINS."
    elif os.environ.get("DSVL_ADAPT_PLUGINS") is not None:
        why = " DSVL_ADAPT_PLUGINS is set and may leave it out."
    return (f"plugin {name!r} is not installed: no entry point named {name!r} in group 'dsvl_adapt' was loaded "
            f"(installed: {', '.join(installed) or 'none'}).{why} Install it with `pip install -e .` in its folder, "
            "and check [project.entry-points.dsvl_adapt] in its pyproject.toml.")


def _check(manager: PluginManager, name: str, rows_per_split: int, image_size: int,
           compose_config: bool, source: Path | None = None) -> CheckReport:
    report = CheckReport(name)
    registry = manager.registry
    info = manager.info.get(name)
    for message in dict.fromkeys(info.errors if info else []):
        report.problem("", message)
    _check_hook_names(report, manager, name, info.hooks if info else [])
    if info is not None and not info.hooks and not info.errors:
        report.problem("", f"plugin {name!r} implements no dsvl_adapt hooks (are its functions decorated with "
                           "@dsvl_adapt.hookimpl and named dsvl_adapt_...?)")

    def owned(catalog: Any) -> list[Any]:
        return [catalog.get(n) for n in catalog.names() if catalog.owner(n) == name]

    verticals, datasets = owned(registry.verticals), owned(registry.datasets)
    prompts, metrics, targets, stages = (owned(registry.prompts), owned(registry.metrics),
                                         owned(registry.targets), owned(registry.stages))
    _check_vertical_references(report, registry, verticals)
    rows_by_dataset = {spec.name: _check_dataset(report, spec, rows_per_split, image_size, source is not None)
                       for spec in datasets}
    if source is not None:
        for spec in datasets:
            from_files = _check_source(report, spec, source, rows_per_split, image_size)
            for split, rows in from_files.items():  # the user's rows feed the prompt and metric checks too
                rows_by_dataset[spec.name][split] = rows + rows_by_dataset[spec.name].get(split, [])
    for vertical in verticals:  # a vertical may use another plugin's dataset: its rows feed the checks too
        if vertical.dataset in registry.datasets and vertical.dataset not in rows_by_dataset:
            rows_by_dataset[vertical.dataset] = _load_quietly(registry.datasets.get(vertical.dataset),
                                                              rows_per_split, image_size, source)
    _check_prompts(report, registry, prompts, verticals, rows_by_dataset)
    _check_metrics(report, metrics, verticals, datasets, rows_by_dataset)
    _check_targets(report, targets)
    _check_stages(report, stages)
    if compose_config:
        _check_config(report, manager, name, verticals)
    files = f" (and from {source})" if source is not None else ""
    report.checked = [f"{len(verticals)} vertical(s)", f"{len(datasets)} dataset(s) x {len(SPLITS)} splits{files}",
                      f"{len(prompts)} prompt(s)", f"{len(metrics)} metric(s)", f"{len(targets)} target(s)",
                      f"{len(stages)} stage(s)"]
    return report


def _check_hook_names(report: CheckReport, manager: PluginManager, name: str, hooks: list[str]) -> None:
    """Mistakes pluggy accepts silently: a misspelt hook name, a hook function without @hookimpl."""
    import difflib

    from . import hookspecs

    for hook in hooks:
        if hook not in hookspecs.HOOK_NAMES:
            close = difflib.get_close_matches(hook, hookspecs.HOOK_NAMES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            report.problem(hook, f"is not a dsvl-adapt hook, so it is never called{hint}")
    plugin = manager.pm.get_plugin(name)
    for hook in hookspecs.HOOK_NAMES:
        function = getattr(plugin, hook, None)
        if callable(function) and not hasattr(function, "dsvl_adapt_impl"):
            report.problem(hook, "is defined but not decorated with @hookimpl (from dsvl_adapt import hookimpl), "
                                 "so it is never called")


def _check_vertical_references(report: CheckReport, registry: Any, verticals: list[Any]) -> None:
    kinds = (("dataset", registry.datasets, DATASETS), ("prompt", registry.prompts, PROMPTS),
             ("metrics", registry.metrics, METRICS), ("targets", registry.targets, TARGETS))
    for vertical in verticals:
        for field_name, catalog, hook in kinds:
            value = getattr(vertical, field_name)
            for ref in value if isinstance(value, list) else [value]:
                if ref not in catalog:
                    report.problem(VERTICALS, f"vertical {vertical.name!r} field {field_name!r}: no {catalog.kind} "
                                              f"named {ref!r} is registered (register it with {hook}; registered: "
                                              f"{', '.join(catalog.names()) or 'none'})")


def _request(split: str, size: int, image_size: int, seed: int = 0, source: Path | None = None) -> Any:
    from .schemas import DatasetRequest

    return DatasetRequest(split=split, size=size, seed=seed, image_size=image_size,  # type: ignore[arg-type]
                          source=source)


def _load_quietly(spec: Any, rows_per_split: int, image_size: int,
                  source: Path | None = None) -> dict[str, list[Any]]:
    from .data.loading import load_split

    out: dict[str, list[Any]] = {}
    for where_from in ([None, source] if source is not None else [None]):
        for split in SPLITS:
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    request = _request(split, rows_per_split, image_size, source=where_from)
                    out[split] = out.get(split, []) + load_split(spec, request, on_bad_row="skip").rows
            except Exception:
                continue
    return out


def _report_skipped(report: CheckReport, spec: Any, split: str, where: str, skipped: list[str]) -> None:
    prefix = f"{spec.name}/{split}["
    for message in skipped:
        if message.startswith(prefix) and "]: " in message:
            index, _, rest = message[len(prefix):].partition("]: ")
            report.problem(DATASETS, f"{where} row {index}: {rest}")
        else:  # a JSONL row names its file and line itself
            report.problem(DATASETS, f"{where}: {message}")


def _check_dataset(report: CheckReport, spec: Any, size: int, image_size: int,
                   have_source: bool = False) -> dict[str, list[Any]]:
    """Load every split of the generated data through the core's validation; returns the good rows by split.

    With a sample data folder given (``have_source``), a dataset that refuses to generate with a
    ``DataError`` naming ``data.source`` is a file-only dataset, not a fault.
    """
    from .data.loading import load_split
    from .errors import DataError

    rows: dict[str, list[Any]] = {}
    for split in SPLITS:
        where = f"dataset {spec.name!r} split {split!r}"
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                loaded = load_split(spec, _request(split, size, image_size), on_bad_row="skip")
        except DataError as exc:
            if have_source and FILE_ONLY_HINT in str(exc):
                return {}  # file-only: the folder is checked by _check_source
            hint = "" if have_source or FILE_ONLY_HINT not in str(exc) else (
                " (a file-only dataset: check it on a sample folder with check_plugin(..., data_source=DIR) or "
                "`dsvl-adapt check-plugin NAME --data DIR`)")
            report.problem(DATASETS, f"{where}: {_one_line(exc)}{hint}")
            continue
        except Exception as exc:
            report.problem(DATASETS, f"{where}: {_one_line(exc)}")
            continue
        _report_skipped(report, spec, split, where, loaded.skipped)
        total = len(loaded.rows) + len(loaded.skipped)
        if total != size:
            report.problem(DATASETS, f"{where}: returned {total} rows for request.size={size}; a generator must "
                                     "make exactly request.size rows")
        rows[split] = loaded.rows
        if not loaded.skipped:
            _check_deterministic(report, spec, split, size, image_size, loaded.rows, where)
    return rows


def _check_source(report: CheckReport, spec: Any, source: Path, size: int, image_size: int) -> dict[str, list[Any]]:
    """Load every split from the sample folder ``source`` (``request.source`` set), as ``data.source`` does.

    The rows must load through the core's validation, and must not be the generated rows: a loader
    that ignores ``request.source`` would train on its own examples instead of the user's files.
    """
    from .data.loading import load_split

    rows: dict[str, list[Any]] = {}
    for split in SPLITS:
        where = f"dataset {spec.name!r} split {split!r} from data source {str(source)!r}"
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                loaded = load_split(spec, _request(split, size, image_size, source=source), on_bad_row="skip")
        except Exception as exc:
            report.problem(DATASETS, f"{where}: {_one_line(exc)}")
            continue
        _report_skipped(report, spec, split, where, loaded.skipped)
        rows[split] = loaded.rows
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                generated = load_split(spec, _request(split, size, image_size), on_bad_row="skip").rows
        except Exception:
            continue  # a file-only dataset, or a fault _check_dataset reports
        if _same_rows(generated, loaded.rows):
            report.problem(DATASETS, f"{where}: the rows are the same as without a source: the loader ignores "
                                     "request.source, so data.source=DIR would never read the user's files "
                                     "(read them with dsvl_adapt.data.jsonl.read_jsonl_split(request.source, "
                                     "request.split) when request.source is not None)")
    return rows


def _same_rows(first: list[Any], second: list[Any]) -> bool:
    return len(first) == len(second) and all(
        (a.question, a.answer) == (b.question, b.answer) and a.image.tobytes() == b.image.tobytes()
        for a, b in zip(first, second))


def _check_deterministic(report: CheckReport, spec: Any, split: str, size: int, image_size: int,
                         first: list[Any], where: str) -> None:
    from .data.loading import load_split

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            again = load_split(spec, _request(split, size, image_size), on_bad_row="skip").rows
    except Exception as exc:
        report.problem(DATASETS, f"{where}: a second load with the same request failed: {_one_line(exc)}")
        return
    for i, (a, b) in enumerate(zip(first, again, strict=False)):
        if (a.id, a.question, a.answer) != (b.id, b.question, b.answer) or a.image.tobytes() != b.image.tobytes():
            report.problem(DATASETS, f"{where} row {i}: differs between two loads with the same split and seed; "
                                     "seed the generator from (request.split, request.seed, row index)")
            return


def _check_prompts(report: CheckReport, registry: Any, prompts: list[Any], verticals: list[Any],
                   rows_by_dataset: dict[str, dict[str, list[Any]]]) -> None:
    used: dict[str, list[str]] = {}
    for vertical in verticals:
        used.setdefault(vertical.prompt, []).append(vertical.dataset)
    for prompt in prompts:
        try:
            fields = prompt.fields
        except ValueError as exc:
            report.problem(PROMPTS, f"prompt {prompt.name!r} field 'user' is not a valid format string: {exc}")
            continue
        datasets = used.get(prompt.name) or list(rows_by_dataset)
        if not datasets:
            unknown = sorted(fields - {"question"})
            if unknown:  # no rows to check against: only {question} is certain to exist
                report.problem(PROMPTS, f"prompt {prompt.name!r} uses field(s) {{{', '.join(unknown)}}} and no "
                                        "vertical of this plugin uses it, so they cannot be checked against rows")
            continue
        for dataset in datasets:
            _render_rows(report, prompt, dataset, rows_by_dataset.get(dataset, {}))


def _render_rows(report: CheckReport, prompt: Any, dataset: str, splits: dict[str, list[Any]]) -> None:
    missing: dict[str, str] = {}
    for split, rows in splits.items():
        for i, row in enumerate(rows):
            available = {"question", *row.meta}
            for f in sorted(prompt.fields - available):
                missing.setdefault(f, f"dataset {dataset!r} split {split!r} row {i} has: "
                                      f"{', '.join(sorted(available))}")
            if prompt.fields <= available:
                try:
                    prompt.render(row.question, row.meta)
                except Exception as exc:
                    report.problem(PROMPTS, f"prompt {prompt.name!r} field 'user' does not render for dataset "
                                            f"{dataset!r} split {split!r} row {i}: {type(exc).__name__}: {exc}")
                    return
    for f, where in missing.items():
        report.problem(PROMPTS, f"prompt {prompt.name!r} uses unknown field {{{f}}}: {where} (a template may "
                                "use {question} and the keys of a row's meta)")


def _metric_rows(metric: Any, verticals: list[Any], datasets: list[Any],
                 rows_by_dataset: dict[str, dict[str, list[Any]]]) -> list[Any]:
    order = [v.dataset for v in verticals if metric.name in v.metrics] + [d.name for d in datasets]
    order += list(rows_by_dataset)
    for dataset in order:
        rows = [r for split in SPLITS for r in rows_by_dataset.get(dataset, {}).get(split, [])]
        if rows:
            return rows
    return []


class _Unusable:
    """What :func:`_call_metric` returns after reporting why a metric's value cannot be used."""


UNUSABLE = _Unusable()


def _call_metric(report: CheckReport, metric: Any, predictions: list[str], references: list[str],
                 rows: list[Any], what: str) -> float | None | _Unusable:
    """The metric's value; None when the metric says it does not apply to these rows; :data:`UNUSABLE`
    after reporting why the value is unusable (raised, not a number, out of range)."""
    where = f"metric {metric.name!r}"
    try:
        value = metric.compute(list(predictions), list(references), list(rows))
    except Exception as exc:
        report.problem(METRICS, f"{where} raised {type(exc).__name__} on {what}: {exc}")
        return UNUSABLE
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        report.problem(METRICS, f"{where} returned {value!r} on {what}; it must return a number (or None when it "
                                "does not apply to the rows)")
        return UNUSABLE
    value = float(value)
    if not metric.lower - 1e-9 <= value <= metric.upper + 1e-9:
        report.problem(METRICS, f"{where} returned {value:g} outside [{metric.lower:g}, {metric.upper:g}] on {what} "
                                "(set lower/upper on the MetricSpec if the range is different)")
        return UNUSABLE
    return value


def _wrong_prediction_sets(references: list[str]) -> dict[str, list[str]]:
    """Predictions that are clearly worse than the references, each set named for the report.

    Empty answers, a nonsense word, the references shifted by one row, each reference swapped for a
    different reference answer, and a constant answer (each of the most common references in turn).
    """
    from collections import Counter

    from .metrics import normalize_answer

    n = len(references)
    sets = {
        "empty predictions": [""] * n,
        "wrong predictions": [WRONG_ANSWER] * n,
        "predictions shifted by one row": references[1:] + references[:1],
    }
    representative: dict[str, str] = {}
    for reference in references:
        representative.setdefault(normalize_answer(reference), reference)
    common = [key for key, _ in Counter(normalize_answer(r) for r in references).most_common(CONSTANT_ANSWERS_TRIED)]
    if len(common) > 1:
        swapped = []
        for reference in references:
            key = normalize_answer(reference)
            other = common[(common.index(key) + 1) % len(common)] if key in common else common[0]
            swapped.append(representative[other])
        sets["each answer swapped for another reference answer"] = swapped
    for key in common:
        sets[f"the constant answer {representative[key]!r}"] = [representative[key]] * n
    return sets


def _check_metrics(report: CheckReport, metrics: list[Any], verticals: list[Any], datasets: list[Any],
                   rows_by_dataset: dict[str, dict[str, list[Any]]]) -> None:
    for metric in metrics:
        where = f"metric {metric.name!r}"
        bounds = f"[{metric.lower:g}, {metric.upper:g}]"
        if metric.lower >= metric.upper:
            report.problem(METRICS, f"{where} fields 'lower'/'upper': {bounds} is empty; lower must be below upper")
            continue
        rows = _metric_rows(metric, verticals, datasets, rows_by_dataset)
        references = [r.answer for r in rows] or ["yes", "no", "cat", "3"]
        best = metric.upper if metric.higher_is_better else metric.lower
        perfect = _call_metric(report, metric, references, references, rows, "predictions equal to the references")
        if perfect is UNUSABLE:
            continue  # one report per metric: the calls below would repeat it
        if perfect is None:
            sample = f"{len(rows)} rows of the plugin's data" if rows else f"the sample answers {references}"
            report.problem(METRICS, f"{where} returned None (not applicable) on {sample} with correct predictions, "
                                    "so it cannot be checked: a metric may return None only for data it does not "
                                    "apply to; give the kit rows it applies to (rows_per_split=, data_source=)")
            continue
        if not math.isclose(perfect, best, abs_tol=1e-9):
            report.problem(METRICS, f"{where} gives {perfect:g} when every prediction equals its reference; the "
                                    f"best value is {best:g} (higher_is_better={metric.higher_is_better}, "
                                    f"range {bounds}): check higher_is_better and the formula")
        worse_somewhere, values = False, [perfect]
        for what, predictions in _wrong_prediction_sets(references).items():
            value = _call_metric(report, metric, predictions, references, rows, what)
            if value is UNUSABLE:
                break
            if value is None:
                continue
            values.append(value)
            same = math.isclose(value, perfect, abs_tol=1e-9)
            better = value > perfect if metric.higher_is_better else value < perfect
            worse_somewhere = worse_somewhere or (not better and not same)
            if better and not same and math.isclose(perfect, best):
                report.problem(METRICS, f"{where} scores {what} ({value:g}) better than correct ones ({perfect:g}): "
                                        f"its direction is inconsistent with higher_is_better="
                                        f"{metric.higher_is_better}")
        else:
            if worse_somewhere:
                continue
            if all(math.isclose(v, perfect, abs_tol=1e-9) for v in values):
                report.problem(METRICS, f"{where} returned {perfect:g} for every input tried (correct, empty, wrong, "
                                        "shifted, swapped and constant-answer predictions): a constant metric says "
                                        "nothing about the model; it must score right answers above wrong ones")
            else:
                report.problem(METRICS, f"{where} scores none of the clearly wrong predictions tried (empty, wrong, "
                                        f"shifted, swapped, constant answers) worse than correct ones ({perfect:g}): "
                                        "a metric must score a right answer strictly above a wrong one")


def _check_targets(report: CheckReport, targets: list[Any]) -> None:
    from pydantic import ValidationError

    from .schemas import HardwareTarget

    for target in targets:
        where = f"hardware target {target.name!r}"
        try:
            HardwareTarget.model_validate(target.model_dump())
        except ValidationError as exc:
            for err in exc.errors():
                report.problem(TARGETS, f"{where} field {'.'.join(map(str, err['loc']))!r}: {err['msg']}")
        for dtype in target.peak_tops:
            if dtype not in target.dtypes:
                report.problem(TARGETS, f"{where} field 'peak_tops': dtype {dtype!r} is not in dtypes "
                                        f"{list(target.dtypes)}")


def _check_stages(report: CheckReport, stages: list[Any]) -> None:
    from .schemas import SLUG

    for stage in stages:
        where = f"stage {stage.name!r}"
        if not isinstance(stage.name, str) or not SLUG.match(stage.name):
            report.problem(STAGES, f"{where} field 'name': use lowercase letters, digits, '-' or '_'")
        if not callable(getattr(stage, "run", None)):
            report.problem(STAGES, f"{where} field 'run': must be a method run(context) -> StageResult")
        target = getattr(stage, "target", None)
        if isinstance(target, str) and ":" in target:  # a LazyStage: its module must exist (not imported)
            module = target.partition(":")[0]
            try:
                found = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                found = None
            if found is None:
                report.problem(STAGES, f"{where} field 'target': module {module!r} of {target!r} is not importable")


def _check_config(report: CheckReport, manager: PluginManager, name: str, verticals: list[Any]) -> None:
    entries: list[str] = []
    hook = getattr(manager.pm.hook, SEARCH_PATH)
    for impl in hook.get_hookimpls():
        if impl.plugin_name == name:
            try:
                value = impl.function()
            except Exception:
                continue  # recorded by the manager already
            entries += [value] if isinstance(value, str) else list(value or [])
    for entry in entries:
        if not isinstance(entry, str):
            report.problem(SEARCH_PATH, f"returned {entry!r}; entries must be strings like 'pkg://my_plugin.conf'")
        elif entry.startswith("pkg://"):
            package = entry[len("pkg://"):].replace("/", ".")
            try:
                found = importlib.util.find_spec(package)
            except (ImportError, ValueError):
                found = None
            if found is None:
                report.problem(SEARCH_PATH, f"{entry!r}: package {package!r} is not importable (does the conf "
                                            "folder have an __init__.py, and is it inside the installed package?)")
    if not verticals:
        return
    from .config import compose

    for vertical in verticals:
        try:
            config, _raw = compose([f"vertical={vertical.name}"])
        except Exception as exc:
            if "vertical.vertical" in str(exc):
                hint = f" (is '# @package _global_' the first line of conf/vertical/{vertical.name}.yaml?)"
            else:
                hint = "" if entries else (" (this plugin returns no search path: ship conf/vertical/<name>.yaml "
                                           "and return 'pkg://<package>.conf')")
            report.problem(SEARCH_PATH, f"vertical {vertical.name!r}: `vertical={vertical.name}` does not compose: "
                                        f"{_one_line(exc)}{hint}")
            continue
        if config.vertical.name != vertical.name:
            report.problem(SEARCH_PATH, f"vertical {vertical.name!r}: conf/vertical/{vertical.name}.yaml sets "
                                        f"vertical.name to {config.vertical.name!r}; it must be {vertical.name!r}")


def _one_line(exc: BaseException) -> str:
    """The whole message on one line (a config error lists one problem per line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dsvl_adapt.testing NAME... [--data DIR]``: check installed plugins; exit 1 on problems."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dsvl_adapt.testing",
                                     description="Check everything a dsvl-adapt plugin supplies (the conformance kit).")
    parser.add_argument("names", nargs="+", metavar="PLUGIN", help="entry-point or module names")
    parser.add_argument("--data", metavar="DIR", help="a sample data folder (train.jsonl, validation.jsonl, "
                                                      "test.jsonl and images): also load every split from it")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    reports = [check_plugin(name, data_source=args.data) for name in args.names]
    for report in reports:
        print(report)
    return 0 if all(r.ok for r in reports) else 1


__all__ = ["CheckReport", "check_plugin", "dsvl_plugin", "plugin_module", "registered_plugin"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
