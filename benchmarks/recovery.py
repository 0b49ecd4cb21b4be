"""Does distillation recover what pruning takes? Side by side on one vertical (industrial by default).

One teacher (fine-tuned ``reference-small`` by default), computed once and shared through the
stage cache, then at an equal training budget:

  teacher                 the fine-tuned, uncompressed model
  pruned                  structural pruning at --ratio (default 50%) of the LM MLP channels, LM query heads and
                          vision MLP channels, no recovery
  pruned+finetune         pruned, then trained on labels only (distill with kl_weight=0, ce_weight=1)
  pruned+distill          pruned, then distilled from the teacher (KL x T^2 + CE)
  teacher-ort-int8        the teacher alone, ONNX Runtime dynamic int8

Prints JSON: accuracy and retention of each (against the teacher), p50 latency of the quantized
ones, and the run directories. Usage::

    python benchmarks/recovery.py --out runs/recovery [--preset reference-small] [--steps 120] [--ratio 0.5]

``--eval-rows N`` scores every variant's model again on N test rows (the run itself scores the vertical's 100):
at 100 rows one answer is a point, which decides a tie between two recoveries that both reach ~99%.

A ratio the task survives unrecovered (the pruned model already at the teacher's accuracy) says nothing about
recovery: run a higher --ratio too. Runs of several ratios can share --out (the teacher is trained once).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dsvl_adapt

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
    for candidate in ("quantize/onnx-int8", "distill/student", "prune.structural/student"):
        if (stages / candidate).is_dir():
            return stages / candidate
    raise FileNotFoundError(f"no model under {stages}")


def evaluate(run_dir: Path, name: str, rows: int) -> dict[str, float]:
    """Every metric of the vertical for a variant's model on ``rows`` test rows (the split's first ``rows``)."""
    from dsvl_adapt.config import RunConfig
    from dsvl_adapt.data.batches import BatchEncoder
    from dsvl_adapt.engine import RunContext
    from dsvl_adapt.models.checkpoint import load_checkpoint
    from dsvl_adapt.plugins import get_manager
    from dsvl_adapt.score.runners import open_runner
    from dsvl_adapt.score.stage import compute_metrics

    raw = json.loads((run_dir / "manifest.json").read_text())["config"]
    context = RunContext(RunConfig.model_validate(raw), raw, run_dir, get_manager())
    runner = open_runner(model_dir(run_dir, name), load_torch=load_checkpoint)
    encoder = BatchEncoder(runner.processor, context.prompt)
    test = context.split("test", runner.processor.image_processor.size["height"], size=rows).rows
    answers = runner.answers(encoder, encoder.encode_all(test), batch_size=16,
                             max_new_tokens=context.vertical.max_answer_tokens, label=f"{name} on {rows} rows")
    specs = [context.registry.metrics.get(metric) for metric in context.vertical.metrics]
    return compute_metrics(specs, answers, test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/recovery"), help="folder for the runs")
    parser.add_argument("--preset", default="reference-small", help="model preset of the teacher")
    parser.add_argument("--vertical", default="industrial", help="the vertical whose data and metrics are used")
    parser.add_argument("--steps", type=int, default=120, help="training budget after pruning (both recoveries)")
    parser.add_argument("--ratio", type=float, default=0.5, help="structural pruning ratio (LM MLP, LM heads, vision "
                                                                   "MLP)")
    parser.add_argument("--eval-rows", type=int, default=0,
                        help="also score every variant on this many test rows (0: only the run's own scorecard)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. finetune=fast)")
    args = parser.parse_args(argv)
    common = [f"vertical={args.vertical}", f"model={args.preset}", f"cache_dir={args.out / 'cache'}", *args.overrides]
    results: dict[str, dict] = {}
    teacher_accuracy = None
    tag = f"r{args.ratio:g}" + (f"-s{args.steps}" if args.steps != 120 else "")  # run dirs per ratio and budget
    for name, overrides in variants(args.steps, args.ratio).items():
        slug = name.replace("+", "-")
        run_dir = args.out / (slug if name.startswith("teacher") else f"{tag}-{slug}")  # teachers: one per --out
        print(f"== {name}", file=sys.stderr)
        card = dsvl_adapt.run([*common, *overrides], run_dir=run_dir)
        assert card is not None
        role = "teacher" if name == "teacher" else "student"
        accuracy = card.accuracy[role]
        if name == "teacher":
            teacher_accuracy = accuracy
        latency = card.latency.get(role)
        results[name] = {
            "accuracy": accuracy,
            "retention": None if not teacher_accuracy else round(accuracy / teacher_accuracy, 4),
            "params": card.params.get(role),
            "size_bytes": card.size[role].bytes,
            "p50_ms": latency.p50_ms if latency and name.endswith("int8") else None,
            "runtime": latency.runtime if latency else None,
            "run_dir": str(run_dir),
        }
    if args.eval_rows:
        primary = dsvl_adapt.load_scorecard(args.out / "teacher").metric
        for name, result in results.items():
            value = evaluate(Path(result["run_dir"]), name, args.eval_rows)[primary]
            result[f"accuracy_{args.eval_rows}_rows"] = value
        base = results["teacher"][f"accuracy_{args.eval_rows}_rows"]
        for result in results.values():
            value = result[f"accuracy_{args.eval_rows}_rows"]
            result[f"retention_{args.eval_rows}_rows"] = round(value / base, 4) if base else None
    teacher_latency = dsvl_adapt.load_scorecard(args.out / "teacher").latency.get("teacher")
    summary = {
        "benchmark": "recovery",
        "vertical": args.vertical,
        "preset": args.preset,
        "recovery_steps": args.steps,
        "ratio": args.ratio,
        "teacher_p50_ms_torch": teacher_latency.p50_ms if teacher_latency else None,
        "results": results,
    }
    key = f"accuracy_{args.eval_rows}_rows" if args.eval_rows else "accuracy"
    summary["judged_on"] = key
    summary["distill_beats_finetune"] = results["pruned+distill"][key] >= results["pruned+finetune"][key]
    summary["distill_retention_at_least_0.95"] = (
        results["pruned+distill"][key] >= 0.95 * results["teacher"][key])
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
