"""The plugin authors' test kit (dsvl_adapt.testing): check_plugin, registered_plugin, the fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from dsvl_adapt.engine import LazyStage
from dsvl_adapt.metrics import exact_match
from dsvl_adapt.plugins import get_manager
from dsvl_adapt.schemas import DatasetSpec, HardwareTarget, MetricSpec, PromptTemplate, Vertical
from dsvl_adapt.testing import CheckReport, check_plugin, dsvl_plugin, plugin_module, registered_plugin  # noqa: F401


def _image(value: int = 0) -> Image.Image:
    return Image.fromarray(np.full((32, 32, 3), value, dtype=np.uint8), mode="RGB")


def _rows(request, broken_row: int | None = None):
    for i in range(request.size):
        row = {"id": f"{request.split}-{i}", "image": _image(i * 20), "question": "What number?",
               "answer": str(i), "meta": {"kind": "digit"}}
        if i == broken_row:
            del row["answer"]
        yield row


def _broken_plugin():
    """One mistake per hook: a row without its answer, an unknown prompt field, a metric out of range,
    a target with a negative memory budget."""

    def verticals(register):
        register(Vertical(name="broken", description="x", dataset="broken-data", prompt="broken-qa",
                          metrics=["broken-metric"], targets=["broken-npu"]))

    def datasets(register):
        register(DatasetSpec(name="broken-data", load=lambda request: _rows(request, broken_row=2)))

    def prompts(register):
        register(PromptTemplate(name="broken-qa", user="As a {speciality} expert: {question}"))

    def metrics(register):
        register(MetricSpec(name="broken-metric", compute=lambda predictions, references, rows: 1.7))

    def targets(register):
        register(HardwareTarget(name="broken-npu", device="npu", runtime="onnxruntime", memory_gb=-1,
                                dtypes=["int8"]))

    return plugin_module("broken_plugin", dsvl_adapt_register_verticals=verticals,
                         dsvl_adapt_register_datasets=datasets, dsvl_adapt_register_prompts=prompts,
                         dsvl_adapt_register_metrics=metrics, dsvl_adapt_register_hardware_targets=targets)


def _has(report: CheckReport, *fragments: str) -> bool:
    return any(all(f in p for f in fragments) for p in report.problems)


def test_a_broken_plugin_is_caught_with_hook_and_field_named():
    report = check_plugin(_broken_plugin(), rows_per_split=4, compose_config=False)
    assert not report.ok
    assert _has(report, "dsvl_adapt_register_datasets: dataset 'broken-data' split 'train' row 2: "
                        "row is missing 'answer'"), report.problems
    assert _has(report, "dsvl_adapt_register_prompts: prompt 'broken-qa' uses unknown field {speciality}")
    assert _has(report, "dsvl_adapt_register_metrics: metric 'broken-metric' returned 1.7 outside [0, 1]")
    assert _has(report, "dsvl_adapt_register_hardware_targets", "memory_gb", "greater than 0")
    assert _has(report, "dsvl_adapt_register_verticals: vertical 'broken' field 'targets'", "'broken-npu'")
    with pytest.raises(AssertionError) as raised:
        report.raise_for_problems()
    for problem in report.problems:  # every problem is listed, not just the first
        assert problem in str(raised.value)
    assert "broken_plugin" not in get_manager().info  # the check registered it only while it ran


def test_the_industrial_plugin_passes():
    report = check_plugin("industrial")
    assert report.ok, str(report)
    assert report.raise_for_problems() is report
    assert "1 vertical(s)" in str(report)


def test_a_module_name_finds_the_installed_plugin():
    assert check_plugin("dsvl_adapt_industrial", compose_config=False).plugin == "industrial"


def test_a_missing_plugin_says_how_to_install_it():
    report = check_plugin("no-such-vertical")
    assert not report.ok and "not installed" in report.problems[0] and "entry-points.dsvl_adapt" in report.problems[0]


def test_metric_direction_and_best_value_are_checked():
    def error_rate(predictions, references, rows):
        return sum(p != r for p, r in zip(predictions, references, strict=True)) / len(references)

    def metrics(register):
        register(MetricSpec(name="kit-error-rate", compute=error_rate))  # forgot higher_is_better=False
        register(MetricSpec(name="kit-crash", compute=lambda p, r, rows: 1.0 if p == r else 1 / 0))
        register(MetricSpec(name="kit-good-error-rate", compute=error_rate, higher_is_better=False))

    report = check_plugin(plugin_module("kit_metrics", dsvl_adapt_register_metrics=metrics))
    assert _has(report, "metric 'kit-error-rate' gives 0 when every prediction equals its reference; the best "
                        "value is 1 (higher_is_better=True")
    assert _has(report, "metric 'kit-crash' raised ZeroDivisionError on empty predictions")
    assert not _has(report, "kit-good-error-rate")


def test_nondeterministic_and_short_datasets_are_caught():
    counter = iter(range(10**6))

    def datasets(register):
        register(DatasetSpec(name="kit-random", load=lambda req: [
            {"image": _image(next(counter) % 256), "question": "q?", "answer": "a"} for _ in range(req.size)]))
        register(DatasetSpec(name="kit-short", load=lambda req: list(_rows(req))[:1]))

    report = check_plugin(plugin_module("kit_data", dsvl_adapt_register_datasets=datasets))
    assert _has(report, "dataset 'kit-random' split 'train' row 0: differs between two loads")
    assert _has(report, "dataset 'kit-short' split 'validation': returned 1 rows for request.size=4")


def test_prompt_format_errors_stage_targets_and_peak_tops_are_caught():
    def prompts(register):
        register(PromptTemplate(name="kit-unbalanced", user="{question"))

    def stages(register):
        register(LazyStage("kit-stage", "missing module", "no_such_module_xyz:Stage"))

    def targets(register):
        register(HardwareTarget(name="kit-cpu", device="cpu", runtime="torch", memory_gb=1, dtypes=["fp32"],
                                peak_tops={"int8": 1.0}))

    report = check_plugin(plugin_module("kit_misc", dsvl_adapt_register_prompts=prompts,
                                        dsvl_adapt_register_stages=stages,
                                        dsvl_adapt_register_hardware_targets=targets))
    assert _has(report, "dsvl_adapt_register_prompts: prompt 'kit-unbalanced' field 'user' is not a valid format")
    assert _has(report, "dsvl_adapt_register_stages: stage 'kit-stage' field 'target'", "no_such_module_xyz")
    assert _has(report, "dsvl_adapt_register_hardware_targets: hardware target 'kit-cpu' field 'peak_tops'")


def test_a_vertical_without_its_config_is_reported_against_the_search_path_hook():
    def verticals(register):
        register(Vertical(name="kit-noconf", description="x", dataset="industrial-surfaces",
                          prompt="industrial-inspection", metrics=["exact_match"]))

    report = check_plugin(plugin_module("kit_noconf", dsvl_adapt_register_verticals=verticals))
    assert _has(report, "dsvl_adapt_config_search_path: vertical 'kit-noconf': `vertical=kit-noconf` does not "
                        "compose", "returns no search path")


def test_a_plugin_with_no_hooks_is_reported():
    report = check_plugin(plugin_module("kit_empty"))
    assert _has(report, "implements no dsvl_adapt hooks")


def test_registered_plugin_registers_and_unregisters_even_on_error():
    manager = get_manager()

    def metrics(register):
        register(MetricSpec(name="kit-temporary", compute=lambda p, r, rows: 1.0))

    module = plugin_module("kit_temporary", dsvl_adapt_register_metrics=metrics)
    with pytest.raises(RuntimeError):
        with registered_plugin(module) as registered:
            assert registered is manager
            assert "kit-temporary" in manager.registry.metrics
            with pytest.raises(ValueError, match="already registered"):
                with registered_plugin(module):
                    pass
            raise RuntimeError("test body failed")
    assert not manager.pm.has_plugin("kit_temporary")
    assert "kit-temporary" not in manager.registry.metrics


def test_the_fixture_registers_for_one_test(dsvl_plugin):  # noqa: F811 - the imported fixture
    def metrics(register):
        register(MetricSpec(name="kit-fixture", compute=lambda p, r, rows: 1.0))

    manager = dsvl_plugin(plugin_module("kit_fixture", dsvl_adapt_register_metrics=metrics))
    assert "kit-fixture" in manager.registry.metrics


def test_the_fixture_unregisters_after_the_test_via_pytest_plugins(tmp_path):
    """A plugin author's suite: ``pytest_plugins = ["dsvl_adapt.testing"]`` in the root conftest."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["dsvl_adapt.testing"]\n')
    (tmp_path / "test_author.py").write_text(textwrap.dedent("""
        from dsvl_adapt.plugins import get_manager
        from dsvl_adapt.schemas import MetricSpec
        from dsvl_adapt.testing import plugin_module

        def metrics(register):
            register(MetricSpec(name="author-metric", compute=lambda p, r, rows: 1.0))

        def test_registered(dsvl_plugin):
            manager = dsvl_plugin(plugin_module("author", dsvl_adapt_register_metrics=metrics))
            assert "author-metric" in manager.registry.metrics

        def test_gone_afterwards():
            assert not get_manager().pm.has_plugin("author")
            assert "author-metric" not in get_manager().registry.metrics
    """))
    env = dict(os.environ, DSVL_ADAPT_PLUGINS="")  # no entry points needed: keeps it fast
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout


def test_command_line_exit_status():
    from dsvl_adapt.testing import main

    assert main(["industrial"]) == 0
    assert main(["no-such-vertical"]) == 1


def test_hook_mistakes_pluggy_accepts_silently_are_caught():
    import types

    from dsvl_adapt import hookimpl

    def dsvl_adapt_register_prompts(register):  # not decorated: pluggy ignores it
        register(PromptTemplate(name="kit-undecorated"))

    module = types.ModuleType("kit_silent")
    module.dsvl_adapt_register_metric = hookimpl(lambda register: None)  # misspelt: pluggy accepts it
    module.dsvl_adapt_register_prompts = dsvl_adapt_register_prompts
    report = check_plugin(module)
    assert _has(report, "dsvl_adapt_register_metric: is not a dsvl-adapt hook", "did you mean "
                        "dsvl_adapt_register_metrics?")
    assert _has(report, "dsvl_adapt_register_prompts: is defined but not decorated with @hookimpl")
    with pytest.raises(ValueError, match="not a dsvl-adapt hook"):
        plugin_module("kit_bad", dsvl_adapt_register_metric=lambda register: None)


# ------------------------------------------------------------------------------ metrics that say nothing
def test_a_constant_metric_is_rejected():
    """A metric that always returns 1.0 gives the best value to correct answers and to every wrong one."""

    def datasets(register):
        register(DatasetSpec(name="kit-const-data", load=lambda request: _rows(request)))

    def metrics(register):
        register(MetricSpec(name="kit-always-one", compute=lambda predictions, references, rows: 1.0))
        register(MetricSpec(name="kit-always-zero-error", compute=lambda p, r, rows: 0.0, higher_is_better=False))
        register(MetricSpec(name="kit-accuracy", compute=exact_match))

    report = check_plugin(plugin_module("kit_constant", dsvl_adapt_register_datasets=datasets,
                                        dsvl_adapt_register_metrics=metrics))
    assert _has(report, "dsvl_adapt_register_metrics: metric 'kit-always-one' returned 1 for every input tried",
                "constant metric"), report.problems
    assert _has(report, "metric 'kit-always-zero-error' returned 0 for every input tried")
    assert not _has(report, "kit-accuracy")


def test_a_metric_blind_to_right_and_wrong_is_rejected():
    """The refusal-rate bug: it never looks at the references, so on answers with no refusal it is 0
    whatever the model says; and a constant below the best value is reported twice over."""

    def metrics(register):
        register(MetricSpec(name="kit-refusals", higher_is_better=False,
                            compute=lambda p, r, rows: sum(x == "unknown" for x in p) / len(p)))
        register(MetricSpec(name="kit-half", compute=lambda p, r, rows: 0.5))

    report = check_plugin(plugin_module("kit_blind", dsvl_adapt_register_metrics=metrics))
    assert _has(report, "metric 'kit-refusals' returned 0 for every input tried"), report.problems
    assert _has(report, "metric 'kit-half' gives 0.5 when every prediction equals its reference")
    assert _has(report, "metric 'kit-half' returned 0.5 for every input tried")


def test_a_metric_may_say_not_applicable_but_not_on_its_own_data():
    def datasets(register):
        register(DatasetSpec(name="kit-na-data", load=lambda request: _rows(request)))

    def metrics(register):
        register(MetricSpec(name="kit-never-applies", compute=lambda p, r, rows: None))

    report = check_plugin(plugin_module("kit_na", dsvl_adapt_register_datasets=datasets,
                                        dsvl_adapt_register_metrics=metrics))
    assert _has(report, "metric 'kit-never-applies' returned None (not applicable) on 12 rows", "rows_per_split")


# ------------------------------------------------------------------------------ a sample data folder
def _jsonl_plugin(name: str, loader):
    def datasets(register):
        register(DatasetSpec(name=f"{name}-data", load=loader))

    def prompts(register):
        register(PromptTemplate(name=f"{name}-qa", user="{question}"))

    def verticals(register):
        register(Vertical(name=name, description="x", dataset=f"{name}-data", prompt=f"{name}-qa",
                          metrics=["exact_match"]))

    return plugin_module(name.replace("-", "_"), dsvl_adapt_register_datasets=datasets,
                         dsvl_adapt_register_prompts=prompts, dsvl_adapt_register_verticals=verticals)


def _from_files_or_generated(request):
    if request.source is not None:
        from dsvl_adapt.data.jsonl import read_jsonl_split

        return read_jsonl_split(request.source, request.split)
    return _rows(request)


def _files_only(request):
    if request.source is None:
        from dsvl_adapt.errors import DataError

        raise DataError("this vertical has no generated data: set data.source=DIR")
    from dsvl_adapt.data.jsonl import read_jsonl_split

    return read_jsonl_split(request.source, request.split)


@pytest.fixture()
def sample(tmp_path):
    from dsvl_adapt.scaffold.sample import write_sample_folder

    return write_sample_folder(tmp_path / "sample")


def test_a_loader_is_checked_against_a_sample_folder(sample):
    report = check_plugin(_jsonl_plugin("kit-files", _from_files_or_generated), compose_config=False,
                          data_source=sample)
    assert report.ok, str(report)
    assert f"from {sample}" in str(report)


def test_a_bad_row_in_the_sample_folder_is_reported_with_file_and_line(sample):
    with (sample / "validation.jsonl").open("a") as handle:
        handle.write('{"image": "images/missing.png", "question": "q", "answer": "red"}\n')
    report = check_plugin(_jsonl_plugin("kit-files", _from_files_or_generated), compose_config=False,
                          data_source=sample)
    assert _has(report, "dsvl_adapt_register_datasets: dataset 'kit-files-data' split 'validation' from data "
                        "source", "validation.jsonl:5", "missing.png"), report.problems


def test_a_loader_that_ignores_the_source_is_caught(sample):
    report = check_plugin(_jsonl_plugin("kit-deaf", lambda request: _rows(request)), compose_config=False,
                          data_source=sample)
    assert _has(report, "dataset 'kit-deaf-data' split 'train' from data source", "ignores request.source"), \
        report.problems


def test_a_file_only_dataset_passes_with_a_sample_folder_and_says_how_without(sample):
    plugin = _jsonl_plugin("kit-file-only", _files_only)
    assert check_plugin(plugin, compose_config=False, data_source=sample).ok
    report = check_plugin(plugin, compose_config=False)
    assert _has(report, "dataset 'kit-file-only-data' split 'train'", "set data.source=DIR", "data_source=DIR",
                "--data DIR"), report.problems


def test_a_missing_sample_folder_is_named(tmp_path):
    report = check_plugin("industrial", data_source=tmp_path / "nope")
    assert not report.ok and "is not a folder" in report.problems[0] and "nope" in report.problems[0]


def test_check_plugin_command_takes_a_sample_folder(sample):
    from dsvl_adapt import cli

    assert cli.main(["check-plugin", "industrial", "--data", str(sample)]) == 0
    assert cli.main(["check-plugin", "industrial", "--data", str(sample / "nope")]) == 1
