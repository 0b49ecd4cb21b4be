"""`create_plugin` / `dsvl-adapt new-plugin`: the generated plugin installs, is listed, passes its own
tests (which use the kit) and runs end to end to a scorecard.

The end-to-end tests install the generated plugin into a temporary folder put on PYTHONPATH, so the
shared virtual environment is never modified and nothing is downloaded. With hatchling importable
the plugin is built and installed by pip (``--no-build-isolation --no-index``), exactly as a user's
``pip install`` would; without it, the package and an entry-point record made from its
pyproject.toml are copied in (what an editable install amounts to) and the wheel test is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from dsvl_adapt.scaffold import ScaffoldError, create_plugin, names_for, render, validate_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

NAME = "legal-docs"
PACKAGE = "dsvl_adapt_legal_docs"
HAS_HATCHLING = importlib.util.find_spec("hatchling") is not None
NO_HATCHLING = "hatchling is not installed in this environment (add it to the dev extra to test the wheel build)"
EXPECTED_HOOKS = {"dsvl_adapt_register_verticals", "dsvl_adapt_register_datasets", "dsvl_adapt_register_prompts",
                  "dsvl_adapt_register_metrics", "dsvl_adapt_register_hardware_targets",
                  "dsvl_adapt_config_search_path"}


# ------------------------------------------------------------------------------ names and files
@pytest.mark.parametrize("name", ["legal-docs", "x", "retail2", "a1-b2-c3"])
def test_valid_names(name):
    assert validate_name(name) == name
    assert names_for(name)["package"] == "dsvl_adapt_" + name.replace("-", "_")
    assert names_for(name)["dist"] == f"dsvl-adapt-{name}"


@pytest.mark.parametrize("name, hint", [("Legal-Docs", "legal-docs"), ("legal_docs", "legal-docs"),
                                        ("legal docs", "legal-docs"), ("1legal", "legal"), ("legal--docs", None),
                                        ("-legal", None), ("legal-", None), ("", None), ("x" * 41, None)])
def test_invalid_names_are_refused_with_a_suggestion(name, hint, tmp_path):
    with pytest.raises(ScaffoldError, match="not a valid plugin name") as raised:
        create_plugin(name, tmp_path)
    if hint:
        assert f"try {hint!r}" in str(raised.value)
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_existing_non_empty_folder_is_never_overwritten(tmp_path):
    target = tmp_path / "dsvl-adapt-legal-docs"
    target.mkdir()
    assert create_plugin(NAME, tmp_path) == target  # an empty folder is fine
    readme = target / "README.md"
    readme.write_text("my edits")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        create_plugin(NAME, tmp_path)
    assert readme.read_text() == "my edits"


SAMPLE_FILES = {"tests/sample_data/train.jsonl", "tests/sample_data/validation.jsonl", "tests/sample_data/test.jsonl"}


def test_the_generated_files(tmp_path):
    root = create_plugin(NAME, tmp_path / "new" / "parent")  # missing parents are created
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == set(render(NAME))
    assert {f for f in files if not f.startswith("tests/sample_data/images/")} == {
        "pyproject.toml", "README.md", ".gitignore", f"{PACKAGE}/__init__.py", f"{PACKAGE}/generator.py",
        f"{PACKAGE}/conf/__init__.py", f"{PACKAGE}/conf/vertical/{NAME}.yaml", "tests/test_plugin.py", *SAMPLE_FILES,
    }
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".png":
            assert "${" not in path.read_text(), f"unfilled template variable in {path}"
    for path in root.rglob("*.py"):
        py_compile.compile(str(path), doraise=True)
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "dsvl-adapt-legal-docs"
    assert project["project"]["entry-points"]["dsvl_adapt"] == {NAME: PACKAGE}
    assert project["build-system"]["build-backend"] == "hatchling.build"
    config = (root / PACKAGE / "conf" / "vertical" / f"{NAME}.yaml").read_text()
    assert config.startswith("# @package _global_\n") and f"name: {NAME}\n" in config
    assert f"pkg://{PACKAGE}.conf" in (root / PACKAGE / "__init__.py").read_text()
    assert f'check_plugin("{NAME}", data_source=SAMPLE)' in (root / "tests" / "test_plugin.py").read_text()


def test_the_files_shape_has_no_generator_and_ships_the_sample_folder(tmp_path):
    root = create_plugin(NAME, tmp_path, data="files")
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == set(render(NAME, "files"))
    assert f"{PACKAGE}/generator.py" not in files and SAMPLE_FILES <= files
    images = [f for f in files if f.startswith("tests/sample_data/images/") and f.endswith(".png")]
    lines = [json.loads(line) for name in sorted(SAMPLE_FILES) for line in (root / name).read_text().splitlines()]
    assert len(images) == len(lines) >= 12 and {f"tests/sample_data/{row['image']}" for row in lines} == set(images)
    assert len({(root / f).read_bytes() for f in images}) == len(images)  # no image repeats across splits
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".png":
            assert "${" not in path.read_text(), f"unfilled template variable in {path}"
    for path in root.rglob("*.py"):
        py_compile.compile(str(path), doraise=True)
    assert "set data.source=DIR" in (root / PACKAGE / "__init__.py").read_text()
    assert "generator" not in (root / PACKAGE / "__init__.py").read_text()


def test_an_unknown_shape_is_refused(tmp_path):
    with pytest.raises(ScaffoldError, match="'csv' is not a plugin shape"):
        create_plugin(NAME, tmp_path, data="csv")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("shape", ["generator", "files"])
def test_the_generated_plugin_passes_the_kit_in_process(tmp_path, monkeypatch, shape):
    """Without installing: import the generated package from its folder and check it on its sample folder."""
    from dsvl_adapt.testing import check_plugin

    root = create_plugin("scaffold-probe", tmp_path, data=shape)
    monkeypatch.syspath_prepend(str(root))
    try:
        module = importlib.import_module("dsvl_adapt_scaffold_probe")
        report = check_plugin(module, rows_per_split=8, data_source=root / "tests" / "sample_data")
        assert report.ok, str(report)
        if shape == "generator":
            rows = module.generator.generate_rows("train", 32, image_size=32)
            assert len({r["answer"] for r in rows}) == 8  # 4 shapes + 4 colours
        else:  # without the folder the kit says how to check a file-only dataset
            report = check_plugin(module, compose_config=False)
            assert any("set data.source=DIR" in p and "--data DIR" in p for p in report.problems), report.problems
    finally:
        for name in [m for m in sys.modules if m.startswith("dsvl_adapt_scaffold_probe")]:
            del sys.modules[name]


def test_cli_new_plugin(tmp_path):
    from dsvl_adapt import cli

    assert cli.main(["new-plugin", NAME, "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "dsvl-adapt-legal-docs" / "pyproject.toml").is_file()
    assert cli.main(["new-plugin", NAME, "--dir", str(tmp_path)]) == 2  # refuses to overwrite, no traceback
    assert cli.main(["new-plugin", "Bad_Name", "--dir", str(tmp_path / "other")]) == 2
    assert cli.main(["new-plugin", NAME, "--data", "files", "--dir", str(tmp_path / "files")]) == 0
    assert not (tmp_path / "files" / "dsvl-adapt-legal-docs" / PACKAGE / "generator.py").exists()


# ------------------------------------------------------------------------------ end to end
def _install(plugin: Path, site: Path) -> str:
    """Install ``plugin`` into the folder ``site``; returns how ("wheel" or "copied")."""
    if HAS_HATCHLING:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--disable-pip-version-check", "--target", str(site), str(plugin)],
                       check=True, capture_output=True, text=True, timeout=300)
        return "wheel"
    project = tomllib.loads((plugin / "pyproject.toml").read_text())
    meta = project["project"]
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        shutil.copytree(plugin / package, site / package)
    dist_info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
             for group, entries in meta["entry-points"].items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines))
    return "copied"


FILES_NAME = "field-notes"  # the file-only vertical of the end-to-end tests


def _install_in_temp_site(base: Path, name: str, shape: str) -> tuple[Path, dict[str, str], str]:
    plugin = create_plugin(name, base, data=shape)
    site = base / "site"
    site.mkdir()
    how = _install(plugin, site)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, DSVL_ADAPT_NO_PROGRESS="1")
    env.pop("DSVL_ADAPT_PLUGINS", None)
    env.pop("DSVL_ADAPT_BLOCK_PLUGINS", None)
    return plugin, env, how


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The generated legal-docs plugin, installed in a temporary site folder; (root, env, how)."""
    return _install_in_temp_site(tmp_path_factory.mktemp("scaffold-e2e"), NAME, "generator")


@pytest.fixture(scope="module")
def installed_files(tmp_path_factory):
    """A file-only plugin (`new-plugin field-notes --data files`), installed the same way."""
    return _install_in_temp_site(tmp_path_factory.mktemp("scaffold-files-e2e"), FILES_NAME, "files")


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "dsvl-adapt"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dsvl_adapt.cli"]


def test_e2e_the_installed_plugin_is_listed(installed):
    plugin, env, _how = installed
    out = subprocess.run([*_cli(), "plugins", "--json"], capture_output=True, text=True, env=env, cwd=plugin.parent,
                         timeout=120, check=True)
    listed = {p["name"]: p for p in json.loads(out.stdout)}
    assert NAME in listed, out.stdout
    assert listed[NAME]["version"] == "0.1.0"
    assert listed[NAME]["errors"] == []
    assert EXPECTED_HOOKS <= set(listed[NAME]["hooks"])


def test_e2e_the_generated_tests_pass(installed):
    plugin, env, _how = installed
    # run from the parent folder so the *installed* package is imported, not the source folder
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin / "tests")],
                         capture_output=True, text=True, env=env, cwd=plugin.parent, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


SMOKE = [f"vertical={NAME}", "model=reference-tiny", "finetune=fast", "data.train_size=32", "data.validation_size=8",
         "data.test_size=8", "score.latency_repeats=3", "score.latency_warmup=1"]


def _run(env: dict[str, str], run_dir: Path, *extra: str, name: str = NAME) -> dict:
    started = time.perf_counter()
    smoke = [f"vertical={name}", *SMOKE[1:]]
    out = subprocess.run([*_cli(), "run", *smoke, *extra, f"run_dir={run_dir}"], capture_output=True, text=True,
                         env=env, cwd=run_dir.parent, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    card = json.loads((run_dir / "scorecard.json").read_text())
    assert card["vertical"] == name
    assert card["metric"] == f"{name}-accuracy"
    print(f"e2e run took {time.perf_counter() - started:.0f} s")
    return card


def test_e2e_run_writes_a_scorecard(installed, tmp_path):
    """load -> finetune -> score (about 30 s on 2 cores)."""
    _plugin, env, _how = installed
    card = _run(env, tmp_path / "run", "pipeline=teacher")
    assert set(card["accuracy"]) >= {"base", "teacher"}


@pytest.mark.slow
def test_e2e_full_default_pipeline(installed, tmp_path):
    """The default pipeline (pruning and distillation included) on the new vertical: minutes."""
    from dsvl_adapt.config import conf_dir

    _plugin, env, _how = installed
    fast_distill = ["distill=fast"] if (conf_dir() / "distill" / "fast.yaml").is_file() else []
    card = _run(env, tmp_path / "run", *fast_distill)
    assert "student" in card["accuracy"]


def test_e2e_the_file_only_plugins_generated_tests_pass(installed_files):
    plugin, env, _how = installed_files
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin / "tests")],
                         capture_output=True, text=True, env=env, cwd=plugin.parent, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "5 passed" in out.stdout


def test_e2e_check_plugin_command_on_the_sample_folder(installed_files):
    plugin, env, _how = installed_files
    sample = plugin / "tests" / "sample_data"
    out = subprocess.run([*_cli(), "check-plugin", FILES_NAME, "--data", str(sample)], capture_output=True,
                         text=True, env=env, cwd=plugin.parent, timeout=120)
    assert out.returncode == 0 and f"{FILES_NAME}: ok" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([*_cli(), "check-plugin", FILES_NAME], capture_output=True, text=True, env=env,
                         cwd=plugin.parent, timeout=120)
    assert out.returncode == 1 and "set data.source=DIR" in out.stdout and "--data DIR" in out.stdout


@pytest.mark.slow
def test_e2e_a_file_only_vertical_runs_on_its_sample_folder(installed_files, tmp_path):
    """new-plugin --data files, then a teacher run on the shipped sample folder, to a scorecard."""
    plugin, env, _how = installed_files
    card = _run(env, tmp_path / "run", "pipeline=teacher", f"data.source={plugin / 'tests' / 'sample_data'}",
                name=FILES_NAME)
    assert set(card["accuracy"]) >= {"base", "teacher"} and card["test_rows"] == 4


@pytest.mark.skipif(not HAS_HATCHLING, reason=NO_HATCHLING)
def test_e2e_the_wheel_carries_the_config_and_entry_point(installed, tmp_path):
    plugin, _env, _how = installed
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "-w", str(tmp_path), str(plugin)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{PACKAGE}/conf/__init__.py" in names
    assert f"{PACKAGE}/conf/vertical/{NAME}.yaml" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert f"{NAME} = {PACKAGE}" in zipfile.ZipFile(wheel).read(entry_points).decode()
