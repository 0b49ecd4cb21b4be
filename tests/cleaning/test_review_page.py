"""Level 3: the review page in headless Chromium (playwright driving the system browser, nothing downloaded):
load it, mark three rows, export the decisions; applying the file changes exactly those rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = ["vertical=ecommerce", "model=reference-tiny"]

needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="the review-page test drives a system Chromium (Debian: apt-get install -y chromium)")


def _export_decisions(page_path: Path, download_to: Path) -> list[dict]:
    sync_api = pytest.importorskip("playwright.sync_api", reason='needs playwright: pip install "dsvl-adapt[dev]"')
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(page_path.as_uri())
            assert page.locator(".row").count() >= 6
            assert page.locator(".row img").first.evaluate("img => img.complete && img.naturalWidth > 0")
            page.locator('.row[data-id="wrongattr"] input[value="fix"]').check()
            page.locator('.row[data-id="wrongattr"] input.answer').fill("purple")
            page.locator('.row[data-id="conflict"] input[value="drop"]').check()
            page.locator('.row[data-id="dup"] input[value="keep"]').check()
            assert page.locator("#count").inner_text() == "3 decisions"
            with page.expect_download() as download:
                page.locator("#export").click()
            download.value.save_as(download_to)
        finally:
            browser.close()
    return [json.loads(line) for line in download_to.read_text().splitlines()]


@needs_browser
def test_review_page_exports_decisions_that_change_exactly_the_marked_rows(planted_copy: Path, tmp_path: Path):
    from dsvl_adapt.cleaning.stage import clean_dataset
    from dsvl_adapt.config import compose
    from dsvl_adapt.data.loading import load_configured_split
    from dsvl_adapt.plugins import get_registry

    clean_dataset([*TINY, f"data.source={planted_copy}", "clean.level2=false"], tmp_path / "out", log=lambda m: None)
    decisions = _export_decisions(tmp_path / "out" / "review.html", tmp_path / "decisions.jsonl")
    assert sorted(decisions, key=lambda d: d["id"]) == [
        {"split": "train", "id": "conflict", "decision": "drop"},
        {"split": "train", "id": "dup", "decision": "keep"},
        {"split": "train", "id": "wrongattr", "decision": "fix", "answer": "purple"},
    ]

    def train_rows(*extra: str) -> dict[str, str]:
        config, _ = compose([*TINY, f"data.source={planted_copy}", "data.on_bad_row=skip", *extra])
        return {r.id: r.answer for r in load_configured_split(config, get_registry(), "train", 64).rows}

    before = train_rows()
    after = train_rows(f"clean.decisions={tmp_path / 'decisions.jsonl'}")
    changed = {row_id for row_id in before if after.get(row_id) != before[row_id]}
    assert changed == {"conflict", "wrongattr"} and after["wrongattr"] == "purple"
    assert set(after) == set(before) - {"conflict"}


def test_a_malformed_decisions_file_is_refused_naming_the_line(tmp_path: Path):
    from dsvl_adapt.cleaning.view import read_decisions
    from dsvl_adapt.errors import DataError

    path = tmp_path / "decisions.jsonl"
    path.write_text('{"split": "train", "id": "a", "decision": "drop"}\n{"split": "train", "id": "b", "decision": "fix"}\n')
    with pytest.raises(DataError, match=r"decisions.jsonl:2: a 'fix' decision needs the new 'answer'"):
        read_decisions(path)
    path.write_text('{"split": "train", "id": "a", "decision": "remove"}\n')
    with pytest.raises(DataError, match=r"decisions.jsonl:1: decision 'remove' is not one of keep, fix, drop"):
        read_decisions(path)


@pytest.mark.slow  # a run: the load stage (reference-tiny) and the clean stage, about a minute
def test_a_run_with_the_clean_stage_applies_decisions_and_hands_its_view_to_later_stages(planted_copy: Path,
                                                                                        tmp_path: Path):
    from dsvl_adapt.api import execute
    from dsvl_adapt.config import compose

    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text('{"split": "train", "id": "dup", "decision": "keep"}\n'
                         '{"split": "train", "id": "wrongattr", "decision": "fix", "answer": "purple"}\n')
    config, raw = compose([*TINY, f"data.source={planted_copy}", "pipeline.stages=[load,clean]", "clean.level2=false",
                           f"clean.decisions={decisions}", f"run_dir={tmp_path / 'run'}"])
    context = execute(config, raw, config.run_dir, log=lambda m: None)
    figures = context.figures["clean"]["data"]
    assert figures["decided"] == 2 and figures["dropped"] == 3  # blank, leak, the unreadable row; 'dup' kept
    train = {r.id: r.answer for r in context.split("train", 64).rows}
    assert "dup" in train and "blank" not in train and "leak" not in train and train["wrongattr"] == "purple"
