"""Compression side by side: the fp32 teacher, each single-library baseline and our structural + int8 pipeline, every
pipeline judged against the baselines that run in ITS runtime.

    PYTHONPATH=. python benchmarks/compression.py [--preset reference-base] [--repeats 8] [--threads 2]
        [--prune 0.5] [--vocab 32000] [--out FILE] [--work DIR] [--no-generate] [--torch-no-cache] [--spin]
        [--no-openvino] [--seed 0] [--quick]

About 10 minutes for reference-base on 2 shared cores, most of it ONNX export and quantization. ``--quick``:
reference-tiny, vocab 1024, 3 forward rounds, no generate - proves the script runs, measures nothing worth quoting.

One random-weight model of ``--preset`` (vocabulary ``--vocab``, default 32000 - a realistic size, which matters
because the tied embedding / lm_head is a large share of a small model) is compressed every way below, each artifact
saved to disk, and all are timed in one process. Per runtime:

=================  ==============================  ===============================================================
runtime            teacher (fp32)                  baselines (one library alone)  |  ours (the pipeline)
=================  ==============================  ===============================================================
PyTorch eager      ``torch-fp32`` (safetensors)    ``torch-pruning`` (``prune_structural`` at ``--prune``, fp32);
                                                   ``torch-int8`` (torch.ao dynamic int8, PyTorch's tutorial call)
                                                   | ``pipeline/torch-int8`` (pruned, then the SDK's torch int8)
ONNX Runtime       ``onnxruntime-fp32`` (split     ``pruned/onnxruntime-fp32`` (the pruned student exported, fp32);
                   export: vision + lm + table)    ``onnxruntime-int8`` (ORT's documented ``quantize_dynamic``)
                                                   | ``pipeline/onnxruntime-int8`` (pruned, SDK int8, default skip
                                                   policy); ``pipeline/onnxruntime-int8-all`` (``skip=[]``)
OpenVINO           ``openvino-fp32`` (the export   ``pruned/openvino-fp32`` (the pruned export converted, OpenVINO
                   converted, OpenVINO defaults)   defaults); ``openvino-int8`` (NNCF ``nncf.quantize`` with its
                                                   defaults on the teacher's IR) | ``pipeline/openvino-int8`` (pruned,
                                                   the SDK's OpenVINO int8: weights int8 + dynamic activations, f32)
=================  ==============================  ===============================================================

The single-library baselines are set up as their libraries document (``benchmarks/_baselines.py``), not with the
SDK's choices. "Ours" is what the SDK does with its defaults. A runtime switch is not a compression gain: each
pipeline's "faster than each baseline" is judged only against the baselines in its own runtime (a pipeline on ONNX
Runtime against torch-pruning run on ONNX Runtime, not in PyTorch eager); cross-runtime figures are informational.

Measured, batch 1, ``<image tokens> + --text`` tokens (reference-base: 64 + 32):

* ``forward``: one forward over image + prompt returning all logits (``use_cache=False``);
* ``generate16``: 16 new tokens, greedy. PyTorch: ``model.generate`` with KV cache
  (``min_new_tokens=max_new_tokens=16``). Graph runtimes: the SDK's ``greedy_generate`` WITHOUT KV cache - the
  exported graphs have no cache inputs, so image features are computed once and the whole growing sequence is re-run
  for each token. That handicaps them; compare runtimes on ``forward``.
* ``generate16_no_cache`` (``--torch-no-cache``, slow): every configuration through ``greedy_generate`` without
  KV cache, like for like across runtimes.

Timing and claims (``benchmarks/_stats.py``): everything warmed up, then rounds in which every configuration runs once,
in an order that rotates (every configuration in every position once per block of rounds, blocks reshuffled with
``--seed``). ``p50_ms`` is the median over rounds. A speed ratio is baseline time / configuration time in the same
round; the JSON gives the geometric mean of those ratios with a 95% paired t interval on the log ratios, and a claim:
"faster" needs a ratio >= 1.10 whose interval lies above 1, an interval holding 1 is a "tie", anything else "no
claim". A ">= 3x faster" target is "met" only when the whole interval reaches 3. Worker threads wait passively
(``OMP_WAIT_POLICY=PASSIVE``, ONNX Runtime ``allow_spinning=0``) unless ``--spin``: busy-waiting threads made PyTorch
8x slower at 2 threads while other tenants ran. Sizes are bytes on disk of each saved artifact directory.
Params: parameters of the architecture (tied embedding counted once; quantization does not change the count).
Weights are random: speed and size only, accuracy is not measured. Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Worker threads that busy-wait (OpenMP's default for PyTorch, ONNX Runtime's default spinning) are a disaster on a
# shared 2-core machine: a PyTorch forward with 2 threads ran 8x slower than with 1 while other tenants ran. Both
# runtimes therefore wait passively unless --spin is given. OpenMP reads this before torch loads.
SPIN = "--spin" in sys.argv[1:]
if not SPIN:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from _baselines import (
    PlainOpenVinoModel,
    nncf_quantize_defaults,
    onnxruntime_dynamic_int8,
    openvino_available,
    openvino_convert,
    save_torch_state,
    torch_dynamic_int8,
)
from _stats import FASTER_AT, RATIO_METHOD, paired_ratio, round_orders, target_check

GENERATE_TOKENS = 16
TEACHER = "torch-fp32"
TEACHER_IN = {"torch": "torch-fp32", "onnxruntime": "onnxruntime-fp32", "openvino": "openvino-fp32"}
BASELINES_IN = {  # the single-library baselines, by the runtime they run in
    "torch": ("torch-pruning", "torch-int8"),
    "onnxruntime": ("pruned/onnxruntime-fp32", "onnxruntime-int8"),
    "openvino": ("pruned/openvino-fp32", "openvino-int8"),
}
PIPELINES = ("pipeline/torch-int8", "pipeline/onnxruntime-int8", "pipeline/onnxruntime-int8-all",
             "pipeline/openvino-int8")
CALIBRATION_BATCHES = 8  # NNCF's calibration samples (random inputs: the weights are random too)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def dir_files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(Path(path).rglob("*")) if p.is_file()}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Config:
    name: str
    description: str
    runtime: str                              # "torch" | "onnxruntime" | "openvino"
    params: int
    artifact: Path
    forward: Callable[[], Any]
    generate: Callable[[], Any]               # torch: HF generate with KV cache; onnxruntime: no cache
    generate_no_cache: Callable[[], Any]
    info: dict[str, Any] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)  # measurement -> ms per round

    @property
    def size_bytes(self) -> int:
        return sum(dir_files(self.artifact).values())


# ------------------------------------------------------------------------------------------------------------ model


def build_teacher(preset: str, vocab: int, text: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Random-weight teacher with a ``vocab``-token vocabulary and one hand-built batch (bos, text, image, text)."""
    from transformers import AutoModelForImageTextToText

    from dsvl_adapt.models.presets import build_config, get_preset

    pad, bos, eos, image = 0, 1, 2, vocab - 1
    config = build_config(preset, vocab_size=vocab, image_token_id=image, pad_token_id=pad, bos_token_id=bos,
                          eos_token_id=eos)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = pad, eos
    p = get_preset(preset)
    n = p.num_image_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab - 1, (1, text + n), generator=g)
    ids[0, 0] = bos
    ids[0, 2:2 + n] = image
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "pixel_values": torch.randn(1, 3, p.image_size, p.image_size, generator=g)}
    return model, batch


def ort_session_options(threads: int, spinning: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ORT's worker threads busy-wait by default; off unless --spin (see OMP_WAIT_POLICY above).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def load_ort(directory: Path, threads: int, spinning: bool):
    import onnxruntime as ort

    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel

    model = OnnxRuntimeModel.load(directory, threads=threads)
    options = ort_session_options(threads, spinning)
    model.sessions = {name: ort.InferenceSession(str(model.report.graph_path(name)), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
                      for name in model.report.graphs}
    return model


def torch_config(name: str, description: str, model: torch.nn.Module, params: int, artifact: Path,
                 batch: dict[str, torch.Tensor], **info: Any) -> Config:
    from dsvl_adapt.runtimes import TorchRuntimeModel

    model.eval()
    runtime = TorchRuntimeModel(model)

    def forward():
        with torch.no_grad():
            return model(**batch, use_cache=False).logits

    def generate_kv():
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=GENERATE_TOKENS, min_new_tokens=GENERATE_TOKENS,
                                 do_sample=False)
        assert out.shape[1] - batch["input_ids"].shape[1] == GENERATE_TOKENS, out.shape
        return out

    def generate_no_cache():
        out = runtime.generate(batch, GENERATE_TOKENS)
        assert out.shape[1] == GENERATE_TOKENS, out.shape
        return out

    return Config(name, description, "torch", params, artifact, forward, generate_kv, generate_no_cache,
                  {"generate16_kind": "HF generate, KV cache", **info})


def graph_config(name: str, description: str, runtime: Any, kind: str, directory: Path, params: int,
                 batch: dict[str, torch.Tensor], **info: Any) -> Config:
    """A configuration served by a graph runtime (ONNX Runtime or OpenVINO): forward, and generate without cache."""

    def generate_no_cache():
        out = runtime.generate(batch, GENERATE_TOKENS)
        assert out.shape[1] == GENERATE_TOKENS, out.shape
        return out

    return Config(name, description, kind, params, directory, lambda: runtime.forward(batch),
                  generate_no_cache, generate_no_cache,
                  {"generate16_kind": "SDK generation loop, " + ("KV cache" if runtime.has_kv_cache
                                                                 else "no KV cache (full graph)"), **info})


def ort_config(name: str, description: str, directory: Path, params: int, batch: dict[str, torch.Tensor],
               threads: int, spinning: bool = False, **info: Any) -> Config:
    return graph_config(name, description, load_ort(directory, threads, spinning), "onnxruntime", directory, params,
                        batch, **info)


def calibration_batches(teacher: torch.nn.Module, batch: dict[str, torch.Tensor], n: int) -> list[dict[str, Any]]:
    """``n`` batches shaped like ``batch`` (same image-token positions), random text and pixels."""
    vocab, image = teacher.config.text_config.vocab_size, teacher.config.image_token_id
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        ids = batch["input_ids"].clone()
        text = ids != image
        text[0, 0] = False  # keep bos
        ids[text] = torch.randint(3, vocab - 1, (int(text.sum()),), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "pixel_values": torch.randn(batch["pixel_values"].shape, generator=g)})
    return out


def build_configs(args: argparse.Namespace, work: Path) -> tuple[list[Config], dict[str, Any]]:
    from dsvl_adapt.compress.quantize import (
        QuantizeConfig,
        quantize_torch_dynamic,
        save_quantized,
    )
    from dsvl_adapt.compress.structural import StructuralPruneConfig, prune_structural
    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.runtimes.onnxruntime import quantize_export as quantize_onnx
    from dsvl_adapt.runtimes.openvino import quantize_openvino

    def step(what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        log(f"{what}: {time.perf_counter() - t0:.1f} s")
        return result

    teacher, batch = step(f"build {args.preset} (vocab {args.vocab})", lambda: build_teacher(args.preset, args.vocab,
                                                                                          args.text))
    example = {k: v for k, v in batch.items()}
    n_teacher = count_params(teacher)
    t_qcfg = QuantizeConfig()  # the SDK's torch dynamic int8, default skip policy
    o_qcfg = QuantizeConfig(backend="onnxruntime", mode="dynamic")
    configs: list[Config] = []
    extra: dict[str, Any] = {}
    openvino_missing = "off (--no-openvino)" if args.no_openvino else openvino_available()
    extra["openvino"] = openvino_missing or "measured"
    calib = calibration_batches(teacher, batch, CALIBRATION_BATCHES) if not openvino_missing else []

    def ort(name: str, description: str, directory: Path, params: int, **info: Any) -> None:
        configs.append(ort_config(name, description, directory, params, batch, args.threads, args.spin, **info))

    def plain_ov(name: str, description: str, directory: Path, params: int, **info: Any) -> None:
        runtime = PlainOpenVinoModel(directory, threads=args.threads)
        configs.append(graph_config(name, description, runtime, "openvino", directory, params, batch,
                                    effective_properties=runtime.properties, **info))

    # teacher, in each runtime
    step("save teacher (safetensors)", lambda: teacher.save_pretrained(work / "torch-fp32"))
    configs.append(torch_config(TEACHER, "fp32 teacher, PyTorch eager", teacher, n_teacher, work / "torch-fp32",
                                batch))
    rep = step("export teacher to ONNX (split)", lambda: export_onnx(teacher, work / "ort-fp32", example, split=True,
                                                                     threads=args.threads))
    ort("onnxruntime-fp32", "fp32 teacher, ONNX Runtime", work / "ort-fp32", n_teacher,
        max_abs_diff_vs_torch=max(rep.max_abs_diff.values()))
    if not openvino_missing:
        step("OpenVINO IR (teacher, OpenVINO defaults)", lambda: openvino_convert(work / "ort-fp32", work / "ov-fp32"))
        plain_ov("openvino-fp32", "fp32 teacher, OpenVINO (convert_model + save_model + compile_model defaults)",
                 work / "ov-fp32", n_teacher)

    # single-library int8 baselines, each as its library documents it
    t_int8 = step("torch.ao quantize_dynamic (teacher, PyTorch tutorial defaults)", lambda: torch_dynamic_int8(teacher))
    step("save torch int8 (torch.save state_dict)", lambda: save_torch_state(t_int8, work / "torch-int8"))
    configs.append(torch_config("torch-int8", "torch.ao dynamic int8 alone: quantize_dynamic(model, {nn.Linear}, "
                                              "qint8) on the teacher, every Linear", t_int8, n_teacher,
                                work / "torch-int8", batch))
    step("ONNX Runtime quantize_dynamic (teacher, documented defaults)",
         lambda: onnxruntime_dynamic_int8(work / "ort-fp32", work / "ort-int8"))
    ort("onnxruntime-int8", "ONNX Runtime int8 alone: quant_pre_process + quantize_dynamic(weight_type=QInt8) with "
                            "its defaults, on the teacher export", work / "ort-int8", n_teacher)
    if not openvino_missing:
        how = step("nncf.quantize defaults (teacher IR)", lambda: nncf_quantize_defaults(
            work / "ov-fp32", work / "ov-int8", calib))
        plain_ov("openvino-int8", "OpenVINO + NNCF alone: nncf.quantize with its defaults on the teacher's IR, "
                                  "compiled with OpenVINO defaults", work / "ov-int8", n_teacher, nncf=how)

    # torch-pruning alone, in each runtime
    r = args.prune
    student = copy.deepcopy(teacher)
    prune_cfg = StructuralPruneConfig(lm_mlp_ratio=r, lm_head_ratio=r, vision_mlp_ratio=r)
    report = step(f"torch-pruning {r:.0%}", lambda: prune_structural(student, prune_cfg, [example]))
    student.eval()
    n_student = count_params(student)
    extra["pruning"] = {"config": prune_cfg.model_dump(include={"lm_mlp_ratio", "lm_head_ratio", "vision_mlp_ratio",
                                                                "importance", "round_to"}),
                        "params_before": report.params_before, "params_after": report.params_after,
                        "dims": {k: list(v) for k, v in report.dims.items() if v[0] != v[1]},
                        "seconds": round(report.seconds, 2)}
    step("save pruned (safetensors)", lambda: student.save_pretrained(work / "pruned-fp32"))
    configs.append(torch_config("torch-pruning", f"torch-pruning {r:.0%} alone, PyTorch eager fp32", student,
                                n_student, work / "pruned-fp32", batch))
    rep = step("export pruned to ONNX (split)", lambda: export_onnx(student, work / "pruned-ort-fp32", example,
                                                                    split=True, threads=args.threads))
    ort("pruned/onnxruntime-fp32", f"torch-pruning {r:.0%} alone, exported, ONNX Runtime fp32",
        work / "pruned-ort-fp32", n_student, max_abs_diff_vs_torch=max(rep.max_abs_diff.values()))
    if not openvino_missing:
        step("OpenVINO IR (pruned, OpenVINO defaults)",
             lambda: openvino_convert(work / "pruned-ort-fp32", work / "pruned-ov-fp32"))
        plain_ov("pruned/openvino-fp32", f"torch-pruning {r:.0%} alone, exported, OpenVINO defaults",
                 work / "pruned-ov-fp32", n_student)

    # our pipeline: the pruned student, then the SDK's int8, in each runtime
    s_int8 = step("torch.ao int8 (pruned, SDK)", lambda: quantize_torch_dynamic(student, t_qcfg))
    step("save pipeline torch int8", lambda: save_quantized(s_int8, work / "pipeline-torch-int8", t_qcfg))
    configs.append(torch_config("pipeline/torch-int8", f"ours: structural {r:.0%} + the SDK's torch.ao dynamic int8",
                                s_int8, n_student, work / "pipeline-torch-int8", batch))
    q = step("ONNX Runtime int8 (pruned, SDK)", lambda: quantize_onnx(work / "pruned-ort-fp32", work /
                                                                      "pipeline-ort-int8", o_qcfg, [example],
                                                                      threads=args.threads))
    ort("pipeline/onnxruntime-int8", f"ours: structural {r:.0%} + the SDK's ONNX Runtime dynamic int8",
        work / "pipeline-ort-int8", n_student, top1_agreement_vs_fp32_export=q.top1_agreement)
    all_qcfg = QuantizeConfig(backend="onnxruntime", mode="dynamic", skip=[])
    q = step("ONNX Runtime int8, vision too (pruned, SDK)", lambda: quantize_onnx(
        work / "pruned-ort-fp32", work / "pipeline-ort-int8-all", all_qcfg, [example], threads=args.threads))
    ort("pipeline/onnxruntime-int8-all",
        f"ours: structural {r:.0%} + the SDK's ONNX Runtime dynamic int8 of every linear layer (skip=[])",
        work / "pipeline-ort-int8-all", n_student, top1_agreement_vs_fp32_export=q.top1_agreement)
    if not openvino_missing:
        from dsvl_adapt.runtimes.openvino import OpenVinoModel

        v_qcfg = QuantizeConfig(backend="openvino")
        q = step("OpenVINO int8 (pruned, SDK defaults)", lambda: quantize_openvino(
            work / "pruned-ort-fp32", work / "pipeline-ov-int8", v_qcfg, [example], threads=args.threads))
        runtime = OpenVinoModel.load(work / "pipeline-ov-int8", threads=args.threads)
        configs.append(graph_config("pipeline/openvino-int8", f"ours: structural {r:.0%} + the SDK's OpenVINO int8 "
                                    f"({v_qcfg.mode}, precision pinned {q.precision})", runtime, "openvino",
                                    work / "pipeline-ov-int8", n_student, batch, top1_agreement_vs_fp32_ir=
                                    q.top1_agreement, effective_properties=runtime.properties))
    extra["batch_tokens"] = {"total": int(batch["input_ids"].shape[1]),
                             "image": int((batch["input_ids"] == teacher.config.image_token_id).sum())}
    return configs, extra


# ------------------------------------------------------------------------------------------------------------ timing


def time_rounds(configs: list[Config], measurement: str, rounds: int, seed: int) -> None:
    def fn(c: Config) -> Callable[[], Any]:
        return {"forward": c.forward, "generate16": c.generate,
                "generate16_no_cache": c.generate_no_cache}[measurement]

    by = {c.name: c for c in configs}
    for c in configs:  # warm-up: first-call allocations, lazy kernel selection
        for _ in range(2 if measurement == "forward" else 1):
            fn(c)()
        c.times[measurement] = []
    t0 = time.perf_counter()
    for order in round_orders(list(by), rounds, seed):
        for name in order:
            start = time.perf_counter()
            fn(by[name])()
            by[name].times[measurement].append((time.perf_counter() - start) * 1000.0)
    log(f"{measurement}: {rounds} rounds x {len(configs)} configurations in {time.perf_counter() - t0:.0f} s")


def ratio(config: Config, baseline: Config, measurement: str) -> dict[str, Any] | None:
    """``baseline / config`` time over the paired rounds, with its interval and claim."""
    a, b = config.times.get(measurement), baseline.times.get(measurement)
    if not a or not b:
        return None
    return paired_ratio(b, a).to_json()


# ------------------------------------------------------------------------------------------------------------ main


def verdict(name: str, by: dict[str, Config], sizes: dict[str, int]) -> dict[str, Any]:
    """The acceptance check of one pipeline: >= 4x smaller and >= 3x faster than the fp32 teacher in PyTorch eager,
    and faster than each single-library baseline IN ITS OWN RUNTIME."""
    c = by[name]
    smaller = sizes[TEACHER] / sizes[name]
    estimate = paired_ratio(by[TEACHER].times["forward"], c.times["forward"])
    vs_teacher = estimate.to_json()
    vs_teacher["ge_3x"] = target_check(estimate.ratio, estimate.low, estimate.high, 3.0)
    baselines = {n: ratio(c, by[n], "forward") for n in BASELINES_IN[c.runtime] if n in by}
    same_teacher = TEACHER_IN[c.runtime]
    v: dict[str, Any] = {
        "runtime": c.runtime,
        "x_smaller_than_teacher": round(smaller, 2), "ge_4x_smaller": smaller >= 4.0,
        "forward_vs_teacher_torch_fp32": vs_teacher,
        f"forward_vs_teacher_in_{c.runtime}": ratio(c, by[same_teacher], "forward") if same_teacher in by else None,
        "forward_vs_each_baseline_in_its_runtime": baselines,
        "faster_than_each_baseline": bool(baselines) and all(b["claim"] == "faster" for b in baselines.values()),
    }
    v["all_hold"] = bool(v["ge_4x_smaller"] and vs_teacher["ge_3x"] == "met" and v["faster_than_each_baseline"])
    return v


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="reference-base")
    parser.add_argument("--repeats", type=int, default=8,
                        help="timed rounds of forward (each configuration once per round, rotating order); "
                             "generate gets max(3, repeats // 2) rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prune", type=float, default=0.5, help="structural ratio (LM MLP, LM heads, vision MLP)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--text", type=int, default=32, help="text tokens in the batch (besides the image tokens)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rotating round order")
    parser.add_argument("--spin", action="store_true", help="keep the runtimes' busy-waiting worker threads "
                                                            "(OpenMP / ONNX Runtime defaults; good only on idle cores)")
    parser.add_argument("--no-generate", action="store_true", help="forward only")
    parser.add_argument("--no-openvino", action="store_true", help="leave out the OpenVINO configurations")
    parser.add_argument("--torch-no-cache", action="store_true",
                        help="also time PyTorch generate without KV cache (like for like with ONNX Runtime; slow)")
    parser.add_argument("--quick", action="store_true",
                        help="smallest run that exercises everything: reference-tiny, vocab 1024, 3 forward rounds, "
                             "no generate (proves the script runs; its figures are not worth quoting)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--work", type=Path, help="keep the artifacts here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.vocab, args.repeats, args.no_generate, args.text = "reference-tiny", 1024, 3, True, 16

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsvl-compress-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        configs, extra = build_configs(args, work)
        t_built = time.perf_counter()
        measurements = ["forward"] + ([] if args.no_generate else ["generate16"])
        if args.torch_no_cache and not args.no_generate:
            measurements.append("generate16_no_cache")
        for m in measurements:
            time_rounds(configs, m, args.repeats if m == "forward" else max(3, args.repeats // 2), args.seed)
        sizes = {c.name: c.size_bytes for c in configs}
        files = {c.name: {k: v for k, v in dir_files(c.artifact).items() if v >= 2**20} for c in configs}

    by = {c.name: c for c in configs}
    teacher = by[TEACHER]
    out_configs: dict[str, Any] = {}
    for c in configs:
        same_teacher = by.get(TEACHER_IN[c.runtime])
        entry: dict[str, Any] = {
            "description": c.description, "runtime": c.runtime, "params": c.params, "size_bytes": sizes[c.name],
            "size_mib": round(sizes[c.name] / 2**20, 1), "artifact_files_over_1mib": files[c.name],
            "p50_ms": {m: round(statistics.median(t), 2) for m, t in c.times.items()},
            "ratio_to_teacher": {
                "params": round(c.params / teacher.params, 3),
                "size": round(sizes[c.name] / sizes[TEACHER], 3),
                "x_smaller": round(sizes[TEACHER] / sizes[c.name], 2),
            },
            "speedup_vs_teacher_torch_fp32": {m: ratio(c, teacher, m) for m in c.times},
            "speedup_vs_teacher_same_runtime": (None if same_teacher is None or same_teacher is c else
                                                {m: ratio(c, same_teacher, m) for m in c.times
                                                 if m in same_teacher.times}),
            **c.info,
        }
        out_configs[c.name] = entry

    per_pipeline = {name: verdict(name, by, sizes) for name in PIPELINES if name in by}
    acceptance = {
        "criteria": f">= 4x smaller and >= 3x faster (forward) than the fp32 teacher in PyTorch eager - 'met' only "
                    f"when the whole 95% interval reaches 3 - and faster than each single-library baseline run in the "
                    f"pipeline's own runtime: a ratio >= {FASTER_AT} whose 95% interval lies above 1",
        "met_by": [name for name, v in per_pipeline.items() if v["all_hold"]],
        "pipelines": per_pipeline,
    }

    from importlib.metadata import PackageNotFoundError, version

    from dsvl_adapt.machine import cpu_model

    versions = {}
    for dist in ("torch", "transformers", "torch-pruning", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    result = {
        "benchmark": "compression",
        "preset": args.preset,
        "quick": args.quick,
        "weights": "random: speed and size only, accuracy not measured (top1_agreement fields compare random "
                   "models and say little)",
        "setup": {"threads": args.threads, "batch_size": 1, "tokens": extra["batch_tokens"], "vocab": args.vocab,
                  "forward_rounds": args.repeats,
                  "generate_rounds": None if args.no_generate else max(3, args.repeats // 2),
                  "order_seed": args.seed, "openvino": extra["openvino"],
                  "cpu": cpu_model(), "versions": versions, "busy_wait_threads": args.spin,
                  "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                  "build_seconds": round(t_built - t_start, 1),
                  "total_seconds": round(time.perf_counter() - t_start, 1)},
        "method": {
            "timing": "rounds: every configuration once per round, in rotating order (a Latin square per block of "
                      "rounds, blocks reshuffled with the seed); p50 = median over rounds",
            "ratios": f"baseline time / configuration time in the same round: {RATIO_METHOD}",
            "claims": f"'faster': ratio >= {FASTER_AT} with the interval above 1; 'slower': the mirror image; "
                      f"'tie': the interval holds 1; otherwise 'no claim'",
            "baselines": "single-library baselines as their libraries document them (benchmarks/_baselines.py); "
                         "each pipeline is judged against the baselines in its own runtime",
            "forward": "one forward, batch 1, all logits, use_cache=False",
            "generate16": "16 new tokens, greedy. PyTorch: HF generate with KV cache, min_new_tokens=max_new_tokens"
                          "=16. ONNX Runtime / OpenVINO: the SDK's greedy_generate WITHOUT KV cache (the graphs have "
                          "none): image features once, the whole growing sequence re-run per token - so their "
                          "generate ratios understate them; compare runtimes on forward",
            "generate16_no_cache": "(--torch-no-cache) every runtime through greedy_generate without KV cache: "
                                   "like for like across runtimes",
            "size": "bytes on disk of the saved artifact directory (safetensors for fp32/pruned, torch.save for "
                    "torch.ao int8 alone, save_quantized for the SDK's torch int8, the export / IR directory for the "
                    "graph runtimes; OpenVINO's default save stores fp32 weights as fp16)",
            "params": "architecture parameters, tied embedding once; quantization does not change the count",
            "quantization": "ours: the SDK's defaults - dynamic int8 per channel, vision tower and aligner fp32, LM "
                            "and lm_head int8 (-all: every linear layer int8), token table int8 per row on the graph "
                            "runtimes; OpenVINO: int8 weights + dynamic activations, precision pinned f32. Baselines: "
                            "their libraries' documented defaults (every Linear / MatMul, per-tensor scales; NNCF "
                            "PTQ; OpenVINO's own precision choice)",
        },
        "pruning": extra["pruning"],
        "configs": out_configs,
        "acceptance": acceptance,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    for name, v in per_pipeline.items():
        baselines = ", ".join(f"{n} {b['ratio']}x {b['ci95']} {b['claim']}"
                              for n, b in v["forward_vs_each_baseline_in_its_runtime"].items())
        t = v["forward_vs_teacher_torch_fp32"]
        log(f"{name}: {v['x_smaller_than_teacher']}x smaller; vs teacher (torch) {t['ratio']}x {t['ci95']} "
            f"(>= 3x: {t['ge_3x']}); vs baselines in {v['runtime']}: {baselines}")
    return result


if __name__ == "__main__":
    main()
