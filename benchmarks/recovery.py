"""Does distillation recover what pruning takes? Side by side on one vertical (industrial by default).

One teacher (fine-tuned ``reference-small`` by default) per seed, computed once and shared through the
stage cache, then at an equal training budget:

  teacher                 the fine-tuned, uncompressed model
  pruned                  structural pruning at --ratio (default 50%) of the LM MLP channels, LM query heads and
                          vision MLP channels, no recovery
  pruned+finetune         pruned, then trained on labels only (distill with kl_weight=0, ce_weight=1)
  pruned+distill          pruned, then distilled from the teacher (KL x T^2 + CE)
  teacher-ort-int8        the teacher alone, ONNX Runtime dynamic int8

Usage::

    python benchmarks/recovery.py --out runs/recovery [--preset reference-small] [--steps 120] [--ratio 0.5]
        [--seeds 0 1 2] [--eval-rows 500] [--quick] [OVERRIDES...]

Every variant's model is scored again on ``--eval-rows`` test rows of its seed (default 500; the run itself scores the
vertical's 100). Accuracy comes with 95% bootstrap intervals over those rows (``benchmarks/_stats.py``): each variant
against the teacher (retention, with its interval) and distillation against fine-tuning, paired on the same rows;
with several ``--seeds`` the bootstrap resamples seeds too. The verdict on distillation against fine-tuning is
"better", "worse" or "tie" (the difference's interval holds 0) - a tie is a tie, not a win - and "no claim" when
there are fewer than 500 rows and fewer than 3 seeds. ``--quick``: reference-tiny, the fast presets, 10 recovery steps,
16 eval rows, one seed - proves the script runs, claims nothing.

A ratio the task survives unrecovered (the pruned model already at the teacher's accuracy) says nothing about
recovery: run a higher --ratio too. Runs of several ratios can share --out (the teacher is trained once per seed).
Prints JSON: accuracy, retention and their intervals, p50 latency of the quantized variant, and the run directories.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dsvl_adapt
from _stats import (
    BOOTSTRAP_METHOD,
    MIN_ROWS_FOR_CLAIM,
    MIN_SEEDS_FOR_CLAIM,
    bootstrap_metric,
    metric_on_rows,
    paired_comparison,
    retention_check,
)

QUICK = ["finetune=fast", "distill=fast", "data.train_size=48", "data.validation_size=8", "data.test_size=12",
         "score.latency_repeats=3", "score.latency_warmup=1"]


def variants(steps: int, ratio: float) -> dict[str, list[str]]:
    prune = [f"prune.structural.lm_mlp_ratio={ratio}", f"prune.structural.lm_head_ratio={ratio}",
             f"prune.structural.vision_mlp_ratio={ratio}", "prune.weights.sparsity=0"]
    train = [f"distill.train.steps={steps}"]
    return {
        "teacher": ["pipeline.stages=[load,finetune,score]", "score.models=[teacher]"],
        "pruned": [*prune, "pipeline.stages=[load,finetune,prune.structural,score]"],
        "pruned+finetune": [*prune, *train, "distill.kl_weight=0", "distill.ce_weight=1",
                            "pipeline.stages=[load,finetune,prune.structural,distill,score]"],
        "pruned+distill": [*prune, *train, "pipeline.stages=[load,finetune,prune.structural,distill,score]"],
        "teacher-ort-int8": ["prune=none", "quantize.backend=onnxruntime", "quantize.follow_target=false",
                             "pipeline.stages=[load,finetune,quantize,score]"],
    }


def model_dir(run_dir: Path, name: str) -> Path:
    """The directory a variant's scorecard scored for its model (the deployable artifact first)."""
    stages = run_dir / "stages"
    if name == "teacher":
        return stages / "finetune" / "teacher"
    for candidate in ("quantize/onnxruntime-int8", "distill/student", "prune.structural/student"):
        if (stages / candidate).is_dir():
            return stages / candidate
    raise FileNotFoundError(f"no model under {stages}")


def evaluate(run_dir: Path, name: str, rows: int) -> tuple[list[str], list, object]:
    """A variant's answers on ``rows`` test rows (the split's first ``rows``), the rows, and the primary metric."""
    from dsvl_adapt.config import RunConfig
    from dsvl_adapt.data.batches import BatchEncoder
    from dsvl_adapt.engine import RunContext
    from dsvl_adapt.models.checkpoint import load_checkpoint
    from dsvl_adapt.plugins import get_manager
    from dsvl_adapt.score.runners import open_runner

    raw = json.loads((run_dir / "manifest.json").read_text())["config"]
    context = RunContext(RunConfig.model_validate(raw), raw, run_dir, get_manager())
    runner = open_runner(model_dir(run_dir, name), load_torch=load_checkpoint)
    encoder = BatchEncoder(runner.processor, context.prompt)
    test = context.split("test", runner.processor.image_processor.size["height"], size=rows).rows
    answers = runner.answers(encoder, encoder.encode_all(test), batch_size=16,
                             max_new_tokens=context.vertical.max_answer_tokens, label=f"{name} on {rows} rows")
    primary = context.registry.metrics.get(context.vertical.metrics[0])  # the primary metric comes first
    return answers, test, primary


def run_dir_of(out: Path, tag: str, name: str, seed: int) -> Path:
    slug = name.replace("+", "-")
    base = out / (slug if name.startswith("teacher") else f"{tag}-{slug}")  # teachers: one per --out (and seed)
    return base if seed == 0 else base.with_name(f"{base.name}-seed{seed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/recovery"), help="folder for the runs")
    parser.add_argument("--preset", default="reference-small", help="model preset of the teacher")
    parser.add_argument("--vertical", default="industrial", help="the vertical whose data and metrics are used")
    parser.add_argument("--steps", type=int, default=120, help="training budget after pruning (both recoveries)")
    parser.add_argument("--ratio", type=float, default=0.5, help="structural pruning ratio (LM MLP, LM heads, vision "
                                                                   "MLP)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one full set of runs per seed")
    parser.add_argument("--eval-rows", type=int, default=MIN_ROWS_FOR_CLAIM,
                        help=f"test rows every variant is scored on (claims need >= {MIN_ROWS_FOR_CLAIM}, or "
                             f">= {MIN_SEEDS_FOR_CLAIM} seeds)")
    parser.add_argument("--quick", action="store_true", help="reference-tiny, fast presets, 10 steps, 16 eval rows")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. finetune=fast)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.steps, args.eval_rows = "reference-tiny", 10, 16
        args.overrides = [*QUICK, *args.overrides]
    if args.eval_rows < 1:
        parser.error("--eval-rows must be >= 1")
    tag = f"r{args.ratio:g}" + (f"-s{args.steps}" if args.steps != 120 else "")  # run dirs per ratio and budget
    names = list(variants(args.steps, args.ratio))
    results: dict[str, dict] = {name: {"runs": []} for name in names}
    answers: dict[str, list[list[str]]] = {name: [] for name in names}  # per seed
    rows_of_seed, primary = [], None
    for seed in args.seeds:
        common = [f"vertical={args.vertical}", f"model={args.preset}", f"cache_dir={args.out / 'cache'}",
                  f"seed={seed}", *args.overrides]
        for name, overrides in variants(args.steps, args.ratio).items():
            run_dir = run_dir_of(args.out, tag, name, seed)
            print(f"== {name} (seed {seed})", file=sys.stderr)
            card = dsvl_adapt.run([*common, *overrides], run_dir=run_dir)
            assert card is not None
            role = "teacher" if name == "teacher" else "student"
            latency = card.latency.get(role)
            results[name]["runs"].append({
                "seed": seed, "run_dir": str(run_dir), "scorecard_accuracy": card.accuracy[role],
                # general set (forgetting): the scorecard's own figure and interval for this variant's model
                "general": card.general.get(role), "general_ci": card.general_ci.get(role),
                "params": card.params.get(role), "size_bytes": card.size[role].bytes,
                "p50_ms": latency.p50_ms if latency and name.endswith("int8") else None,
                "runtime": latency.runtime if latency else None})
        for name in names:
            given, rows, primary = evaluate(run_dir_of(args.out, tag, name, seed), name, args.eval_rows)
            answers[name].append(given)
        rows_of_seed.append(rows)
    n_rows = min(len(r) for r in rows_of_seed)
    references = [[row.answer for row in rows][:n_rows] for rows in rows_of_seed]

    def per_seed(name: str) -> list:
        return [metric_on_rows(primary.compute, answers[name][i][:n_rows], references[i], rows_of_seed[i][:n_rows])
                for i in range(len(args.seeds))]

    for name in names:
        results[name]["accuracy"] = bootstrap_metric(per_seed(name), n_rows).to_json()
        if name != "teacher":
            vs = paired_comparison(per_seed("teacher"), per_seed(name), n_rows)
            results[name]["vs_teacher"] = {**vs.to_json(("teacher", name)),
                                           "retention_ge_0_95": retention_check(vs, 0.95)}
    distill_vs_finetune = paired_comparison(per_seed("pruned+finetune"), per_seed("pruned+distill"), n_rows)
    claim = distill_vs_finetune.claim()
    teacher_latency = dsvl_adapt.load_scorecard(run_dir_of(args.out, tag, "teacher", args.seeds[0])).latency.get(
        "teacher")
    summary = {
        "benchmark": "recovery",
        "vertical": args.vertical,
        "preset": args.preset,
        "quick": args.quick,
        "recovery_steps": args.steps,
        "ratio": args.ratio,
        "seeds": args.seeds,
        "eval_rows": n_rows,
        "metric": primary.name,
        "method": f"{BOOTSTRAP_METHOD}; a claim needs >= {MIN_ROWS_FOR_CLAIM} rows or >= {MIN_SEEDS_FOR_CLAIM} "
                  f"seeds, otherwise 'no claim'; a difference whose interval holds 0 is a 'tie'",
        "teacher_p50_ms_torch": teacher_latency.p50_ms if teacher_latency else None,
        "results": results,
        "distill_vs_finetune": {**distill_vs_finetune.to_json(("pruned+finetune", "pruned+distill")),
                                "verdict": {"better": "distillation beats fine-tuning",
                                            "worse": "fine-tuning beats distillation",
                                            "tie": "tie: the difference is within its interval",
                                            "no claim": "no claim: too few rows and seeds"}[claim]},
        "distill_retention_ge_0.95": results["pruned+distill"]["vs_teacher"]["retention_ge_0_95"],
    }
    print(json.dumps(summary, indent=2))
    d = summary["distill_vs_finetune"]["difference"]
    print(f"distill - finetune: {d['value']:+.4f} {d['ci95']} on {n_rows} rows x {len(args.seeds)} seeds: "
          f"{summary['distill_vs_finetune']['verdict']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
