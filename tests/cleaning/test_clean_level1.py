"""Level 1 cleaning through the CLI and the API: planted faults are found, the user's files are not touched,
and the cleaned view drops exactly what it should."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from planted_data import PLANTED

TINY = ["vertical=ecommerce", "model=reference-tiny"]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_clean_command_finds_the_planted_faults_and_leaves_the_files_alone(planted_copy: Path, tmp_path: Path):
    before = _hashes(planted_copy)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "clean", *TINY, f"data.source={planted_copy}",
                             "clean.level2=false", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _hashes(planted_copy) == before
    assert "usable share" in result.stderr and "duplicate" in result.stderr
    report = json.loads((out / "clean_report.json").read_text())
    found = {(f["row_id"], f["reason"]) for f in report["findings"]}
    for row_id, reason in PLANTED.items():
        if row_id == "broken":
            assert any(r.startswith("train.jsonl:") and reason == "unreadable" for r, reason in found), found
        else:
            assert (row_id, reason) in found, (row_id, reason, sorted(found))
    # nothing else in the generated rows is a finding but the originals of 'conflict' and 'wrongattr' (the same
    # picture and question, another answer: which one is right is for a person to say)
    others = {row_id for row_id, _ in found if row_id not in PLANTED and not row_id.startswith("train.jsonl:")}
    assert len(others) == 2, others
    assert all((row_id, "conflicting_answers") in found for row_id in others)
    view = json.loads((out / "cleaned_view.json").read_text())
    assert set(view["dropped"]["train"]) == {"blank", "dup", "leak"} | {r for r, _ in found if r.startswith("train.jsonl:")}
    assert view["fixed"] == {}
    figures = report["figures"]
    assert figures["rows_in"] == 72 + 6 + 24 + 24
    assert figures["dropped"] == 4 and figures["flagged_by_level"] == {"1": 8}
    assert figures["usable_share"] == round((126 - 4 - 4) / 126, 4)
    assert report["checks"]["label-issues"]["status"].startswith("not run")
    page = (out / "review.html").read_text()
    assert "wrongattr" in page and "data:image/png;base64," in page
    again = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "clean", *TINY, f"data.source={planted_copy}",
                            "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds a clean report" in again.stderr  # nothing is overwritten


def test_a_check_that_raises_is_unknown_not_a_pass(planted_copy: Path, tmp_path: Path):
    from dsvl_adapt.cleaning.runner import run_checks
    from dsvl_adapt.cleaning.data import CleaningData
    from dsvl_adapt.config import CleanSection
    from dsvl_adapt.data.loading import Split
    from dsvl_adapt.schemas import DataCheck, Row
    from PIL import Image

    def broken(data):
        raise RuntimeError("no luck")

    rows = [Row(id=str(i), image=Image.new("RGB", (8, 8), (i, 0, 0)), question="q", answer="a") for i in range(3)]
    data = CleaningData("ecommerce", {"train": Split("train", rows)}, CleanSection(), log=lambda m: None)
    report = run_checks(data, [DataCheck(name="broken", run=broken)], {})
    assert report.checks["broken"]["status"].startswith("unknown: RuntimeError: no luck")
    assert report.figures()["checks"] == {"broken": report.checks["broken"]["status"]}


def test_unknown_skip_check_is_refused_naming_the_registered_ones(planted_copy: Path, tmp_path: Path):
    from dsvl_adapt.cleaning.stage import clean_dataset
    from dsvl_adapt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"clean.skip_checks: unknown data check\(s\) 'nope'; registered: .*leakage"):
        clean_dataset([*TINY, f"data.source={planted_copy}", "clean.skip_checks=[nope]"], tmp_path / "o",
                      log=lambda m: None)


def test_the_ecommerce_check_is_registered_through_the_hook_for_its_vertical_only():
    from dsvl_adapt.cleaning.runner import applicable_checks
    from dsvl_adapt.plugins import get_registry

    registry = get_registry()
    assert registry.data_checks.owner("ecommerce-catalogue-rules") != registry.data_checks.owner("duplicates")
    names = lambda v: [c.name for c in applicable_checks(list(registry.data_checks), v)]  # noqa: E731
    assert "ecommerce-catalogue-rules" in names("ecommerce")
    assert "ecommerce-catalogue-rules" not in names("industrial")
    assert names("industrial")[:5] == ["unreadable", "image-quality", "answer-set", "duplicates", "leakage"]


def test_a_plugin_check_from_dsvl_adapt_register_data_checks_runs_and_drops_its_rows(planted_copy: Path,
                                                                                    tmp_path: Path):
    from dsvl_adapt.cleaning import Finding
    from dsvl_adapt.cleaning.stage import clean_splits
    from dsvl_adapt.config import compose
    from dsvl_adapt.data.loading import load_configured_split
    from dsvl_adapt.plugins import PluginManager, hookimpl
    from dsvl_adapt.schemas import DataCheck

    def no_mugs(data):
        return [Finding("train", row.id, "shop-mug", "mugs are out of the catalogue", action="drop")
                for row in data.splits["train"].rows if row.answer == "mug"]

    class ShopPlugin:
        @hookimpl
        def dsvl_adapt_register_data_checks(self, register):
            register(DataCheck(name="shop-no-mugs", run=no_mugs, verticals=["ecommerce"]))

    manager = PluginManager()
    manager.register(ShopPlugin(), name="shop")
    config, _ = compose([*TINY, f"data.source={planted_copy}", "clean.level2=false", "data.on_bad_row=skip"])
    splits = {name: load_configured_split(config, manager.registry, name, 64) for name in ("train", "validation", "test")}
    mugs = {row.id for row in splits["train"].rows if row.answer == "mug"}
    assert "wrongattr" in mugs and len(mugs) > 1
    report, outputs = clean_splits(config, manager.registry, splits, tmp_path / "out", log=lambda m: None)
    assert report.checks["shop-no-mugs"] == {"level": 1, "status": "ran", "findings": len(mugs),
                                             "seconds": report.checks["shop-no-mugs"]["seconds"]}
    view = json.loads(outputs["clean_view"].read_text())
    assert mugs <= set(view["dropped"]["train"])
    assert report.figures()["flagged"]["shop-mug"] == len(mugs)
