"""Continual adaptation on a simulated weekly e-commerce catalogue: naive, replay, replay+LwF and a full retrain.

The e-commerce generator (``plugins/ecommerce``) is narrowed to a base shop and grown by six weekly increments,
each bringing products of a category or attribute values the earlier weeks did not have (``SCHEDULE``). Week 0 is
a full run on the base set. Then, every week:

  naive        ``dsvl-adapt update`` of last week's version with ``update.strategy=naive`` (new rows only)
  replay       the same with ``update.strategy=replay`` (a replay buffer of earlier rows)
  replay+lwf   the same with ``update.strategy=replay+lwf`` (replay, and KL to the previous teacher on replay rows)
  retrain      a full run from the base model on all the data so far (the base set and every increment), with
               as many passes over it as week 0 made over the base set (``--retrain-budget epochs``: each training
               phase's steps scale with the rows, as a user retraining on everything would pay); ``steps`` keeps
               week 0's step counts whatever the data (cheaper, and undertrained as the data grows)

Each version's deployed artifact (the quantized student through its runtime, as ``dsvl-adapt rescore`` scores it)
is scored on the base items (the base set's test split) and on the new items (the test rows of every increment so
far), with 95% bootstrap intervals (``benchmarks/_stats.py``). After the last week:

- new items, the best strategy against the retrain: the ratio's paired interval against the 0.9 target;
- base items, the best strategy against week 0: the drop's paired interval against the 2-point bound (naive beside);
- training time per increment (the update's training stages) against the retrain's (fine-tune, prune, distill):
  the per-week ratios as paired rounds (geometric mean, t interval) against the 30% bound. Runs are minutes long
  and run one after another, not in rotating rounds: on a shared machine read these as indications.

Usage::

    python benchmarks/continual.py --out runs/continual [--weeks 6] [--strategies naive replay replay+lwf]
        [--no-retrain] [--retrain-budget epochs|steps] [--seed 0 | --seeds 0 1 ...] [--quick] [OVERRIDES...]

OVERRIDES go to every run and update (e.g. ``finetune.lora.train.steps=120``). ``--quick``: reference-tiny without
general pretraining, the fast presets, no quantize/export, one week, a few dozen rows: proves the script runs,
claims nothing. ``--seeds 0 1``: two whole simulations (each its own rows, week 0, updates and retrains, in
``OUT/seed<N>``), the table and checks over both (rows and seeds resampled; the time ratio over every seed's weeks).
Prints JSON (the weekly table, the checks, the run folders); writes ``continual.png`` and
``continual.html`` (the table and the plot) in ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dsvl_adapt
from _stats import (
    BOOTSTRAP_METHOD,
    MIN_ROWS_FOR_CLAIM,
    RATIO_METHOD,
    bootstrap_metric,
    enough_evidence,
    metric_on_rows,
    paired_comparison,
    paired_ratio,
    retention_check,
    target_check,
)

#: the base shop, then what each week brings (the increment's rows are all of items with the new values)
BASE = {"category": ("shirt", "mug", "bag"), "colour": ("red", "blue", "black", "white"),
        "pattern": ("solid", "striped")}
SCHEDULE = (
    {"category": ("shoe",)},
    {"colour": ("green", "yellow")},
    {"category": ("hat",)},
    {"pattern": ("dotted",)},
    {"category": ("bottle",)},
    {"colour": ("orange", "purple")},
)
STRATEGIES = ("naive", "replay", "replay+lwf")
TRAINING_STAGES = {"update": ("update.finetune", "prune.structural", "prune.weights", "update.distill"),
                   "retrain": ("finetune", "prune.structural", "prune.weights", "distill")}
#: rows per split (train, validation, test); 500 base test rows so the base-item drop can be a claim
#: (``_stats.MIN_ROWS_FOR_CLAIM``), and 6 x 100 new test rows by the last week
FULL = {"model": "reference-tiny", "base_rows": (600, 48, 500), "week_rows": (200, 32, 100), "image_size": 32}
#: the six-week run's settings beyond the defaults. Week 0 is trained until its validation loss flattens (1500
#: full-parameter steps: e-commerce's default 500 leave the base model at 0.30 on its own test split, a version 1
#: nobody would deploy), and the retrain scales from it. Each update re-prunes its new teacher: a pruned student
#: kept from the parent lags its teacher on the new items (0.36 against 0.70 in week 6, docs/continual.md). The
#: buffer holds every earlier row (1800 by week 6: rows are cheap, steps are not), the new rows repeated to half of
#: each update's training rows (``update.replay.training_share``, the default)
FULL_OVERRIDES = ["finetune.full.steps=1500", "update.reprune=true", "update.replay.size=2048"]
QUICK = {"model": "reference-tiny", "base_rows": (48, 8, 24), "week_rows": (24, 8, 16), "image_size": 32}
QUICK_OVERRIDES = ["model.pretrain_general=false", "finetune=fast", "distill=fast", "score.latency_repeats=2",
                   "score.latency_warmup=1", "score.general_size=8", "update.replay.size=24", "update.full.steps=20",
                   "pipeline.stages=[load,finetune,prune.structural,prune.weights,distill,score]"]
COMMON = ["vertical=ecommerce", "score.measure_memory=false", "data.train_size=100000",
          "data.validation_size=100000", "data.test_size=100000"]
NEW_ITEMS_TARGET = 0.9     # the best strategy's new-item accuracy >= 0.9 x the retrain's
BASE_DROP_BOUND = 0.02     # ... and its base-item accuracy within 2 points of week 0
TIME_SHARE_BOUND = 0.30    # ... each increment costing <= 30% of the retrain's training time
#: the training phases whose step counts a retrain scales with its rows under ``--retrain-budget epochs``
SCHEDULES = ("finetune.full", "finetune.lora.train", "distill.train")


def log(message: str) -> None:
    print(f"[continual] {message}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------------------------
def catalogue(week: int) -> dict[str, tuple[str, ...]]:
    """The shop's values after ``week`` increments."""
    values = {k: list(v) for k, v in BASE.items()}
    for change in SCHEDULE[:week]:
        for attribute, new in change.items():
            values[attribute] += [v for v in new if v not in values[attribute]]
    return {k: tuple(v) for k, v in values.items()}


def week_rows(week: int, split: str, n: int, seed: int, image_size: int) -> list[dict[str, Any]]:
    """Week 0: the base shop. Week k: items with week k's new values (the rest of the shop as it is then)."""
    from dsvl_adapt_ecommerce.generator import generate_rows

    attributes = BASE if week == 0 else {**catalogue(week - 1), **SCHEDULE[week - 1]}
    rows = generate_rows(split, n, seed=seed * 100 + week, image_size=image_size, attributes=attributes)
    for row in rows:
        row["id"] = f"week{week}-{row['id']}"
    return rows


def write_folders(work: Path, weeks: int, sizes: dict[str, Any], seed: int) -> dict[str, Path]:
    """``week<k>`` (each increment), ``all<k>`` (everything so far: the retrain's data) and ``new<k>`` (test: the
    new items of weeks 1..k) folders in the data.source layout."""
    from dsvl_adapt.continual.buffer import write_split

    splits = ("train", "validation", "test")
    rows = {}
    for week in range(weeks + 1):
        counts = sizes["base_rows"] if week == 0 else sizes["week_rows"]
        rows[week] = {split: week_rows(week, split, n, seed, sizes["image_size"]) for split, n in zip(splits, counts)}
    folders: dict[str, Path] = {}
    for week in range(weeks + 1):
        folder = folders[f"week{week}"] = work / "data" / f"week{week}"
        if not (folder / "test.jsonl").is_file():
            for split in splits:
                write_split(rows[week][split], folder, split)
        if week == 0:
            continue
        everything = folders[f"all{week}"] = work / "data" / f"all{week}"
        if not (everything / "test.jsonl").is_file():
            for split in splits:
                write_split([r for k in range(week + 1) for r in rows[k][split]], everything, split)
        new = folders[f"new{week}"] = work / "data" / f"new{week}"
        if not (new / "test.jsonl").is_file():
            write_split(rows[week]["train"], new, "train")
            write_split(rows[week]["validation"], new, "validation")
            write_split([r for k in range(1, week + 1) for r in rows[k]["test"]], new, "test")
    return folders


# -- runs ------------------------------------------------------------------------------------------------------------
def training_seconds(run_dir: Path, kind: str) -> float:
    total = 0.0
    for name in TRAINING_STAGES[kind]:
        record = run_dir / "stages" / name / "stage.json"
        if record.is_file():
            total += float(json.loads(record.read_text())["seconds"])
    return total


def run_once(overrides: list[str], run_dir: Path) -> Path:
    if not (run_dir / "scorecard.json").is_file():
        started = time.perf_counter()
        dsvl_adapt.run(overrides, run_dir=run_dir)
        log(f"{run_dir.name}: {time.perf_counter() - started:.0f} s")
    return run_dir


def retrain_budget(week0: Path, rows: int, base_rows: int) -> list[str]:
    """Overrides giving a retrain on ``rows`` training rows as many passes per phase as week 0 made over its
    ``base_rows``: each schedule's steps (read from week 0's manifest) times rows / base_rows."""
    config = json.loads((week0 / "manifest.json").read_text())["config"]
    overrides = []
    for dotted in SCHEDULES:
        section = config
        for key in dotted.split("."):
            section = section[key]
        overrides.append(f"{dotted}.steps={max(1, round(section['steps'] * rows / base_rows))}")
    return overrides


def update_once(parent: Path, folder: Path, strategy: str, overrides: list[str], run_dir: Path) -> Path:
    if not (run_dir / "scorecard.json").is_file():
        started = time.perf_counter()
        dsvl_adapt.update(parent, [f"data.source={folder}", f"update.strategy={strategy}", *overrides],
                          new_run_dir=run_dir)
        log(f"{run_dir.name}: {time.perf_counter() - started:.0f} s")
    return run_dir


def simulate(work: Path, weeks: int, sizes: dict[str, Any], seed: int, args: argparse.Namespace,
             extra: list[str]) -> dict[str, dict[int, Path]]:
    """One simulation in ``work``: week 0, each strategy's chain of updates and the weekly retrains (runs found
    done are kept), as {name: {week: run folder}}."""
    run_extra = [o for o in extra if not o.startswith("update.")]
    update_extra = [o for o in extra if o.startswith(("update.", "score.", "finetune.", "distill."))
                    and not o.startswith(("finetune=", "distill="))]
    folders = write_folders(work, weeks, sizes, seed)
    base = run_once([*run_extra, f"data.source={folders['week0']}"], work / "week0")
    versions: dict[str, dict[int, Path]] = {name: {0: base} for name in args.strategies}
    for strategy in args.strategies:
        for week in range(1, weeks + 1):
            versions[strategy][week] = update_once(versions[strategy][week - 1], folders[f"week{week}"], strategy,
                                                   update_extra, work / strategy.replace("+", "-") / f"week{week}")
    if not args.no_retrain:
        versions["retrain"] = {0: base}
        for week in range(1, weeks + 1):
            rows = sizes["base_rows"][0] + week * sizes["week_rows"][0]
            budget = (retrain_budget(base, rows, sizes["base_rows"][0]) if args.retrain_budget == "epochs" else [])
            versions["retrain"][week] = run_once([*run_extra, *budget, f"data.source={folders[f'all{week}']}"],
                                                 work / "retrain" / f"week{week}")
    return versions


@dataclass(frozen=True)
class Scored:
    """A version's answers on a folder's test split: what the checks need of an ``Answered`` (rows carry only
    their id and meta, which the e-commerce metric reads)."""

    rows: list[dict[str, Any]]
    answers: list[str]
    references: list[str]


def score(run_dir: Path, folder: Path) -> Scored:
    """The deployed artifact's answers on ``folder``'s test split (every row). Kept in
    ``run_dir/continual-scores/<folder>.json`` with the test file's digest, so that a later invocation (``--seeds``
    over simulations run by separate processes) reads them instead of answering again."""
    from dsvl_adapt.continual.update import score_version

    digest = hashlib.sha256((folder / "test.jsonl").read_bytes()).hexdigest()
    kept = run_dir / "continual-scores" / f"{folder.name}.json"
    if kept.is_file():
        cached = json.loads(kept.read_text())
        if cached.get("test_sha256") == digest:
            return Scored(cached["rows"], cached["answers"], cached["references"])
    _, answered = score_version(run_dir, [f"data.source={folder}", "data.test_size=100000", "score.general_size=0"])
    scored = Scored([{"id": row.id, "meta": row.meta} for row in answered.rows], list(answered.answers),
                    list(answered.references))
    kept.parent.mkdir(exist_ok=True)
    kept.write_text(json.dumps({"test_sha256": digest, "folder": str(folder), **asdict(scored)}))
    return scored


def row_metric(answered: Any) -> Any:
    from dsvl_adapt.plugins import get_registry

    registry = get_registry()
    compute = registry.metrics.get(registry.vertical("ecommerce").metrics[0]).compute
    return metric_on_rows(compute, answered.answers, answered.references, answered.rows)


# -- report ----------------------------------------------------------------------------------------------------------
def plot(table: dict[str, dict[int, dict[str, Any]]], path: Path) -> bytes | None:
    from dsvl_adapt.score.plots import weekly_accuracy_plot

    panels: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {"new items": {}, "base items": {}}
    for name, weeks in table.items():
        for week, cell in weeks.items():
            for key, panel in (("new", "new items"), ("base", "base items")):
                if cell.get(key) is not None:
                    value = cell[key]
                    panels[panel].setdefault(name, []).append((week, value["value"], *value["ci95"]))
    png = weekly_accuracy_plot({k: v for k, v in panels.items() if v},
                               title="e-commerce catalogue: accuracy of the deployed student per week")
    if png is not None:
        path.write_bytes(png)
    return png


def write_html(result: dict[str, Any], png: bytes | None, path: Path) -> None:
    from dsvl_adapt.score.html import CSS

    e = html.escape
    names = list(result["table"])
    weeks = sorted({int(w) for cells in result["table"].values() for w in cells})
    head = "".join(f"<th>{e(n)}: new</th><th>{e(n)}: base</th>" for n in names)

    def cell(value: dict[str, Any] | None) -> str:
        if value is None:
            return "<td>—</td>"
        return f'<td class="num">{value["value"]:.3f} [{value["ci95"][0]:.3f}, {value["ci95"][1]:.3f}]</td>'

    # the result has been through JSON: its weeks are strings
    body = "".join("<tr><td>" + str(week) + "</td>" + "".join(
        cell(result["table"][n].get(str(week), {}).get("new")) + cell(result["table"][n].get(str(week), {}).get("base"))
        for n in names) + "</tr>" for week in weeks)
    checks = "".join(f"<li>{e(k)}: {e(json.dumps(v))}</li>" for k, v in result["checks"].items())
    for seed, seed_checks in (result.get("checks_per_seed") or {}).items():
        checks += f"<li>seed {e(str(seed))} alone: " + "; ".join(
            f"{e(k)}: {e(str(v.get('check')))}" for k, v in seed_checks.items()) + "</li>"
    figure = ("" if png is None else f'<figure><img alt="accuracy per week" src="data:image/png;base64,'
              f'{base64.b64encode(png).decode("ascii")}"><figcaption>new-item and base-item accuracy per week, '
              "95% bootstrap bands</figcaption></figure>")
    path.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Continual adaptation'
                    f"</title><style>{CSS}</style></head><body><main><h1>Continual adaptation — weekly e-commerce "
                    f"catalogue</h1>{figure}<table><thead><tr><th>week</th>{head}</tr></thead><tbody>{body}"
                    f"</tbody></table><h2>Checks</h2><ul>{checks}</ul></main></body></html>", encoding="utf-8")


def one_seed(tree: Any, k: int) -> Any:
    """The ``k``-th seed's part of a nested ``{name: {week: ...: [one entry per seed]}}``, in the same shape."""
    if isinstance(tree, dict):
        return {key: one_seed(value, k) for key, value in tree.items()}
    return [tree[k]]


def checks_for(answers: dict[str, dict[int, dict[str, list[Any]]]], seconds: dict[str, dict[int, list[Any]]],
               best: str, last: int, n_seeds: int, metric_seed: int) -> dict[str, Any]:
    """The three checks for strategy ``best`` after week ``last``, over the seeds ``answers`` and ``seconds`` hold
    (one list entry per seed): new items against the retrain, training time against the retrain's, base items
    against week 0 (naive's drop beside)."""
    checks: dict[str, Any] = {}
    new_rows = len(answers[best][last]["new"][0].answers)
    if "retrain" in answers:
        comparison = paired_comparison([row_metric(a) for a in answers["retrain"][last]["new"]],
                                       [row_metric(a) for a in answers[best][last]["new"]], new_rows,
                                       seed=metric_seed)
        checks["new_items_vs_retrain"] = {**comparison.to_json(("retrain", best)), "target": NEW_ITEMS_TARGET,
                                          "check": retention_check(comparison, NEW_ITEMS_TARGET)}
        # every (seed, week) is a round: the update and the retrain of the same week and simulation
        update_s = [t for w in range(1, last + 1) for t in seconds[best][w]]
        retrain_s = [t for w in range(1, last + 1) for t in seconds["retrain"][w]]
        if len(update_s) >= 2 and all(update_s) and all(retrain_s):
            ratio = paired_ratio(retrain_s, update_s)  # retrain time / update time, per round
            checks["training_time"] = {
                "update_share_of_retrain": round(1 / ratio.ratio, 4),
                "update_share_ci95": [round(1 / ratio.high, 4), round(1 / ratio.low, 4)],
                "bound": TIME_SHARE_BOUND, "rounds": len(update_s), "method": RATIO_METHOD,
                "check": target_check(ratio.ratio, ratio.low, ratio.high, 1 / TIME_SHARE_BOUND)}
        else:
            checks["training_time"] = {"update_s": update_s, "retrain_s": retrain_s, "check": "no claim"}
    base_rows = len(answers[best][last]["base"][0].answers)
    for name in dict.fromkeys([best, "naive"]):
        if name not in answers:
            continue
        drop = paired_comparison([row_metric(a) for a in answers[name][0]["base"]],
                                 [row_metric(a) for a in answers[name][last]["base"]], base_rows, seed=metric_seed)
        difference = drop.difference
        checks[f"base_items_{name}"] = {
            **drop.to_json(("week0", f"week{last}")), "bound": -BASE_DROP_BOUND,
            "check": target_check(difference.value, difference.low, difference.high, -BASE_DROP_BOUND)
            if enough_evidence(base_rows, n_seeds) else "no claim"}
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/continual"))
    parser.add_argument("--weeks", type=int, default=len(SCHEDULE), choices=range(1, len(SCHEDULE) + 1))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                        choices=["naive", "replay", "replay+lwf", "replay+ewc"])
    parser.add_argument("--no-retrain", action="store_true", help="skip the full retrain each week")
    parser.add_argument("--retrain-budget", choices=("epochs", "steps"), default="epochs",
                        help="epochs: the retrain's steps grow with its data (week 0's passes over the base set); "
                             "steps: week 0's step counts every week")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="several whole simulations (rows, week 0, updates, retrains), each in OUT/seed<N>: "
                             "the table and checks over all of them (rows and seeds resampled; the time ratio over "
                             "every seed's weeks)")
    parser.add_argument("--quick", action="store_true", help="tiny and fast: proves the script runs, claims nothing")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    weeks = 1 if args.quick else args.weeks
    sizes = QUICK if args.quick else FULL
    extra = [*COMMON, f"model={sizes['model']}", *(QUICK_OVERRIDES if args.quick else FULL_OVERRIDES),
             *args.overrides]
    seeds = args.seeds or [args.seed]
    started = time.perf_counter()
    # per seed: every version's answers on the base and new items (a seed is a whole simulation: its own rows,
    # week 0, updates and retrains, in OUT/seed<N> when there are several)
    answers: dict[str, dict[int, dict[str, list[Any]]]] = {}
    seconds: dict[str, dict[int, list[float | None]]] = {}
    per_seed: dict[int, Any] = {}
    for seed in seeds:
        work = args.out.absolute() / f"seed{seed}" if len(seeds) > 1 else args.out.absolute()
        seeded = [*extra, f"seed={seed}"]
        versions = simulate(work, weeks, sizes, seed, args, seeded)
        per_seed[seed] = {name: {week: str(run_dir) for week, run_dir in by_week.items()}
                          for name, by_week in versions.items()}
        for name, by_week in versions.items():
            for week, run_dir in by_week.items():
                cell = answers.setdefault(name, {}).setdefault(week, {"base": [], "new": []})
                cell["base"].append(score(run_dir, work / "data" / "week0"))
                cell["new"].append(score(run_dir, work / "data" / f"new{max(week, 1)}"))
                kind = "retrain" if name == "retrain" else "update"
                seconds.setdefault(name, {}).setdefault(week, []).append(
                    None if week == 0 else round(training_seconds(run_dir, kind), 2))
    metric_seed = seeds[0]

    table: dict[str, dict[int, dict[str, Any]]] = {}
    for name, by_week in answers.items():
        table[name] = {}
        for week, cell in by_week.items():
            table[name][week] = {key: bootstrap_metric([row_metric(a) for a in given], len(given[0].answers),
                                                       seed=metric_seed).to_json() for key, given in cell.items()}
            table[name][week]["rows"] = {key: len(given[0].answers) for key, given in cell.items()}
            times = seconds[name][week]
            table[name][week]["training_seconds"] = (None if week == 0 else
                                                     round(sum(times) / len(times), 2))
            table[name][week]["training_seconds_per_seed"] = times

    strategies = [n for n in answers if n != "retrain"]
    last = weeks
    best = max(strategies, key=lambda n: table[n][last]["new"]["value"] + table[n][last]["base"]["value"])
    checks = {"best_strategy": best, "rows_needed_for_a_claim": MIN_ROWS_FOR_CLAIM,
              "accuracy_method": BOOTSTRAP_METHOD, "seeds": seeds,
              **checks_for(answers, seconds, best, last, len(seeds), metric_seed)}
    # each simulation alone, for the same strategy: how far the seeds agree
    per_seed_checks = {seed: checks_for(one_seed(answers, k), one_seed(seconds, k), best, last, 1, metric_seed)
                       for k, seed in enumerate(seeds)} if len(seeds) > 1 else None
    work = args.out.absolute()
    from dsvl_adapt.machine import cpu_description

    result = {"benchmark": "continual", **cpu_description(), "quick": args.quick, "weeks": weeks,
              "schedule": SCHEDULE[:weeks], "base": BASE, "strategies": list(answers),
              "retrain_budget": None if args.no_retrain else args.retrain_budget, "table": table, "checks": checks,
              "checks_per_seed": per_seed_checks,
              "overrides": extra, "seeds": seeds, "runs": per_seed,
              "seconds": round(time.perf_counter() - started, 1), "out": str(work)}
    png = plot(table, work / "continual.png")
    write_html(json.loads(json.dumps(result)), png, work / "continual.html")
    result["plot"] = str(work / "continual.png") if png else None
    result["html"] = str(work / "continual.html")
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
