"""Below int8 (issue 18): the student in int4 and mixed precision against what a user would pick instead - NNCF int4
weight compression of the unpruned teacher, with its defaults and with AWQ + scale estimation - side by side.

    PYTHONPATH=.:plugins/industrial python benchmarks/precision.py runs/industrial/<run>   # sizes + accuracies
    PYTHONPATH=. python benchmarks/precision.py --preset deepseek-vl-1.3b                 # random weights: size, speed
    PYTHONPATH=.:plugins/industrial python benchmarks/precision.py --quick                 # tiny run + tiny scale
    options: --test-rows 500 --calibration 8 --threads 1 --rounds 5 --repeats 3 --decode-tokens 8 --seed 0
             --students int8,int4,mixed,mixed-all,mixed-all-g128,mixed-all-g256 (the students to build; default all)
             --min-retention (default: the vertical's objectives.min_retention, else 0.95) --work DIR --out FILE

With a finished run (its teacher ``stages/finetune/teacher`` and its distilled student ``stages/distill/student``):

* ``teacher/onnxruntime-fp32`` - the teacher's split export: the size and the accuracy everything is held against;
* ``student/onnxruntime-int8`` - the SDK's default (dynamic int8, per channel, int8 token table);
* ``student/onnxruntime-int4`` - MatMulNBits int4 RTN, groups of 32, lm_head int8;
* ``student/onnxruntime-mixed`` - int4/int8/fp32 per layer searched (``dsvl_adapt.lowbit.mixed``) until
  the retention on the validation split, through ONNX Runtime, holds; over the language model's layers, as
  ``quantize.precision=mixed`` does (the vision tower and aligner stay fp32 under the default skip policy);
* ``student/onnxruntime-mixed-all`` - the same search over every linear layer, vision tower and aligner included
  (``quantize.precision=mixed quantize.skip=[]``); ``student/onnxruntime-mixed-all-g128``: the same with int4
  groups of 128 weights (``quantize.block_size=128``; the SDK's default is 32, NNCF's 128), ``-g256`` of 256;
* ``teacher/nncf-int4-defaults`` and ``teacher/nncf-int4-awq-se`` - the teacher's export converted with OpenVINO's
  defaults, then ``nncf.compress_weights`` as NNCF's guide shows it (``_baselines.nncf_int4``), run with
  OpenVINO's defaults.

Accuracy: greedy answers on ``--test-rows`` test rows through each artifact, the vertical's primary metric with a 95%
paired bootstrap interval against the teacher fp32 (``_stats.py``; claims need >= 500 rows). Size: bytes on disk of
each artifact. Acceptance, for each mixed student: >= 8x smaller than the fp32 teacher at >= 0.95 retention, >= 1.5x
smaller than NNCF int4 AWQ + scale estimation, and at least as accurate as NNCF int4 defaults.

With ``--preset`` (random weights, no accuracy): the fp32 teacher's export, and the student - structurally pruned
as the pipeline's default (``--prune`` 0.5 of the LM MLP channels, half that of the vision MLP) - in int8 and in two
int4 plans (at random weights there is no metric to search a mixed plan against, so each is the plan its search
starts from): ``int4``, the language model's layers in groups of 32 (``quantize.precision=mixed``), and
``int4-all-g<N>``, every linear layer - vision tower, aligner and patch embedding too - in ``quantize=smallest``'s
groups of N; lm_head int8 in both. Sizes, and speed in rotating rounds (``_stats.py``): time to first
token (one prefill, batch 1) and decode tokens/s (greedy generate of ``--decode-tokens`` minus the prefill, through
the split export's KV-cache LM; the JSON says whether each artifact has one) of each int4 plan against int8.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dsvl_adapt.quantization import DEFAULT_SKIP  # noqa: E402

from _baselines import PlainOpenVinoModel, nncf_int4, openvino_available, openvino_convert  # noqa: E402
from _stats import metric_on_rows, paired_comparison, paired_ratio, retention_check, round_orders  # noqa: E402
from runtimes import accuracy, log, random_setup, run_setup  # noqa: E402

QUICK_RUN = ["vertical=industrial", "model=reference-tiny", "finetune=fast", "distill=fast", "data.train_size=48",
             "data.validation_size=16", "data.test_size=24",
             "pipeline.stages=[load,finetune,prune.structural,distill]"]


def _ort(directory: Path, threads: int):
    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel

    return OnnxRuntimeModel.load(directory, threads=threads)


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file() and not p.name.endswith(".json"))


#: the mixed searches: name -> (the layers left fp32, ``QuantizeConfig.skip``; int4 group size, ``block_size``)
MIXED_SCOPES: dict[str, tuple[tuple[str, ...], int]] = {
    "mixed": (DEFAULT_SKIP, 32),    # the language model only, as ``quantize.precision=mixed`` does by default
    "mixed-all": ((), 32),          # every linear layer, vision tower and aligner too: ``quantize.skip=[]``
    "mixed-all-g128": ((), 128),    # the same in groups of 128 (``quantize.block_size=128``), NNCF's default size
    "mixed-all-g256": ((), 256),    # ... of 256, MatMulNBits' largest (one fp32 scale per 256 weights, not 128)
}


def _smallest_preset() -> dict[str, Any]:
    """``conf/quantize/smallest.yaml``'s own fields (skip, block size), read from the file the pipeline uses."""
    from omegaconf import OmegaConf

    preset = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "quantize"
                                                   / "smallest.yaml"))
    return {"skip": list(preset["skip"]), "block_size": int(preset["block_size"])}


#: the scale mode's all-layer int4 plan: what ``quantize=smallest`` starts its search from (every linear layer, the
#: vision tower's too, int4 in the preset's groups; lm_head at the int8 backup)
SMALLEST = f"int4-all-g{_smallest_preset()['block_size']}"

#: every student artifact ``--students`` can choose from
STUDENTS = ("int8", "int4", *MIXED_SCOPES)


def build_student(student, calib, work: Path, threads: int, context, processor, min_retention: float,
                  reference: float, chosen: tuple[str, ...] = STUDENTS) -> dict[str, Any]:
    """The student's export and its int8, int4 and mixed artifacts (one search per scope of ``MIXED_SCOPES``,
    each on the validation split through ONNX Runtime); ``chosen``: only these."""
    from dsvl_adapt.quantization import QuantizeConfig
    from dsvl_adapt.runtimes.onnxruntime import quantize_export as quantize_onnx
    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.lowbit.mixed import search_mixed_plan
    from dsvl_adapt.lowbit.plan import write_plan
    from dsvl_adapt.lowbit.sensitivity import layer_sensitivity
    from dsvl_adapt.lowbit.stage import runtime_metric

    fp32 = work / "student-fp32"
    export_onnx(student, fp32, calib[0], split=True, threads=threads)
    out = {}
    for name, config in {"int8": QuantizeConfig(backend="onnxruntime", mode="dynamic"),
                         "int4": QuantizeConfig(backend="onnxruntime", precision="int4")}.items():
        if name not in chosen:
            continue
        quantize_onnx(fp32, work / f"student-{name}", config, calib, threads=threads)
        out[name] = work / f"student-{name}"
    backend = context.registry.runtimes.get("onnxruntime")
    searches, plans = {}, {}
    for scope, (skip, block_size) in MIXED_SCOPES.items():
        if scope not in chosen:
            continue
        base = QuantizeConfig(backend="onnxruntime", precision="int4", skip=list(skip), block_size=block_size)
        layers = layer_sensitivity(student, calib, include=lambda n, base=base: not base.skips(n),
                                   group_size=base.block_size)
        count = iter(range(1000))

        def build(per_layer, base=base, scope=scope, count=count):
            directory = work / f"{scope}-candidates" / f"plan-{next(count):02d}"
            quantize_onnx(fp32, directory, base.model_copy(update={"per_layer": per_layer}), compare_batches=0)
            processor.save_pretrained(directory)
            return directory

        log(f"mixed search over {len(layers)} layers ({scope}: skip {list(skip)}, int4 groups of {block_size})")
        result = search_mixed_plan(layers, build=build, size=lambda d: _ort(d, threads).size_bytes,
                                   reference=reference, min_retention=min_retention, log=log,
                                   evaluate=lambda d: runtime_metric(context, backend, d, processor, threads=threads))
        out[scope] = result.chosen.directory
        plan = write_plan(result.chosen.directory, extra={"search": result.as_dict()})
        searches[scope] = {**result.as_dict(), "skip": list(skip), "block_size": block_size, "layers": len(layers)}
        plans[scope] = {"counts": plan["counts"], "bytes_by_precision": plan["bytes_by_precision"]}
    return {"dirs": out, "search": searches, "plan": plans}


def accuracy_mode(args, run_dir: Path, work: Path) -> dict[str, Any]:
    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.models.checkpoint import load_checkpoint
    from dsvl_adapt.lowbit.stage import DEFAULT_MIN_RETENTION, runtime_metric
    from runtimes import Variant

    teacher, _, _, calib, scoring = run_setup(run_dir, args.calibration, args.test_rows)
    context = scoring["context"]
    student_dir = next(d for d in (run_dir / "stages" / "distill" / "student",
                                   run_dir / "stages" / "prune.structural" / "student") if d.is_dir())
    student, processor = load_checkpoint(student_dir)
    student.eval()
    target = args.min_retention or context.vertical.objectives.min_retention or DEFAULT_MIN_RETENTION
    teacher_fp32 = work / "teacher-fp32"
    export_onnx(teacher, teacher_fp32, calib[0], split=True, threads=args.threads)
    processor.save_pretrained(teacher_fp32)
    reference = runtime_metric(context, context.registry.runtimes.get("onnxruntime"), teacher_fp32, processor,
                               threads=args.threads)
    log(f"teacher validation metric through ONNX Runtime: {reference:.3f}; retention target {target}")
    built = build_student(student, calib, work, args.threads, context, processor, target, reference,
                          chosen=args.students)
    variants = {"teacher/onnxruntime-fp32": (teacher_fp32, "onnxruntime")}
    variants.update({f"student/onnxruntime-{k}": (d, "onnxruntime") for k, d in built["dirs"].items()})
    baselines: dict[str, Any] = {}
    reason = openvino_available()
    if reason is None:
        ir = openvino_convert(teacher_fp32, work / "teacher-ir")
        for name, batches in (("nncf-int4-defaults", None), ("nncf-int4-awq-se", calib)):
            baselines[name] = nncf_int4(ir, work / f"teacher-{name}", batches)
            variants[f"teacher/{name}"] = (work / f"teacher-{name}", "openvino")
    entries: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    for name, (directory, runtime) in variants.items():
        model = _ort(directory, args.threads) if runtime == "onnxruntime" else PlainOpenVinoModel(directory,
                                                                                                args.threads)
        metrics, answers[name] = accuracy(Variant(name, runtime, model, _bytes(directory)), scoring, args.batch_size)
        entries[name] = {"runtime": runtime, "bytes": _bytes(directory), "metrics": metrics}
        log(f"{name}: {entries[name]['bytes']:,} bytes, {metrics}")
    rows = scoring["rows"]
    spec = context.registry.metrics.get(context.vertical.metrics[0])
    references = [row.answer for row in rows]
    on = {name: metric_on_rows(spec.compute, given, references, rows) for name, given in answers.items()}
    teacher_bytes = entries["teacher/onnxruntime-fp32"]["bytes"]
    comparisons = {}
    for name in entries:
        entries[name]["smaller_than_teacher_fp32"] = round(teacher_bytes / entries[name]["bytes"], 3)
        if name != "teacher/onnxruntime-fp32":
            c = paired_comparison([on["teacher/onnxruntime-fp32"]], [on[name]], len(rows), seed=args.seed)
            comparisons[name] = c
            entries[name]["vs_teacher_fp32"] = {**c.to_json(("teacher", name)),
                                                "retention_target": retention_check(c, target)}
    return {"entries": entries, "search": built["search"], "plan": built["plan"], "baselines": baselines,
            "openvino": reason or "available", "acceptance": acceptance(entries, comparisons, on, len(rows), target,
                                                                        args.seed)}


def acceptance(entries, comparisons, on, n_rows: int, target: float, seed: int) -> dict[str, Any]:
    """The issue's conditions for each mixed student (one per search scope)."""
    out: dict[str, Any] = {}
    for scope in MIXED_SCOPES:
        mixed = f"student/onnxruntime-{scope}"
        if mixed not in entries:  # not among --students
            continue
        checks: dict[str, Any] = {
            "smaller_than_teacher_fp32": {"value": entries[mixed]["smaller_than_teacher_fp32"], "target": 8.0,
                                          "met": entries[mixed]["smaller_than_teacher_fp32"] >= 8.0},
            "retention": {"target": target, "check": retention_check(comparisons[mixed], target)},
        }
        awq = "teacher/nncf-int4-awq-se"
        if awq in entries:
            ratio = entries[awq]["bytes"] / entries[mixed]["bytes"]
            checks["smaller_than_nncf_int4_awq_se"] = {"value": round(ratio, 3), "target": 1.5, "met": ratio >= 1.5}
        defaults = "teacher/nncf-int4-defaults"
        if defaults in entries:
            c = paired_comparison([on[defaults]], [on[mixed]], n_rows, seed=seed)
            checks["vs_nncf_int4_defaults"] = {**c.to_json((defaults, mixed)), "at_least_as_accurate":
                                               c.claim() in ("better", "tie") if c.claim() != "no claim"
                                               else "no claim"}
        out[mixed] = checks
    return out


def scale_mode(args, work: Path) -> dict[str, Any]:
    """Random weights at ``--preset``: sizes and speed (int4 plan against the int8 student)."""
    from dsvl_adapt.quantization import QuantizeConfig
    from dsvl_adapt.runtimes.onnxruntime import quantize_export as quantize_onnx
    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.lowbit.plan import write_plan

    from dsvl_adapt.compress.structural import StructuralPruneConfig, prune_structural

    model, one, _, calib, _ = random_setup(args.preset, 32, args.calibration)
    teacher = work / "teacher-fp32"
    export_onnx(model, teacher, calib[0], split=True, threads=args.threads)
    r = args.prune  # the student: pruned as conf/prune/default.yaml does (LM MLP r, vision MLP r/2, no heads)
    prune_structural(model, StructuralPruneConfig(lm_mlp_ratio=r, lm_head_ratio=0.0, vision_mlp_ratio=r / 2,
                                                  vision_head_ratio=0.0), calib[:1])
    fp32 = work / "student-fp32"
    export_onnx(model.eval(), fp32, calib[0], split=True, threads=args.threads)
    del model
    dirs = {"teacher-fp32": teacher}
    for name, config in {"int8": QuantizeConfig(backend="onnxruntime", mode="dynamic"),
                         "int4": QuantizeConfig(backend="onnxruntime", precision="int4"),
                         SMALLEST: QuantizeConfig(backend="onnxruntime", precision="int4",
                                                  **_smallest_preset())}.items():
        quantize_onnx(fp32, work / name, config, calib[:1], threads=args.threads, compare_batches=0)
        dirs[name] = work / name
    shutil.rmtree(fp32)
    plans = {name: write_plan(dirs[name]) for name in ("int4", SMALLEST)}
    sizes = {name: _bytes(d) for name, d in dirs.items()}
    models = {name: _ort(dirs[name], args.threads) for name in ("int8", "int4", SMALLEST)}
    prefill: dict[str, list[float]] = {n: [] for n in models}
    decode: dict[str, list[float]] = {n: [] for n in models}
    for name, m in models.items():  # warm-up
        m.forward(one)
        m.generate(one, 2)
    for order in round_orders(list(models), args.rounds, args.seed):
        for name in order:
            m = models[name]
            p, g = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                m.forward(one)
                p.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                m.generate(one, args.decode_tokens, eos_token_id=None)
                g.append(time.perf_counter() - t0)
            first, whole = statistics.median(p), statistics.median(g)
            prefill[name].append(first * 1000)
            decode[name].append(max(whole - first, 1e-9) / max(args.decode_tokens - 1, 1) * 1000)
    smallest = sizes["teacher-fp32"] / sizes[SMALLEST]
    return {"preset": args.preset, "sizes": sizes,
            "plan": {n: {"counts": p["counts"], "bytes_by_precision": p["bytes_by_precision"]}
                     for n, p in plans.items()},
            "prune": args.prune,
            "teacher_fp32_over_student": {n: round(sizes["teacher-fp32"] / sizes[n], 3)
                                          for n in ("int8", "int4", SMALLEST)},
            "target_teacher_over_student": {"artifact": SMALLEST, "value": round(smallest, 3), "target": 7.0,
                                            "met": smallest >= 7.0},
            "ttft_ms": {n: statistics.median(v) for n, v in prefill.items()},
            "decode_tokens_per_s": {n: 1000 / statistics.median(v) for n, v in decode.items()},
            **{f"{n}_vs_int8_ttft": paired_ratio(prefill["int8"], prefill[n]).to_json() for n in ("int4", SMALLEST)},
            **{f"{n}_vs_int8_decode": paired_ratio(decode["int8"], decode[n]).to_json() for n in ("int4", SMALLEST)},
            "kv_cache": {n: bool(m.report.kv_cache) for n, m in models.items()},
            "decode": "greedy generate through the runtime (past/present KV cache when the export has one) minus "
                      "the prefill, per new token"}


def _students(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in STUDENTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--students takes names among {', '.join(STUDENTS)}; got {text!r}")
    return names


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--preset")
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=8)
    parser.add_argument("--min-retention", type=float)
    parser.add_argument("--prune", type=float, default=0.5,
                        help="--preset: the student's LM MLP pruning ratio (vision MLP: half of it)")
    parser.add_argument("--students", type=_students, default=STUDENTS, metavar="A,B",
                        help=f"the student artifacts to build and score (default all: {','.join(STUDENTS)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if args.preset:
            result = scale_mode(args, work)
        else:
            run_dir = args.run_dir
            if args.quick:
                args.test_rows, args.calibration, args.rounds = min(args.test_rows, 24), 2, 2
                run_dir = run_dir or work / "tiny-run"
                if not (run_dir / "manifest.json").is_file():
                    log("--quick: a tiny run up to distill (reference-tiny, fast presets)")
                    subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *QUICK_RUN, f"run_dir={run_dir}"],
                                   check=True, stdout=sys.stderr)
            if run_dir is None:
                parser.error("give a finished run directory, --preset NAME, or --quick")
            result = accuracy_mode(args, run_dir, work)
            if args.quick:  # the size-and-speed path too, at the tiny dimensions
                args.preset, args.repeats = "reference-tiny", 1
                result["scale"] = scale_mode(args, work / "scale")
        result.update({"quick": args.quick, "seconds": round(time.time() - t0, 1), "threads": args.threads})
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
