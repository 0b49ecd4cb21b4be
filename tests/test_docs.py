"""Meta-tests on the documentation (as datasette does): every hook has a section in
docs/plugins/hooks.md, every CLI subcommand is mentioned in the docs, the docs' code runs, and their
links resolve."""

from __future__ import annotations

import importlib.util
import re
import types
from pathlib import Path

import pytest

from dsvl_adapt import cli, hookspecs, testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins"
PAGES = ("README.md", "hooks.md", "tutorial.md", "file-only.md", "testing.md", "troubleshooting.md")
SUBCOMMANDS = tuple(next(a for a in cli.build_parser()._actions if a.dest == "command").choices)


def _headings(page: str) -> list[str]:
    return re.findall(r"^#{1,6}\s+(.+?)\s*$", (DOCS / page).read_text(), flags=re.M)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def _marked_block(page: str, marker: str) -> str:
    match = re.search(rf"<!-- doc-test: {marker} -->\n```python\n(.*?)^```", (DOCS / page).read_text(),
                      flags=re.M | re.S)
    assert match, f"{page} lost its '<!-- doc-test: {marker} -->' code block"
    return match.group(1)


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_section_in_hooks_md(name):
    assert any(name in heading for heading in _headings("hooks.md")), (
        f"docs/plugins/hooks.md has no section for {name}: add a heading '## {name}' with its signature, "
        "when it is called, what it must supply and an example"
    )


def test_hooks_md_documents_no_hook_that_does_not_exist():
    documented = {h for h in _headings("hooks.md") if h.startswith("dsvl_adapt_")}
    assert documented <= set(hookspecs.HOOK_NAMES), documented - set(hookspecs.HOOK_NAMES)


def test_every_hook_section_shows_its_signature_and_an_example():
    text = (DOCS / "hooks.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    for name in hookspecs.HOOK_NAMES:
        section = next(s for s in sections if s.startswith(name))
        assert f"{name}(" in section, f"{name}: no signature"
        assert "```python" in section and "@hookimpl" in section, f"{name}: no example"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_cli_subcommand_is_mentioned_in_the_docs(command):
    """A user who reads README.md and docs/ meets every `dsvl-adapt` subcommand at least once."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    mentioned = [page.relative_to(ROOT).as_posix() for page in pages if f"dsvl-adapt {command}" in page.read_text()]
    assert mentioned, f"`dsvl-adapt {command}` is in the CLI but in none of README.md, docs/**/*.md: document it"


def test_the_plugin_guide_mentions_the_authoring_commands():
    guide = " ".join((DOCS / page).read_text() for page in PAGES)
    for text in ("dsvl-adapt new-plugin", "dsvl-adapt check-plugin", "--data files", "--data DIR", "--dir PATH",
                 "val`/`valid`/`dev.jsonl", "subsample your files too (seeded)", "data.allow_outside"):
        assert text in guide, f"docs/plugins/ does not mention {text!r}"


def test_the_help_and_the_readme_agree_on_the_default_run_time():
    """The time the README's first command states is the one `dsvl-adapt --help` states."""
    readme = (ROOT / "README.md").read_text()
    stated = re.search(r"write a scorecard \((about [0-9]+ min on 2 [A-Za-z ]*cores)", readme)
    assert stated, "the README's first command no longer states its time"
    assert stated.group(1) in cli.EPILOG


def test_file_only_md_shows_the_loader_the_scaffold_writes():
    from dsvl_adapt.scaffold import render

    shown = re.search(r"^```python\n(def load_rows.*?)^```", (DOCS / "file-only.md").read_text(), flags=re.M | re.S)
    assert shown, "file-only.md lost its load_rows block"
    generated = render("weld-check", "files")["dsvl_adapt_weld_check/__init__.py"]
    assert shown.group(1) in generated, "file-only.md's load_rows differs from what `new-plugin --data files` writes"


@pytest.mark.parametrize("index", range(len(_python_blocks((DOCS / "hooks.md").read_text()))))
def test_hooks_md_examples_run(index):
    """Each example is complete: it runs, and its register hooks build valid schema objects."""
    code = _python_blocks((DOCS / "hooks.md").read_text())[index]
    module = types.ModuleType(f"hooks_md_example_{index}")
    exec(compile(code, f"hooks.md example {index}", "exec"), module.__dict__)
    for name in hookspecs.HOOK_NAMES:
        function = getattr(module, name, None)
        if function is None:
            continue
        assert hasattr(function, "dsvl_adapt_impl"), f"{name} in the example lacks @hookimpl"
        if name.startswith("dsvl_adapt_register_"):
            registered: list = []
            function(register=registered.append)
            assert registered, f"{name} example registers nothing"
        if name == "dsvl_adapt_register_metrics":  # the example's metrics pass the kit (none is constant)
            report = testing.check_plugin(testing.plugin_module(f"hooks_md_metrics_{index}", **{name: function}))
            assert report.ok, str(report)
        elif name == "dsvl_adapt_config_search_path":
            assert function().startswith("pkg://")


def test_the_tutorial_code_passes_the_kit(tmp_path, monkeypatch):
    """The tutorial's generator and metric, as printed, pass check_plugin."""
    from dsvl_adapt.schemas import DatasetSpec, MetricSpec, PromptTemplate, Vertical

    (tmp_path / "tutorial_generator.py").write_text(_marked_block("tutorial.md", "generator"))
    (tmp_path / "tutorial_metrics.py").write_text(_marked_block("tutorial.md", "metrics"))
    monkeypatch.syspath_prepend(str(tmp_path))
    generator = importlib.import_module("tutorial_generator")
    metrics = importlib.import_module("tutorial_metrics")

    def load(request):
        return generator.generate_rows(request.split, request.size, seed=request.seed, image_size=request.image_size)

    plugin = testing.plugin_module(
        "tutorial_plugin",
        dsvl_adapt_register_verticals=lambda register: register(Vertical(
            name="docs-scan-orientation", description="x", dataset="docs-scan-orientation-examples",
            prompt="docs-scan-orientation-qa", metrics=["exact_match", "docs-turn-error"])),
        dsvl_adapt_register_datasets=lambda register: register(DatasetSpec(
            name="docs-scan-orientation-examples", load=load)),
        dsvl_adapt_register_prompts=lambda register: register(PromptTemplate(
            name="docs-scan-orientation-qa", user="{question}")),
        dsvl_adapt_register_metrics=lambda register: register(MetricSpec(
            name="docs-turn-error", compute=metrics.turn_error, higher_is_better=False)),
    )
    try:
        report = testing.check_plugin(plugin, rows_per_split=12, image_size=32, compose_config=False)
        assert report.ok, str(report)
        answers = [r["answer"] for r in generator.generate_rows("train", 24, image_size=32)]
        assert all(answers.count(a) == 6 for a in ("upright", "left", "upside-down", "right"))  # as the text says
    finally:
        monkeypatch.delitem(__import__("sys").modules, "tutorial_generator")
        monkeypatch.delitem(__import__("sys").modules, "tutorial_metrics")


def test_testing_md_documents_the_whole_kit():
    text = (DOCS / "testing.md").read_text()
    for name in testing.__all__:
        assert f"## {name}" in text or f"`{name}`" in text, f"testing.md does not document {name}"
    for member in ("ok", "problems", "raise_for_problems"):
        assert f"`{member}" in text


def test_troubleshooting_covers_the_common_failures():
    headings = " | ".join(_headings("troubleshooting.md")).lower()
    for topic in ("not listed", "import error", "duplicate", "config not found", "row validation",
                  "symlinked image folders", "not applicable", "dsvl_adapt_plugins", "dsvl_adapt_block_plugins"):
        assert topic in headings, f"troubleshooting.md has no section on {topic!r}"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
        assert (DOCS / target).is_file(), f"{page} links to missing {target}"
    for target, anchor in re.findall(r"\]\(([^)#\s]*\.md)?#([^)]+)\)", text):
        slugs = {_slug(h) for h in _headings(target or page)}
        assert anchor in slugs, f"{page} links to missing anchor #{anchor} in {target or page}"


def test_the_index_links_every_page():
    index = (DOCS / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"]({page})" in index, f"README.md does not link {page}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")
