"""The decision rules of the benchmarks (benchmarks/_stats.py): claims follow the charter's thresholds and
intervals, rounds rotate. Decision logic only: no clock is read here."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_stats.py"
_spec = importlib.util.spec_from_file_location("benchmark_stats", _PATH)
stats = importlib.util.module_from_spec(_spec)
sys.modules["benchmark_stats"] = stats
_spec.loader.exec_module(stats)


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (7, 2.3646), (10, 2.2281),
                                              (29, 2.0452)])
def test_t_quantile_matches_the_tables(df: int, expected: float) -> None:
    assert stats.t_quantile(0.95, df) == pytest.approx(expected, abs=2e-4)


def test_a_ratio_of_1_007_is_no_claim_even_with_a_tight_interval() -> None:
    tight = stats.SpeedRatio(1.007, 1.004, 1.010, 20)
    assert stats.speed_claim(tight) == "no claim"
    wide = stats.SpeedRatio(1.007, 0.95, 1.06, 8)
    assert stats.speed_claim(wide) == "tie"


def test_a_ratio_of_1_2_with_its_interval_above_1_is_faster() -> None:
    assert stats.speed_claim(stats.SpeedRatio(1.2, 1.05, 1.37, 8)) == "faster"
    assert stats.speed_claim(stats.SpeedRatio(1.2, 0.97, 1.48, 8)) == "tie"      # interval holds 1
    assert stats.speed_claim(stats.SpeedRatio(1 / 1.2, 0.7, 0.95, 8)) == "slower"
    assert stats.speed_claim(stats.SpeedRatio(1.2, None, None, 1)) == "no claim"  # one round: no interval


def test_paired_ratio_from_rounds() -> None:
    baseline = [100.0, 120.0, 90.0, 110.0, 105.0, 95.0]
    consistent = [b / 1.25 for b in baseline]                  # the same 1.25x in every round
    r = stats.paired_ratio(baseline, consistent)
    assert r.ratio == pytest.approx(1.25)
    assert stats.speed_claim(r) == "faster"
    noisy = [b / f for b, f in zip(baseline, [1.6, 0.8, 1.3, 0.85, 1.4, 0.9], strict=True)]
    assert stats.speed_claim(stats.paired_ratio(baseline, noisy)) == "tie"
    with pytest.raises(ValueError):
        stats.paired_ratio([1.0, 2.0], [1.0])


def test_rotation_visits_every_position() -> None:
    names = ["a", "b", "c", "d", "e"]
    orders = stats.round_orders(names, 10, seed=3)
    assert all(sorted(order) == names for order in orders)
    for block in (orders[:5], orders[5:]):
        positions = {name: Counter(order.index(name) for order in block) for name in names}
        assert all(sorted(p) == list(range(5)) for p in positions.values())  # once in each position per block
    assert orders[0] != orders[1]                                             # not a fixed A B C order
    assert stats.round_orders(names, 10, seed=3) == orders                     # seeded: reproducible


def test_target_check() -> None:
    assert stats.target_check(3.4, 3.1, 3.7, 3.0) == "met"
    assert stats.target_check(3.1, 2.6, 3.5, 3.0) == "within noise"
    assert stats.target_check(2.5, 2.2, 2.8, 3.0) == "not met"


def _exact(correct: np.ndarray):
    return lambda idx: float(correct[idx].mean())


def test_accuracy_difference_inside_its_interval_is_a_tie() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(600) < 0.80
    b = a.copy()
    flip = rng.choice(600, 6, replace=False)    # b differs from a on 6 rows of 600: 1 point, within noise
    b[flip] = ~b[flip]
    c = stats.paired_comparison([_exact(a)], [_exact(b)], 600, resamples=400)
    assert c.difference.low <= 0 <= c.difference.high
    assert c.claim() == "tie"


def test_a_clear_accuracy_gain_is_better_only_with_enough_rows_or_seeds() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(600) < 0.6
    b = a | (rng.random(600) < 0.5)             # b right wherever a is, and on about half of the rest
    big = stats.paired_comparison([_exact(a)], [_exact(b)], 600, resamples=400)
    assert big.difference.low > 0 and big.claim() == "better"
    small = stats.paired_comparison([_exact(a[:100])], [_exact(b[:100])], 100, resamples=400)
    assert small.difference.low > 0 and small.claim() == "no claim"     # 100 rows, 1 seed: too little
    seeds = stats.paired_comparison([_exact(a[:100])] * 3, [_exact(b[:100])] * 3, 100, resamples=200)
    assert seeds.claim() == "better"
    assert stats.paired_comparison([_exact(b)], [_exact(a)], 600, resamples=200).claim() == "worse"


def test_retention_check() -> None:
    rng = np.random.default_rng(2)
    teacher = rng.random(800) < 0.9
    same = stats.paired_comparison([_exact(teacher)], [_exact(teacher)], 800, resamples=200)
    assert stats.retention_check(same, 0.95) == "met"
    worse = teacher & (rng.random(800) < 0.7)
    assert stats.retention_check(stats.paired_comparison([_exact(teacher)], [_exact(worse)], 800, resamples=200),
                                 0.95) == "not met"


def _benchmark(script: str):
    """A benchmark script as a module (its ``_stats`` import resolved from ``benchmarks/``)."""
    if str(_PATH.parent) not in sys.path:
        sys.path.insert(0, str(_PATH.parent))
    spec = importlib.util.spec_from_file_location(f"benchmark_{script}", _PATH.parent / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_token_budget_retention_counts_distilled_students_at_keep_025_on_three_of_four_verticals() -> None:
    tokens = _benchmark("tokens")

    def row(method, keep, distilled, retention):
        return {"method": method, "keep": keep, "distilled": distilled, "retention": retention}

    accuracies = {
        "a": [row(None, 1.0, True, 1.0), row("select", 0.25, True, 0.96), row("select", 0.25, False, 0.2),
              row("select", 0.5, True, 0.5)],
        "b": [row("select", 0.25, True, 0.95), row("select", 0.125, True, 0.99)],
        "c": [row("select", 0.25, True, 0.949)],  # under the floor
        "d": [row("select", 0.25, True, None)],  # not measured: not met
    }
    check = tokens.accuracy_acceptance(accuracies)
    assert set(check) == {"select"}  # all-token rows belong to no method
    assert check["select"]["verticals_met"] == ["a", "b"] and check["select"]["target"] == "not met"
    accuracies["d"] = [row("select", 0.25, True, 1.02)]
    assert tokens.accuracy_acceptance(accuracies)["select"]["target"] == "met"
    assert tokens.accuracy_acceptance({"a": accuracies["a"]})["select"]["target"] == \
        "fewer than four verticals in this run"
    table = tokens.tables({"accuracy": {"a": [dict(row("select", 0.25, True, 0.96), image_tokens=16, accuracy=0.9,
                                                    ci95=[0.8, 0.95], teacher=0.94, retention_ci95=[0.9, 1.0],
                                                    ttft_ms=20.0)]},
                           "accuracy_acceptance": tokens.accuracy_acceptance({"a": accuracies["a"]})})
    assert "| select | 0.25 | 16 | - | 0.90 [0.80, 0.95] | 0.96 [0.90, 1.00] | 20.0 ms | - |" in table


def test_a_retrain_on_three_times_the_rows_gets_three_times_week_0s_steps_in_every_phase(tmp_path) -> None:
    import json

    continual = _benchmark("continual")
    config = {"finetune": {"full": {"steps": 500}, "lora": {"train": {"steps": 60}}},
              "distill": {"train": {"steps": 120}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": config}))
    assert continual.retrain_budget(tmp_path, rows=1800, base_rows=600) == [
        "finetune.full.steps=1500", "finetune.lora.train.steps=180", "distill.train.steps=360"]
    assert continual.retrain_budget(tmp_path, rows=600, base_rows=600)[0] == "finetune.full.steps=500"


def test_a_versions_kept_answers_are_read_back_only_for_the_same_test_file(tmp_path) -> None:
    import hashlib
    import json

    continual = _benchmark("continual")
    folder, run_dir = tmp_path / "new3", tmp_path / "replay-week3"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"id": "a"}\n')
    kept = run_dir / "continual-scores" / "new3.json"
    kept.parent.mkdir(parents=True)
    digest = hashlib.sha256((folder / "test.jsonl").read_bytes()).hexdigest()
    kept.write_text(json.dumps({"test_sha256": digest, "rows": [{"id": "a", "meta": {"attribute": "colour"}}],
                                "answers": ["red"], "references": ["blue"]}))
    scored = continual.score(run_dir, folder)
    assert (scored.answers, scored.references, scored.rows[0]["meta"]) == (["red"], ["blue"], {"attribute": "colour"})
    (folder / "test.jsonl").write_text('{"id": "b"}\n')  # another test split: answer again (no run here: fails)
    with pytest.raises(Exception, match="manifest|run"):
        continual.score(run_dir, folder)


def test_recovery_is_paired_needs_500_rows_and_a_real_loss() -> None:
    rows = np.arange(600)
    clean, noisy, cleaned = rows < 540, rows < 300, rows < 510  # 0.90, 0.50, 0.85 on the same rows
    recovery = stats.paired_recovery(_exact(clean), _exact(noisy), _exact(cleaned), 600, resamples=300)
    assert recovery.loss.value == pytest.approx(0.4) and recovery.regained.value == pytest.approx(0.35)
    assert recovery.share.value == pytest.approx(0.875) and recovery.share.low > 0.7
    assert recovery.claim(0.7) == "met"
    assert stats.paired_recovery(_exact(clean), _exact(noisy), _exact(noisy), 600, resamples=300).claim(0.7) == \
        "not met"
    nothing_lost = stats.paired_recovery(_exact(clean), _exact(clean), _exact(cleaned), 600, resamples=300)
    assert nothing_lost.share is None and nothing_lost.claim(0.7).startswith("no claim: the noise cost")
    few = stats.paired_recovery(_exact(clean[:144]), _exact(noisy[:144]), _exact(cleaned[:144]), 144, resamples=300)
    assert few.claim(0.7).startswith("no claim: 144 test rows")
    assert few.to_json(0.7)["check"] == few.claim(0.7)


def test_a_fault_rate_is_named_and_a_share() -> None:
    import argparse

    cleaning = _benchmark("cleaning")
    assert cleaning._rate("flipped=0.3") == ("flipped", 0.3)
    for bad in ("flipped=1.5", "flipped=x", "typo=0.1", "flipped"):
        with pytest.raises(argparse.ArgumentTypeError, match="KIND=SHARE"):
            cleaning._rate(bad)


def test_the_continual_page_shows_every_weeks_accuracy(tmp_path) -> None:
    import json

    continual = _benchmark("continual")
    cell = {"value": 0.812, "ci95": [0.77, 0.85]}
    result = json.loads(json.dumps({"table": {"replay": {0: {"new": cell, "base": cell}, 6: {"new": cell, "base": cell}}},
                                    "checks": {"best_strategy": "replay"},
                                    "checks_per_seed": {0: {"training_time": {"check": "met"}}}}))
    continual.write_html(result, None, tmp_path / "continual.html")
    page = (tmp_path / "continual.html").read_text()
    assert page.count("0.812 [0.770, 0.850]") == 4 and "<td>—</td>" not in page
    assert "seed 0 alone: training_time: met" in page


def test_the_cleaning_tables_show_every_fault_and_the_paired_recovery() -> None:
    cleaning = _benchmark("cleaning")
    detection = {"injected": 10, "flagged": 9, "hits": 8, "recall": 0.8, "precision": 0.889,
                 "target": {"recall": 0.7, "precision": 0.7}, "met": True}
    teacher = {"clean": {"accuracy": 0.9, "ci95": [0.85, 0.95]}, "noisy": {"accuracy": 0.5, "ci95": [0.45, 0.55]},
               "cleaned": {"accuracy": 0.8, "ci95": [0.75, 0.85]}, "claim": "within noise",
               "paired": {"loss": {"value": 0.4, "ci95": [0.3, 0.5]}, "regained": {"value": 0.3, "ci95": [0.2, 0.4]},
                          "share": {"value": 0.75, "ci95": [0.6, 0.9]}, "check": "within noise"}}
    out = {"rates": {"flipped": 0.1, "broken": 0.01}, "settings": {"label_issues": "fix", "eval_rows": 576},
           "verticals": {"medical": {"detection": {"flipped": detection, "broken": dict(detection, met=False)},
                                     "teacher": teacher}},
           "cost": {"rows": 10000, "seconds": 44.7, "target_seconds": 600, "met": True}}
    text = cleaning.tables(out)
    assert "flipped 10%, broken 1%" in text and "label issues: fix" in text and "576 test rows" in text
    assert "| medical | flipped | 10 | 9 | 0.80 | 0.89 | 0.7 / 0.7 | met |" in text
    assert "| medical | broken | 10 | 9 | 0.80 | 0.89 | 0.7 / 0.7 | not met |" in text
    assert ("| medical | 0.90 [0.85, 0.95] | 0.50 [0.45, 0.55] | 0.80 [0.75, 0.85] | 0.40 [0.30, 0.50] | "
            "0.30 [0.20, 0.40] | 0.75 [0.60, 0.90] | within noise |") in text
    assert "10000 rows cleaned in 44.7 s (target 600 s: met)" in text
    assert "| vertical | clean |" not in cleaning.tables({**out, "verticals": {"medical": {"detection": {}}}})
