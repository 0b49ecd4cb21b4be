"""CPU runtimes side by side: PyTorch, ONNX Runtime and OpenVINO, fp32 and int8, on one model and on its
structurally pruned student.

    PYTHONPATH=. python benchmarks/runtimes.py                        # reference-base, random weights: speed only
    PYTHONPATH=. python benchmarks/runtimes.py runs/industrial/<run>  # + the run's trained teacher: accuracy too
    options: --preset reference-base --threads 1 --select-rounds 3 --rounds 5 --repeats 3 --text 32 --prune 0.5
             --test-rows 48 --batch-size 8 --seed 0 --work DIR (keep the artifacts) --no-pruned --int4 --student DIR
             --spin --quick

Variants of each model (the pruned student gets the same set, prefixed ``pruned/``):

* ``torch-fp32`` eager; ``torch-int8`` (``torch.ao`` dynamic, Linear layers);
* ``onnxruntime-fp32`` (dynamo export, full graph); ``onnxruntime-int8`` (``quantize_dynamic``, per channel);
* ``openvino-fp32-f32`` (IR from that export, precision pinned to f32); ``openvino-fp32-bf16`` (the same IR at bf16,
  which is what OpenVINO picks by itself on a CPU with AVX512-BF16/AMX); ``openvino-int8w-f32``
  (``nncf.compress_weights`` INT8_ASYM, activations f32); ``openvino-int8dyn-f32`` (the same weights plus the CPU
  plugin's dynamic activation quantization - OpenVINO's default for compressed weights); ``openvino-int8ptq-f32``
  (``nncf.quantize``, calibrated); with ``--int4`` also ``openvino-int4dyn-f32``.

Every quantized variant uses the library's default skip policy (vision tower and aligner in fp32), so the runtimes
compress the same layers. The pruned student: ``prune_structural`` with ``--prune`` of the LM MLP channels, LM query
heads, vision MLP channels and vision heads (magnitude importance; untrained after pruning, so its accuracy drops) -
unless a trained student is given: ``--student DIR``, or by default the run's distilled student
(``<run>/stages/distill/student``) when a run directory is given.

The baseline of ``acceptance``: ``openvino-int8-nncf-defaults``, what a user of OpenVINO + NNCF alone gets on the
unpruned teacher - the teacher's export converted to IR with OpenVINO's defaults, ``nncf.quantize(model,
nncf.Dataset(samples))`` with every NNCF default (no skip policy, no model type), saved and compiled with OpenVINO's
defaults (its own inference precision), as NNCF's basic quantization flow shows (``benchmarks/_baselines.py``).
``acceptance`` compares it with the best int8 variant of the pruned student: that variant is CHOSEN on
``--select-rounds`` selection rounds and REPORTED from the ``--rounds`` rounds that follow (choosing and reporting on
the same timings would flatter the winner); paired speed-up with its interval, and accuracy through each runtime
against the teacher's in PyTorch, with a paired bootstrap interval over the test rows.

Timing: batch 1 prefill (one forward over image + prompt), every variant warmed up, then rounds in which each variant
runs ``--repeats`` calls (their median is the round's time), in an order that rotates from round to round (a Latin
square per block of rounds, reshuffled with ``--seed``), so drift from other tenants and position effects hit all
alike. Speed-ups: baseline / variant time per round, geometric mean with a 95% paired t interval on the log ratios,
and a claim ("faster" needs >= 1.10 with the interval above 1; ``benchmarks/_stats.py``), against PyTorch fp32 and
against ONNX Runtime fp32 (PyTorch fp32 matmuls take MKL's generic path on AMD CPUs, which flatters everyone against
it). Accuracy (with a run directory): greedy answers (no KV cache, ``greedy_generate``) through each variant on the
test split, scored with the vertical's metrics; differences from the teacher come with paired bootstrap intervals
and are claims only with >= 500 test rows (``--test-rows``). ``--quick``: reference-tiny, 2 selection + 3 rounds of
1 call, 2 calibration batches - proves the script runs. Worker threads wait passively (``OMP_WAIT_POLICY=PASSIVE``,
ONNX Runtime ``allow_spinning=0``) unless ``--spin``, as in ``compression.py``: variants run in turn in one process,
and one runtime's spinning threads would steal the cores of the next. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Busy-waiting worker threads (OpenMP's default for PyTorch, ONNX Runtime's spinning) keep a core after their call
# and slow the variant timed next on a 2-core machine; every runtime waits passively unless --spin. OpenMP reads
# this before torch loads.
SPIN = "--spin" in sys.argv[1:]
if not SPIN:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ORT_SESSION_CONFIG = {"session.intra_op.allow_spinning": "1" if SPIN else "0"}

import numpy as np
import torch

from _baselines import PlainOpenVinoModel, nncf_quantize_defaults, openvino_convert
from _stats import (
    BOOTSTRAP_METHOD,
    FASTER_AT,
    RATIO_METHOD,
    metric_on_rows,
    paired_comparison,
    paired_ratio,
    retention_check,
    round_orders,
    target_check,
)


@dataclass
class Variant:
    name: str
    runtime: str
    model: Any  # forward(batch) / generate(batch, n, eos, pad)
    size_bytes: int
    info: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------ inputs


def random_setup(preset: str, text: int, calibration: int):
    """A random-weight model of ``preset`` with synthetic batches (64 image + ``text`` text tokens)."""
    from transformers import AutoModelForImageTextToText

    from dsvl_adapt.models.presets import build_config, get_preset

    vocab, image, pad, bos, eos = 1024, 1023, 0, 1, 2
    torch.manual_seed(0)
    config = build_config(preset, vocab_size=vocab, image_token_id=image, pad_token_id=pad, bos_token_id=bos,
                          eos_token_id=eos)
    model = AutoModelForImageTextToText.from_config(config).eval()
    p = get_preset(preset)

    def batch(rows: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        n = p.num_image_tokens
        ids = torch.randint(3, vocab - 1, (rows, text + n), generator=g)
        ids[:, 0] = bos
        ids[:, 2: 2 + n] = image
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "pixel_values": torch.randn(rows, 3, p.image_size, p.image_size, generator=g)}

    return model, batch(1, 0), batch(2, 1), [batch(2, 10 + i) for i in range(calibration)], None


def run_setup(run_dir: Path, calibration: int, test_rows: int):
    """The run's trained teacher, the vertical's calibration batches (train split) and test rows."""
    from dsvl_adapt.config import RunConfig
    from dsvl_adapt.data.batches import BatchEncoder
    from dsvl_adapt.engine import RunContext
    from dsvl_adapt.models.checkpoint import load_checkpoint
    from dsvl_adapt.plugins import get_manager

    raw = json.loads((run_dir / "manifest.json").read_text())["config"]
    config = RunConfig.model_validate(raw)
    context = RunContext(config, raw, run_dir, get_manager())
    teacher = run_dir / "stages" / "finetune" / "teacher"
    model, processor = load_checkpoint(teacher)
    model.eval()
    encoder = BatchEncoder(processor, context.prompt)
    size = processor.image_processor.size["height"]
    train = encoder.encode_all(context.split("train", size).rows[: calibration * 2])
    calib = [{k: v for k, v in encoder.training_batch(train[i: i + 2]).items() if k != "labels"}
             for i in range(0, len(train), 2)]
    rows = context.split("test", size, size=test_rows).rows[:test_rows]  # generated data: as many rows as asked
    items = encoder.encode_all(rows)
    one = encoder.generation_batch(items[:1])
    scoring = {"context": context, "encoder": encoder, "rows": rows, "items": items, "teacher": str(teacher)}
    return model, one, calib[0], calib, scoring


# ------------------------------------------------------------------------------------------------------------ variants


def build_variants(model, prefix: str, example, calib, work: Path, threads: int, int4: bool,
                   plain_baseline: bool = False) -> list[Variant]:
    from dsvl_adapt.compress.quantize import (
        QuantizeConfig,
        quantize_torch_dynamic,
        save_quantized,
    )
    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.runtimes.onnxruntime import quantize_export as quantize_onnx
    from dsvl_adapt.runtimes.openvino import quantize_openvino
    from dsvl_adapt.runtimes import TorchRuntimeModel
    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel
    from dsvl_adapt.runtimes.openvino import OpenVinoModel, convert_export

    out: list[Variant] = []
    work.mkdir(parents=True, exist_ok=True)

    def step(what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        log(f"{prefix}{what}: {time.perf_counter() - t0:.1f} s")
        return result

    fp32_dir = work / "torch-fp32"
    step("save torch fp32", lambda: model.save_pretrained(fp32_dir))
    out.append(Variant(f"{prefix}torch-fp32", "torch", TorchRuntimeModel(model), dir_bytes(fp32_dir)))
    qconfig = QuantizeConfig()
    qmodel = step("torch int8", lambda: quantize_torch_dynamic(model, qconfig)).eval()
    save_quantized(qmodel, work / "torch-int8", qconfig)
    out.append(Variant(f"{prefix}torch-int8", "torch", TorchRuntimeModel(qmodel), dir_bytes(work / "torch-int8")))

    onnx_dir = work / "onnx-fp32"
    report = step("onnx export", lambda: export_onnx(model, onnx_dir, example, threads=threads))
    fp32_runtime = OnnxRuntimeModel.load(onnx_dir, threads=threads, session_config=ORT_SESSION_CONFIG)
    out.append(Variant(f"{prefix}onnxruntime-fp32", "onnxruntime", fp32_runtime, report.bytes,
                       {"max_abs_diff_vs_torch": max(report.max_abs_diff.values())}))
    ort_cfg = QuantizeConfig(backend="onnxruntime", mode="dynamic")
    ort = step("onnxruntime int8", lambda: quantize_onnx(onnx_dir, work / "onnx-int8", ort_cfg, calib[:2],
                                                         threads=threads))
    out.append(Variant(f"{prefix}onnxruntime-int8", "onnxruntime",
                       OnnxRuntimeModel.load(work / "onnx-int8", threads=threads,
                                             session_config=ORT_SESSION_CONFIG), ort.bytes,
                       {"top1_agreement_vs_fp32": ort.top1_agreement}))

    ov = step("openvino fp32", lambda: convert_export(onnx_dir, work / "openvino-fp32", batches=calib[:1],
                                                      threads=threads))
    for precision in ("f32", "bf16"):
        runtime = OpenVinoModel.load(ov.directory, threads=threads, precision=precision)
        out.append(Variant(f"{prefix}openvino-fp32-{precision}", "openvino", runtime, ov.bytes,
                           {"effective_precision": runtime.properties.get("INFERENCE_PRECISION_HINT")}))
    cases = [("int8w", "weight_only", 8), ("int8dyn", "dynamic", 8), ("int8ptq", "static", 8)]
    if int4:
        cases.append(("int4dyn", "dynamic", 4))
    for tag, mode, bits in cases:
        cfg = QuantizeConfig(backend="openvino", mode=mode, bits=bits, calibration_batches=len(calib),
                             block_size=64)
        directory = work / f"openvino-{tag}"
        rep = step(f"openvino {tag}", lambda cfg=cfg, directory=directory: quantize_openvino(
            onnx_dir, directory, cfg, calib, threads=threads))
        out.append(Variant(f"{prefix}openvino-{tag}-f32", "openvino", OpenVinoModel.load(directory, threads=threads),
                           rep.bytes, {"top1_agreement_vs_fp32": rep.top1_agreement,
                                       "dynamic_quantization_group": rep.runtime_properties[
                                           "DYNAMIC_QUANTIZATION_GROUP_SIZE"]}))
    if plain_baseline:  # OpenVINO + NNCF alone, as NNCF documents it (benchmarks/_baselines.py)
        step("openvino IR, OpenVINO defaults", lambda: openvino_convert(onnx_dir, work / "openvino-plain-fp32"))
        how = step("nncf.quantize, NNCF defaults", lambda: nncf_quantize_defaults(
            work / "openvino-plain-fp32", work / "openvino-plain-int8", calib))
        runtime = PlainOpenVinoModel(work / "openvino-plain-int8", threads=threads)
        out.append(Variant(PLAIN_OPENVINO, "openvino", runtime, dir_bytes(work / "openvino-plain-int8"),
                           {**how, "effective_properties": runtime.properties}))
    return out


# ------------------------------------------------------------------------------------------------------------ measuring


def time_rounds(variants: list[Variant], batch, rounds: int, repeats: int, seed: int,
                warm: bool = True) -> dict[str, list[float]]:
    """``rounds`` rounds, each variant ``repeats`` calls a round in a rotating order; per-round medians by name."""
    if warm:
        for v in variants:  # warm-up: first-call allocations, lazy kernels
            for _ in range(2):
                v.model.forward(batch)
    by = {v.name: v for v in variants}
    per_round: dict[str, list[float]] = {v.name: [] for v in variants}
    for r, order in enumerate(round_orders(list(by), rounds, seed)):
        for name in order:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                by[name].model.forward(batch)
                times.append((time.perf_counter() - t0) * 1000.0)
            per_round[name].append(statistics.median(times))
            if warm:  # the reported rounds (selection rounds are kept apart)
                by[name].samples += times
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {per_round[n][-1]:.1f}" for n in order))
    return per_round


def speedup(variant: Variant, baseline: Variant | None) -> dict[str, Any] | None:
    """``baseline / variant`` over the reported rounds, with its 95% interval and claim."""
    if baseline is None:
        return None
    return paired_ratio(baseline.rounds, variant.rounds).to_json()


def accuracy(variant: Variant, scoring: dict[str, Any], batch_size: int) -> tuple[dict[str, float], list[str]]:
    """Every metric of the vertical through ``variant`` on the test rows, and the answers."""
    from dsvl_adapt.score.stage import compute_metrics

    context, encoder, items = scoring["context"], scoring["encoder"], scoring["items"]
    specs = [context.registry.metrics.get(name) for name in context.vertical.metrics]
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = encoder.generation_batch(items[start: start + batch_size])
        new = variant.model.generate(batch, context.vertical.max_answer_tokens, eos_token_id=encoder.eos_id,
                                     pad_token_id=encoder.pad_id)
        answers += encoder.decode(torch.as_tensor(new))
    return compute_metrics(specs, answers, scoring["rows"]), answers


def versus_teacher(answers: dict[str, list[str]], scoring: dict[str, Any]) -> dict[str, Any]:
    """Each variant's primary metric against the teacher's in PyTorch fp32, paired over the same test rows."""
    context, rows = scoring["context"], scoring["rows"]
    spec = context.registry.metrics.get(context.vertical.metrics[0])  # the primary metric comes first
    references = [row.answer for row in rows]
    teacher = metric_on_rows(spec.compute, answers["torch-fp32"], references, rows)
    out = {}
    for name, given in answers.items():
        if name == "torch-fp32":
            continue
        comparison = paired_comparison([teacher], [metric_on_rows(spec.compute, given, references, rows)], len(rows))
        out[name] = {**comparison.to_json(("teacher_torch_fp32", name)), "metric": spec.name,
                     "retention_ge_0_95": retention_check(comparison, 0.95), "_comparison": comparison}
    return out


PLAIN_OPENVINO = "openvino-int8-nncf-defaults"  # OpenVINO + NNCF alone, their defaults, on the unpruned teacher


def candidates_of(variants: list[Variant]) -> list[Variant]:
    """The pruned student's int8 variants: the acceptance's candidates."""
    return [v for v in variants if v.name.startswith("pruned/") and "int8" in v.name]


def acceptance(entries: dict[str, dict[str, Any]], by_name: dict[str, Variant], best: str | None,
               selection: dict[str, float], vs_teacher: dict[str, Any]) -> dict[str, Any] | None:
    """Is the pruned int8 student on its best runtime (chosen on the selection rounds) >= 1.5x faster than plain
    OpenVINO int8 PTQ of the teacher (on the reported rounds), at >= 0.95 of the teacher's accuracy (PyTorch fp32)
    measured through that runtime?"""
    if PLAIN_OPENVINO not in by_name or best is None:
        return None
    estimate = paired_ratio(by_name[PLAIN_OPENVINO].rounds, by_name[best].rounds)
    out: dict[str, Any] = {
        "best_pruned_int8": best,
        "chosen_on": "the median of the selection rounds (separate from the reported rounds)",
        "selection_p50_ms": selection,
        "speedup_vs_plain_openvino_int8": estimate.to_json(),
        "ge_1_5x_faster": target_check(estimate.ratio, estimate.low, estimate.high, 1.5),
    }
    if best in vs_teacher:
        comparison = vs_teacher[best]
        out.update({"metric": comparison["metric"], "accuracy_vs_teacher": {
            k: v for k, v in comparison.items() if not k.startswith("_")},
            "ge_0_95_of_teacher": comparison["retention_ge_0_95"]})
        out["all_hold"] = out["ge_1_5x_faster"] == "met" and out["ge_0_95_of_teacher"] == "met"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished run: its teacher is benchmarked, with "
                                                              "accuracy on its test split")
    parser.add_argument("--preset", default="reference-base", help="random-weight preset when no run is given")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--select-rounds", type=int, default=3,
                        help="rounds that choose the best pruned int8 variant (not reported)")
    parser.add_argument("--rounds", type=int, default=5, help="reported rounds, after the selection rounds")
    parser.add_argument("--repeats", type=int, default=3, help="calls per variant per round (their median counts)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rotating round order")
    parser.add_argument("--text", type=int, default=32, help="text tokens of the random batch")
    parser.add_argument("--calibration", type=int, default=10, help="calibration batches of 2 (PTQ)")
    parser.add_argument("--prune", type=float, default=0.5, help="structural ratio for the pruned student")
    parser.add_argument("--no-pruned", action="store_true")
    parser.add_argument("--int4", action="store_true", help="also OpenVINO int4 weights (+ dynamic activations)")
    parser.add_argument("--test-rows", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, help="keep the artifacts here (default: a temporary directory)")
    parser.add_argument("--student", type=Path, help="a trained pruned student checkpoint (default with a run "
                                                     "directory: its stages/distill/student)")
    parser.add_argument("--spin", action="store_true", help="let worker threads busy-wait (each library's "
                                                          "default; see the module docstring)")
    parser.add_argument("--quick", action="store_true",
                        help="smallest run that exercises everything: reference-tiny, 16 text tokens, 2 selection "
                             "+ 3 reported rounds of 1 call, 2 calibration batches, 8 test rows with a run directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.text, args.select_rounds, args.rounds, args.repeats = "reference-tiny", 16, 2, 3, 1
        args.calibration, args.test_rows = 2, min(args.test_rows, 8)
    if args.student is None and args.run_dir is not None and (args.run_dir / "stages/distill/student").is_dir():
        args.student = args.run_dir / "stages/distill/student"

    torch.set_num_threads(args.threads)
    if args.run_dir is not None:
        model, one, example, calib, scoring = run_setup(args.run_dir, args.calibration, args.test_rows)
        source = {"run_dir": str(args.run_dir), "teacher": scoring["teacher"], "test_rows": len(scoring["rows"])}
    else:
        model, one, example, calib, scoring = random_setup(args.preset, args.text, args.calibration)
        source = {"preset": args.preset, "weights": "random (speed only)"}

    def params(m) -> int:
        return sum(p.numel() for p in m.parameters())

    with tempfile.TemporaryDirectory(prefix="dsvl-bench-") as tmp:
        work = args.work or Path(tmp)
        variants = build_variants(model, "", example, calib, work / "base", args.threads, args.int4,
                                  plain_baseline=True)
        pruned_info = None
        if not args.no_pruned and args.student is not None:
            from dsvl_adapt.models.checkpoint import load_checkpoint

            student, _ = load_checkpoint(args.student)
            student.eval()
            pruned_info = {"student": str(args.student), "trained": True, "params_before": params(model),
                           "params_after": params(student)}
            variants += build_variants(student, "pruned/", example, calib, work / "pruned", args.threads,
                                       args.int4)
        elif not args.no_pruned:
            from dsvl_adapt.compress.structural import StructuralPruneConfig, prune_structural

            student = copy.deepcopy(model)
            r = args.prune
            report = prune_structural(student, StructuralPruneConfig(lm_mlp_ratio=r, lm_head_ratio=r,
                                                                     vision_mlp_ratio=r, vision_head_ratio=r),
                                      [example])
            student.eval()
            pruned_info = {"ratio": r, "trained": False, "params_before": report.params_before,
                           "params_after": report.params_after, "dims": report.dims}
            variants += build_variants(student, "pruned/", example, calib, work / "pruned", args.threads,
                                       args.int4)
        by_name = {v.name: v for v in variants}
        tokens = int(one["input_ids"].shape[1])
        candidates = candidates_of(variants)
        selection: dict[str, float] = {}
        best = None
        if candidates and PLAIN_OPENVINO in by_name:
            log(f"selection: {args.select_rounds} rounds x {args.repeats} calls over {len(candidates)} candidates")
            for v in candidates:  # warm-up
                for _ in range(2):
                    v.model.forward(one)
            picked = time_rounds(candidates, one, args.select_rounds, args.repeats, args.seed + 1, warm=False)
            selection = {n: round(statistics.median(t), 2) for n, t in picked.items()}
            best = min(selection, key=selection.__getitem__)
            log(f"chosen on the selection rounds: {best}")
        log(f"timing {len(variants)} variants: {args.rounds} rounds x {args.repeats} calls, batch 1, {tokens} tokens")
        for name, times in time_rounds(variants, one, args.rounds, args.repeats, args.seed).items():
            by_name[name].rounds = times
        scores, answers = {}, {}
        if scoring is not None:
            for v in variants:
                t0 = time.perf_counter()
                scores[v.name], answers[v.name] = accuracy(v, scoring, args.batch_size)
                log(f"accuracy {v.name}: {scores[v.name]} ({time.perf_counter() - t0:.0f} s)")
        vs_teacher = versus_teacher(answers, scoring) if scoring is not None else {}

    result: dict[str, Any] = {
        "source": source,
        "params": params(model),
        "pruned": pruned_info,
        "quick": args.quick,
        "setup": {"threads": args.threads, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                  "onnxruntime_session_config": ORT_SESSION_CONFIG, "select_rounds": args.select_rounds,
                  "rounds": args.rounds, "repeats": args.repeats, "order_seed": args.seed, "batch_size": 1, "tokens": tokens,
                  "timing": "prefill (one forward); rounds in rotating order, each variant --repeats calls a round "
                            "(their median is the round's time); the best pruned int8 variant is chosen on the "
                            "selection rounds, every figure below comes from the reported rounds",
                  "ratios": RATIO_METHOD,
                  "claims": f"'faster': ratio >= {FASTER_AT} with the 95% interval above 1; 'tie': the interval "
                            f"holds 1; a '>= 1.5x' target is 'met' only when the whole interval reaches it",
                  "accuracy": f"{BOOTSTRAP_METHOD}; a claim needs >= 500 test rows (or >= 3 seeds)"},
        "variants": {},
    }
    from importlib import metadata

    from dsvl_adapt.machine import cpu_model

    result["setup"]["cpu"] = cpu_model()
    result["setup"]["machine"] = platform.machine()
    result["versions"] = {name: metadata.version(name) for name in ("torch", "onnxruntime", "openvino", "nncf")}
    for v in variants:
        torch_base, ort_base = by_name["torch-fp32"], by_name.get("onnxruntime-fp32")  # the unpruned baselines
        entry = {"runtime": v.runtime, "size_mib": round(v.size_bytes / 2**20, 1),
                 "p50_ms": round(float(np.percentile(v.samples, 50)), 2),
                 "p90_ms": round(float(np.percentile(v.samples, 90)), 2),
                 "speedup_vs_torch_fp32": speedup(v, torch_base) if v is not torch_base else None,
                 "speedup_vs_onnxruntime_fp32": speedup(v, ort_base) if v is not ort_base else None, **v.info}
        if v.name.startswith("pruned/") and v.name != "pruned/torch-fp32":
            entry["speedup_vs_pruned_torch_fp32"] = speedup(v, by_name.get("pruned/torch-fp32"))
        if v.name in scores:
            entry["metrics"] = scores[v.name]
        if v.name in vs_teacher:
            entry["vs_teacher"] = {k: x for k, x in vs_teacher[v.name].items() if not k.startswith("_")}
        result["variants"][v.name] = entry
    result["acceptance"] = acceptance(result["variants"], by_name, best, selection, vs_teacher)
    print(json.dumps(result, indent=2))
    a = result["acceptance"]
    if a:
        sp = a["speedup_vs_plain_openvino_int8"]
        log(f"acceptance: {a['best_pruned_int8']} vs {PLAIN_OPENVINO}: {sp['ratio']}x {sp['ci95']} ({sp['claim']}; "
            f">= 1.5x: {a['ge_1_5x_faster']}); >= 0.95 of the teacher: {a.get('ge_0_95_of_teacher', 'not measured')}")
    return result


if __name__ == "__main__":
    main()
