"""Data cleaning against known faults (issue 19).

For each vertical: generate its training data, inject faults at known rates into the train split (answers flipped
to another answer of the same question, images swapped between rows of one question with different answers,
duplicate rows re-encoded as JPEG, test rows copied into train, truncated image files), write it in the
``data.source`` layout, and run ``dsvl-adapt clean`` on it (level 1 and level 2, the cheap cross-fitted model).
Then report, per fault kind, detection recall and precision:

- broken files (``unreadable``), duplicates (``duplicate``/``near_duplicate``) and leakage (``leak_test``): recall =
  injected rows the check flagged / injected rows; precision = flagged rows that were injected / flagged rows;
- flipped answers and swapped images share the level 2 signals (``label_issue``, ``image_question_mismatch``,
  ``conflicting_answers``): a swapped image makes the row's answer wrong for its picture, as a flip does. Recall is
  per kind; precision of a kind counts the flagged rows of that kind against the flagged rows that carry no
  injected fault (rows of the other kind are left out of both). ``review_queue``: the same two kinds along the
  review page's order (most suspicious first) - the deepest point where precision still holds 0.7, with the
  recall there and the lowest suspicion score reached (what ``clean.label_issue_min_score`` would be set to).

With ``--teacher``, the teacher is trained three times (``pipeline.stages=[load,(clean,)finetune,score]``) on the
clean data, the noisy data and the noisy data cleaned (``clean.label_issues=drop``; ``--label-issues fix`` sets each
flagged answer to the cross-fitted model's suggestion instead), and the JSON gives each accuracy with its 95%
bootstrap interval and the share of the noise's loss that cleaning recovers,
``(cleaned - noisy) / (clean - noisy)``, paired over the same test rows (``_stats.paired_recovery``: a claim only
from 500 test rows, and only when the loss's paired interval lies above 0; ``--eval-rows 576``). The three trainings run
every planned step (``stop_at_exact_match=null``): the default stop at 98% validation exact match fires on the
72-row validation split after 150, 200 or 250 steps depending on the data, and which of the three it stopped early
would otherwise decide the comparison (industrial, reference-small: cleaned 0.90 after stopping at step 150 against
clean 1.00 at step 200).

``--cost-rows N`` times cleaning N generated rows (industrial) with the cheap model.

    python benchmarks/cleaning.py --quick
    python benchmarks/cleaning.py --verticals industrial medical ecommerce finance --train-rows 864 --teacher
    python benchmarks/cleaning.py --cost-rows 10000 --verticals
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _stats import metric_on_rows, paired_recovery

ROOT = Path(__file__).resolve().parents[1]

VERTICALS = ("industrial", "medical", "ecommerce", "finance")
RECOVERY_TARGET = 0.7  # cleaning recovers >= 70% of the accuracy the noise took
RATES = {"flipped": 0.10, "swapped": 0.05, "duplicate": 0.03, "leak": 0.02, "broken": 0.01}
DETECTED_AS = {
    "broken": {"unreadable"},
    "duplicate": {"duplicate", "near_duplicate"},
    "leak": {"leak_test"},
    "flipped": {"label_issue", "image_question_mismatch", "conflicting_answers"},
    "swapped": {"label_issue", "image_question_mismatch", "conflicting_answers"},
}
TARGETS = {"broken": (0.9, 0.8), "duplicate": (0.9, 0.8), "leak": (0.9, 0.8), "flipped": (0.7, 0.7),
           "swapped": (0.7, 0.7)}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _question_kind(row: dict) -> str:
    return str(row["meta"].get("question_type") or row["meta"].get("asked") or "all")


def inject(train: list[dict], test: list[dict], seed: int, rates: dict[str, float]) -> tuple[list[dict], dict]:
    """The train rows with faults injected at ``rates`` and, per fault kind, the ids of the rows carrying it."""
    rng = random.Random(seed)
    rows = [dict(r) for r in train]
    faults: dict[str, set[str]] = {kind: set() for kind in rates}
    by_kind: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_kind.setdefault(_question_kind(row), []).append(index)
    answers = {kind: sorted({rows[i]["answer"] for i in idx}) for kind, idx in by_kind.items()}
    order = list(range(len(rows)))
    rng.shuffle(order)
    n = len(rows)
    taken: set[int] = set()

    def pick(count: int) -> list[int]:
        chosen = [i for i in order if i not in taken][:count]
        taken.update(chosen)
        return chosen

    for index in pick(round(rates["flipped"] * n)):
        row = rows[index]
        options = [a for a in answers[_question_kind(row)] if a != row["answer"]]
        if options:
            row["answer"] = rng.choice(options)
            faults["flipped"].add(row["id"])
    pending = pick(round(rates["swapped"] * n / 2))  # each swap puts a wrong picture in two rows
    for index in pending:  # swap with a row of the same question kind and another answer
        row = rows[index]
        partners = [j for j in by_kind[_question_kind(row)] if j not in taken and rows[j]["answer"] != row["answer"]]
        if not partners:
            continue
        j = rng.choice(partners)
        taken.add(j)
        row["image"], rows[j]["image"] = rows[j]["image"], row["image"]
        faults["swapped"].update({row["id"], rows[j]["id"]})
    extra = []
    for number, index in enumerate(pick(round(rates["duplicate"] * n))):
        copy = dict(rows[index], id=f"dup-{number:05d}", image=_reencoded(rows[index]["image"]))
        extra.append(copy)
        faults["duplicate"].add(copy["id"])
    for number, source in enumerate(rng.sample(test, min(len(test), round(rates["leak"] * n)))):
        extra.append(dict(source, id=f"leak-{number:05d}"))
        faults["leak"].add(f"leak-{number:05d}")
    broken = pick(round(rates["broken"] * n))
    for index in broken:
        rows[index] = dict(rows[index], broken=True)
        faults["broken"].add(rows[index]["id"])
    return rows + extra, {kind: sorted(ids) for kind, ids in faults.items()}


def _reencoded(image):
    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def write_folder(folder: Path, splits: dict[str, list[dict]]) -> dict[str, str]:
    """The splits in the data.source layout; a row marked ``broken`` gets a truncated PNG. Returns, for broken
    rows, their id -> ``train.jsonl:<line>`` (the name the clean report gives an unreadable row)."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    lines_of: dict[str, str] = {}
    for split, rows in splits.items():
        lines = []
        for number, row in enumerate(rows, start=1):
            path = folder / "images" / f"{split}-{number:06d}.png"
            row["image"].save(path)
            if row.get("broken"):
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])
                lines_of[row["id"]] = f"{split}.jsonl:{number}"
            lines.append(json.dumps({"id": row["id"], "image": f"images/{path.name}", "question": row["question"],
                                     "answer": row["answer"]}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return lines_of


def detection(report: dict, faults: dict[str, list[str]], broken_lines: dict[str, str]) -> dict[str, Any]:
    flagged: dict[str, set[str]] = {}
    all_flagged: set[str] = set()
    for finding in report["findings"]:
        if finding["split"] == "train":
            flagged.setdefault(finding["reason"], set()).add(finding["row_id"])
            all_flagged.add(finding["row_id"])
    injected = {kind: {broken_lines.get(i, i) for i in ids} for kind, ids in faults.items()}
    any_fault = set().union(*injected.values())
    out = {}
    for kind, ids in injected.items():
        signal = set().union(*(flagged.get(reason, set()) for reason in DETECTED_AS[kind]))
        hits = signal & ids
        if kind in ("flipped", "swapped"):
            others = any_fault - ids
            pool = signal - others
        else:
            pool = signal
        recall = len(hits) / len(ids) if ids else None
        precision = len(hits) / len(pool) if pool else None
        need_recall, need_precision = TARGETS[kind]
        met = None if recall is None or precision is None else (recall >= need_recall and precision >= need_precision)
        out[kind] = {"injected": len(ids), "flagged": len(pool), "hits": len(hits),
                     "recall": None if recall is None else round(recall, 3),
                     "precision": None if precision is None else round(precision, 3),
                     "target": {"recall": need_recall, "precision": need_precision}, "met": met}
    return out


def along_the_queue(report: dict, faults: dict[str, list[str]], precision_floor: float = 0.7) -> dict[str, Any]:
    """Flipped answers and swapped images as a reviewer meets them: the train rows with a level 2 signal in the
    review queue's order (highest score first), and for each kind the deepest point of the queue where precision
    (as :func:`detection` counts it) is still >= ``precision_floor``: how far down to work, the lowest score
    reached there, and the recall and precision at that depth. ``None`` where the floor never holds."""
    signals = DETECTED_AS["flipped"]
    score: dict[str, float] = {}
    for finding in report["findings"]:
        if finding["split"] == "train" and finding["reason"] in signals:
            score[finding["row_id"]] = max(score.get(finding["row_id"], 0.0), float(finding.get("score", 1.0)))
    queue = sorted(score, key=lambda row: -score[row])
    any_fault = set().union(*(set(ids) for ids in faults.values()))
    out: dict[str, Any] = {}
    for kind in ("flipped", "swapped"):
        ids, others = set(faults[kind]), any_fault - set(faults[kind])
        hits = seen = 0
        best = None
        for depth, row in enumerate(queue, start=1):
            if row in others:
                continue
            seen += 1
            hits += row in ids
            if hits / seen >= precision_floor and ids:
                best = {"depth": depth, "min_score": round(score[row], 4), "recall": round(hits / len(ids), 3),
                        "precision": round(hits / seen, 3)}
        need_recall, need_precision = TARGETS[kind]
        out[kind] = {"precision_floor": precision_floor, "deepest": best, "queue_rows": len(queue),
                     "met": None if best is None else bool(best["recall"] >= need_recall
                                                            and best["precision"] >= need_precision)}
    return out


def teacher_accuracy(folder: Path, work: Path, vertical: str, clean: bool, overrides: list[str],
                     label_issues: str = "drop") -> dict[str, Any]:
    from dsvl_adapt.api import run

    stages = "[load,clean,finetune,score]" if clean else "[load,finetune,score]"
    # without cleaning, the noisy data trains as it is: unreadable rows skipped, test rows in train allowed
    noisy = [] if clean else ["data.on_bad_row=skip", "data.max_overlap=1000000"]
    same_budget = ["finetune.full.stop_at_exact_match=null", "finetune.lora.train.stop_at_exact_match=null"]
    card = run([f"vertical={vertical}", f"data.source={folder}", f"pipeline.stages={stages}", "score.models=[teacher]",
                "score.measure_memory=false", "score.latency_repeats=1", "score.latency_warmup=0",
                "score.general_size=0", f"clean.label_issues={label_issues}", "data.train_size=1000000",
                "data.validation_size=1000000", "data.test_size=1000000", *noisy, *same_budget, *overrides],
               run_dir=work)
    assert card is not None
    ci = card.accuracy_ci.get("teacher")
    return {"accuracy": round(card.accuracy["teacher"], 4), "ci95": ci, "usable_share":
            card.data.usable_share if card.data else None}


def recovery(vertical: str, test_folder: Path, runs: dict[str, Path], seed: int) -> dict[str, Any]:
    """The paired recovery of the three teachers from their per-row predictions, scored with the vertical's metric on
    the test rows as the runs loaded them."""
    from dsvl_adapt.config import compose
    from dsvl_adapt.data.loading import load_configured_split
    from dsvl_adapt.plugins import get_registry

    registry = get_registry()
    config, _ = compose([f"vertical={vertical}", f"data.source={test_folder}", "data.test_size=1000000"])
    rows = {row.id: row for row in load_configured_split(config, registry, "test", 32).rows}
    compute = registry.metrics.get(registry.vertical(vertical).metrics[0]).compute
    predicted = {name: {p["id"]: p["prediction"] for p in map(json.loads, (run / "stages" / "score" /
                                                                         "predictions-teacher.jsonl").open())}
                 for name, run in runs.items()}
    ids = [i for i in rows if all(i in p for p in predicted.values())]
    metric = {name: metric_on_rows(compute, [p[i] for i in ids], [rows[i].answer for i in ids],
                                   [rows[i] for i in ids]) for name, p in predicted.items()}
    return paired_recovery(metric["clean"], metric["noisy"], metric["cleaned"], len(ids), seed=seed) \
        .to_json(RECOVERY_TARGET)


def one_vertical(vertical: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import importlib

    from dsvl_adapt.cleaning.stage import clean_dataset

    generator = importlib.import_module(f"dsvl_adapt_{vertical}.generator")
    started = time.perf_counter()
    train = generator.generate_rows("train", args.train_rows, seed=args.seed, image_size=args.image_size)
    validation = generator.generate_rows("validation", args.eval_rows // 2, seed=args.seed, image_size=args.image_size)
    test = generator.generate_rows("test", args.eval_rows, seed=args.seed, image_size=args.image_size)
    noisy, faults = inject(train, test, args.seed, args.rates)
    broken_lines = write_folder(work / "noisy", {"train": noisy, "validation": validation, "test": test})
    _log(f"{vertical}: {len(noisy)} train rows with faults "
         f"{ {k: len(v) for k, v in faults.items()} } ({time.perf_counter() - started:.0f} s to generate)")
    started = time.perf_counter()
    shutil.rmtree(work / "clean-out", ignore_errors=True)
    report, outputs = clean_dataset([f"vertical={vertical}", f"model={args.preset}", f"data.source={work / 'noisy'}",
                                     "data.train_size=1000000", "data.validation_size=1000000",
                                     "data.test_size=1000000", f"clean.folds={args.folds}"], work / "clean-out",
                                    log=_log)
    seconds = time.perf_counter() - started
    clean_report = json.loads(outputs["clean_report"].read_text())
    result: dict[str, Any] = {
        "train_rows": len(noisy), "faults": {k: len(v) for k, v in faults.items()}, "clean_seconds": round(seconds, 1),
        "detection": detection(clean_report, faults, broken_lines),
        "review_queue": along_the_queue(clean_report, faults),
        "usable_share": report.figures()["usable_share"],
    }
    if args.teacher:
        write_folder(work / "clean", {"train": train, "validation": validation, "test": test})
        overrides = [f"model={args.preset}", *args.overrides]
        # one cleaned run per label-issue action, so that `drop` and `fix` share the clean and noisy teachers
        cleaned_run = work / f"run-cleaned-{args.label_issues}"
        accuracy = {"clean": teacher_accuracy(work / "clean", work / "run-clean", vertical, False, overrides),
                    "noisy": teacher_accuracy(work / "noisy", work / "run-noisy", vertical, False, overrides),
                    "cleaned": teacher_accuracy(work / "noisy", cleaned_run, vertical, True, overrides,
                                                args.label_issues)}
        lost = accuracy["clean"]["accuracy"] - accuracy["noisy"]["accuracy"]
        regained = accuracy["cleaned"]["accuracy"] - accuracy["noisy"]["accuracy"]
        low_clean = (accuracy["clean"]["ci95"] or [None])[0]
        high_noisy = (accuracy["noisy"]["ci95"] or [None, None])[1]
        real_loss = low_clean is not None and high_noisy is not None and low_clean > high_noisy
        result["teacher"] = accuracy | {
            "recovered_share": round(regained / lost, 3) if lost > 0 else None,
            "unpaired_claim": ("met" if lost > 0 and regained / lost >= RECOVERY_TARGET else "not met") if real_loss
            else "no claim: the noise cost no accuracy beyond the intervals",
            "paired": recovery(vertical, work / "clean", {"clean": work / "run-clean", "noisy": work / "run-noisy",
                                                          "cleaned": cleaned_run}, args.seed)}
        result["teacher"]["claim"] = result["teacher"]["paired"]["check"]
    return result


def cost(rows: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from dsvl_adapt_industrial.generator import generate_rows

    from dsvl_adapt.cleaning.stage import clean_dataset

    started = time.perf_counter()
    train = generate_rows("train", rows, seed=args.seed, image_size=args.image_size)
    validation = generate_rows("validation", 50, seed=args.seed, image_size=args.image_size)
    test = generate_rows("test", 100, seed=args.seed, image_size=args.image_size)
    write_folder(work / "cost", {"train": train, "validation": validation, "test": test})
    generate = time.perf_counter() - started
    started = time.perf_counter()
    shutil.rmtree(work / "cost-out", ignore_errors=True)
    report, _ = clean_dataset(["vertical=industrial", f"model={args.preset}", f"data.source={work / 'cost'}",
                               "data.train_size=1000000", f"clean.folds={args.folds}"], work / "cost-out", log=_log)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 1), "generate_seconds": round(generate, 1),
            "per_check_seconds": {k: v.get("seconds") for k, v in report.checks.items()},
            "target_seconds": 600, "met": seconds <= 600}


def _fmt(value: float | None, ci95: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{ci95[0]:.2f}, {ci95[1]:.2f}]" if ci95 else "")


def tables(out: dict[str, Any]) -> str:
    """The detection table and, where teachers were trained, the recovery table, as Markdown for people to read."""
    settings = out.get("settings", {})
    lines: list[str] = []
    if out["verticals"]:
        lines += [f"faults injected: {', '.join(f'{k} {v:.0%}' for k, v in out.get('rates', {}).items())}; "
                  f"the cleaned teacher's label issues: {settings.get('label_issues', 'drop')}; "
                  f"{settings.get('eval_rows', '?')} test rows", "",
                  "| vertical | fault | injected | flagged | recall | precision | target (recall / precision) "
                  "| check |", "|---|---|---|---|---|---|---|---|"]
    for vertical, result in out["verticals"].items():
        for kind, d in result["detection"].items():
            lines.append(f"| {vertical} | {kind} | {d['injected']} | {d['flagged']} | {_fmt(d['recall'])} | "
                         f"{_fmt(d['precision'])} | {d['target']['recall']} / {d['target']['precision']} | "
                         f"{'met' if d['met'] else 'not met'} |")
    teachers = {v: r["teacher"] for v, r in out["verticals"].items() if r.get("teacher")}
    if teachers:
        lines += ["", "| vertical | clean | noisy | cleaned | loss | regained | share recovered (paired) | check |",
                  "|---|---|---|---|---|---|---|---|"]
        for vertical, t in teachers.items():
            paired = t.get("paired") or {}
            loss, regained, share = (paired.get(k) or {} for k in ("loss", "regained", "share"))
            cells = [_fmt(t[k]["accuracy"], t[k]["ci95"]) for k in ("clean", "noisy", "cleaned")]
            cells += [_fmt(part.get("value"), part.get("ci95")) for part in (loss, regained, share)]
            cells.append(t.get("claim", paired.get("check", "-")))
            lines.append(f"| {vertical} | " + " | ".join(cells) + " |")
    if out.get("cost"):
        c = out["cost"]
        lines += ["", f"cost: {c['rows']} rows cleaned in {c['seconds']} s (target {c['target_seconds']} s: "
                      f"{'met' if c['met'] else 'not met'})"]
    return "\n".join(lines)


def _rate(text: str) -> tuple[str, float]:
    kind, _, share = text.partition("=")
    try:
        value = float(share)
    except ValueError:
        value = -1.0
    if kind not in RATES or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND=SHARE with KIND one of {', '.join(RATES)} and "
                                         f"0 <= SHARE < 1, e.g. flipped=0.3")
    return kind, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verticals", nargs="*", default=list(VERTICALS))
    parser.add_argument("--train-rows", type=int, default=864)
    parser.add_argument("--eval-rows", type=int, default=144)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--preset", default="reference-tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", action="store_true", help="also train the teacher on clean / noisy / cleaned")
    parser.add_argument("--cost-rows", type=int, default=0, help="time cleaning this many rows (cheap model only)")
    parser.add_argument("--work", default="runs/bench-cleaning")
    parser.add_argument("--quick", action="store_true", help="smallest settings: checks that it runs")
    parser.add_argument("--rate", action="append", default=[], metavar="KIND=SHARE", type=_rate,
                        help="a fault's share of the train rows instead of its default ("
                             + ", ".join(f"{k}={v}" for k, v in RATES.items()) + "); repeatable, e.g. --rate flipped=0.3")
    parser.add_argument("--label-issues", choices=("drop", "fix"), default="drop",
                        help="what the cleaned teacher's data does with a likely label error: drop the row, or fix its "
                             "answer to the cross-fitted model's suggestion (clean.label_issues)")
    parser.add_argument("overrides", nargs="*", help="overrides for the teacher runs (e.g. finetune=fast)")
    args = parser.parse_args()
    args.rates = {**RATES, **dict(args.rate)}
    if args.quick:
        args.train_rows, args.eval_rows, args.folds = 288, 72, 3
        args.verticals = args.verticals if args.verticals != list(VERTICALS) else ["industrial", "ecommerce"]
        args.overrides = args.overrides or ["finetune=fast"]
    work = Path(args.work)
    from dsvl_adapt.machine import cpu_description

    out: dict[str, Any] = {"rates": args.rates,
                           "settings": {k: v for k, v in vars(args).items() if k not in ("overrides", "rate", "rates")},
                           **cpu_description(), "verticals": {}}
    for vertical in args.verticals:
        out["verticals"][vertical] = one_vertical(vertical, args, work / vertical)
        _log(json.dumps({vertical: {k: out["verticals"][vertical][k] for k in ("detection", "review_queue")}}))
    if args.cost_rows:
        out["cost"] = cost(args.cost_rows, args, work)
    _log("\n" + tables(out))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
