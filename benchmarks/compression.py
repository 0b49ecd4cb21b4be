"""Compression side by side: the fp32 teacher, each single-library baseline and our structural + int8 pipeline.

    PYTHONPATH=. python benchmarks/compression.py [--preset reference-base] [--repeats 8] [--threads 2]
        [--prune 0.5] [--vocab 32000] [--out FILE] [--work DIR] [--no-generate] [--torch-no-cache] [--spin]

About 6-8 minutes for reference-base on 2 shared cores, most of it ONNX export and quantization.

One random-weight model of ``--preset`` (vocabulary ``--vocab``, default 32000 - a realistic size, which matters
because the tied embedding / lm_head is a large share of a small model) is compressed every way below, each artifact
saved to disk, and all are timed in one process:

==========================  =====================================================================================
``torch-fp32``              the teacher, PyTorch eager fp32 (``save_pretrained``: safetensors)      - the baseline
``onnxruntime-fp32``        the teacher exported (split graphs: vision.onnx + lm.onnx + embed_tokens.npy) and run
                            in ONNX Runtime fp32 - the second baseline (PyTorch fp32 matmuls take MKL's generic
                            path on AMD CPUs, which flatters every speedup quoted over eager PyTorch)
``torch-pruning``           torch-pruning alone: ``prune_structural`` at ``--prune`` of the LM MLP channels, LM
                            query heads and vision MLP channels (magnitude), PyTorch eager fp32 (safetensors)
``torch-int8``              torch.ao dynamic int8 alone (``quantize_torch_dynamic``, ``save_quantized``)
``onnxruntime-int8``        ONNX Runtime dynamic int8 alone (``quantize_onnx``, per channel, on the teacher export)
``pipeline/torch-int8``     ours: the pruned student, then torch.ao dynamic int8
``pipeline/onnxruntime-int8``  ours: the pruned student exported, then ONNX Runtime dynamic int8
``pipeline/onnxruntime-int8-all``  the same with ``skip=[]``: the vision tower and aligner int8 too
``pruned/onnxruntime-fp32`` informational: the pruned student's fp32 export (the source of the line above)
==========================  =====================================================================================

Every int8 variant but ``-all`` uses the library's default skip policy (vision tower and aligner stay fp32; the LM
and its ``lm_head`` are quantized). The token-embedding table: int8 per row in the ONNX Runtime int8 artifacts (the
``quantize.embedding=auto`` default of split exports, ``dsvl_adapt.runtimes.embedding``), fp32 in PyTorch (torch.ao
quantizes ``nn.Linear`` only).

Measured, batch 1, ``<image tokens> + --text`` tokens (reference-base: 64 + 32):

* ``forward``: one forward over image + prompt returning all logits (``use_cache=False``);
* ``generate16``: 16 new tokens, greedy. PyTorch: ``model.generate`` with KV cache
  (``min_new_tokens=max_new_tokens=16``). ONNX Runtime: ``OnnxRuntimeModel.generate`` (the SDK's ``greedy_generate``)
  WITHOUT KV cache - the exported graphs have no cache inputs, so image features are computed once and the whole
  growing sequence is re-run for each token. That handicaps ONNX Runtime; compare runtimes on ``forward``.
* ``generate16_no_cache`` (``--torch-no-cache``, slow): every configuration through ``greedy_generate`` without
  KV cache (``TorchRuntimeModel`` / ``OnnxRuntimeModel``), like for like across runtimes.

Timing: everything warmed up, then rounds in which every configuration runs once in turn (A B C ... A B C, the
start rotating each round), so drift from other tenants hits all alike. ``p50_ms`` is the median over rounds;
``speedup_vs_*`` is the median over rounds of the paired ratio (baseline time / configuration time in the same
round), which is what to quote on a shared machine. Worker threads wait passively (``OMP_WAIT_POLICY=PASSIVE``,
ONNX Runtime ``allow_spinning=0``) unless ``--spin``: busy-waiting threads made PyTorch 8x slower at 2 threads
while other tenants ran. Sizes are bytes on disk of each saved artifact directory.
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

GENERATE_TOKENS = 16
TEACHER, ORT_FP32 = "torch-fp32", "onnxruntime-fp32"
BASELINES = ("torch-pruning", "torch-int8", "onnxruntime-int8")  # the single-library baselines
PIPELINES = ("pipeline/torch-int8", "pipeline/onnxruntime-int8", "pipeline/onnxruntime-int8-all")


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
    runtime: str                              # "torch" | "onnxruntime"
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


def ort_config(name: str, description: str, directory: Path, params: int, batch: dict[str, torch.Tensor],
               threads: int, spinning: bool = False, **info: Any) -> Config:
    runtime = load_ort(directory, threads, spinning)

    def generate_no_cache():
        out = runtime.generate(batch, GENERATE_TOKENS)
        assert out.shape[1] == GENERATE_TOKENS, out.shape
        return out

    return Config(name, description, "onnxruntime", params, directory, lambda: runtime.forward(batch),
                  generate_no_cache, generate_no_cache, {"generate16_kind": "greedy_generate, no KV cache", **info})


def build_configs(args: argparse.Namespace, work: Path) -> tuple[list[Config], dict[str, Any]]:
    from dsvl_adapt.compress.quantize import (
        QuantizeConfig,
        quantize_onnx,
        quantize_torch_dynamic,
        save_quantized,
    )
    from dsvl_adapt.compress.structural import StructuralPruneConfig, prune_structural
    from dsvl_adapt.export.onnx import export_onnx

    def step(what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        log(f"{what}: {time.perf_counter() - t0:.1f} s")
        return result

    teacher, batch = step(f"build {args.preset} (vocab {args.vocab})", lambda: build_teacher(args.preset, args.vocab,
                                                                                          args.text))
    example = {k: v for k, v in batch.items()}
    n_teacher = count_params(teacher)
    t_qcfg = QuantizeConfig()  # torch dynamic int8, default skip policy
    o_qcfg = QuantizeConfig(backend="onnxruntime", mode="dynamic")
    configs: list[Config] = []
    extra: dict[str, Any] = {}

    # teacher
    step("save teacher (safetensors)", lambda: teacher.save_pretrained(work / "torch-fp32"))
    configs.append(torch_config(TEACHER, "fp32 teacher, PyTorch eager", teacher, n_teacher, work / "torch-fp32",
                                batch))
    rep = step("export teacher to ONNX (split)", lambda: export_onnx(teacher, work / "ort-fp32", example, split=True,
                                                                     threads=args.threads))
    configs.append(ort_config(ORT_FP32, "fp32 teacher, ONNX Runtime", work / "ort-fp32", n_teacher, batch,
                              args.threads, args.spin,
                              max_abs_diff_vs_torch=max(rep.max_abs_diff.values())))

    # single-library baselines
    t_int8 = step("torch.ao int8 (teacher)", lambda: quantize_torch_dynamic(teacher, t_qcfg))
    step("save torch int8", lambda: save_quantized(t_int8, work / "torch-int8", t_qcfg))
    configs.append(torch_config("torch-int8", "torch.ao dynamic int8 alone (teacher)", t_int8, n_teacher,
                                work / "torch-int8", batch))
    q = step("ONNX Runtime int8 (teacher)", lambda: quantize_onnx(work / "ort-fp32", work / "ort-int8", o_qcfg,
                                                                  [example], threads=args.threads))
    configs.append(ort_config("onnxruntime-int8", "ONNX Runtime dynamic int8 alone (teacher export)",
                              work / "ort-int8", n_teacher, batch, args.threads, args.spin,
                              top1_agreement_vs_fp32_export=q.top1_agreement))

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

    # our pipeline: pruned student -> int8, both runtimes
    s_int8 = step("torch.ao int8 (pruned)", lambda: quantize_torch_dynamic(student, t_qcfg))
    step("save pipeline torch int8", lambda: save_quantized(s_int8, work / "pipeline-torch-int8", t_qcfg))
    configs.append(torch_config("pipeline/torch-int8", f"ours: structural {r:.0%} + torch.ao dynamic int8", s_int8,
                                n_student, work / "pipeline-torch-int8", batch))
    rep = step("export pruned to ONNX (split)", lambda: export_onnx(student, work / "pruned-ort-fp32", example,
                                                                    split=True, threads=args.threads))
    q = step("ONNX Runtime int8 (pruned)", lambda: quantize_onnx(work / "pruned-ort-fp32", work /
                                                                 "pipeline-ort-int8", o_qcfg, [example],
                                                                 threads=args.threads))
    configs.append(ort_config("pipeline/onnxruntime-int8",
                              f"ours: structural {r:.0%} + ONNX Runtime dynamic int8", work / "pipeline-ort-int8",
                              n_student, batch, args.threads, args.spin,
                              top1_agreement_vs_fp32_export=q.top1_agreement))
    all_qcfg = QuantizeConfig(backend="onnxruntime", mode="dynamic", skip=[])
    q = step("ONNX Runtime int8, vision too (pruned)", lambda: quantize_onnx(
        work / "pruned-ort-fp32", work / "pipeline-ort-int8-all", all_qcfg, [example], threads=args.threads))
    configs.append(ort_config("pipeline/onnxruntime-int8-all",
                              f"ours: structural {r:.0%} + ONNX Runtime dynamic int8 of every linear layer (skip=[])",
                              work / "pipeline-ort-int8-all", n_student, batch, args.threads, args.spin,
                              top1_agreement_vs_fp32_export=q.top1_agreement))
    configs.append(ort_config("pruned/onnxruntime-fp32", f"informational: structural {r:.0%}, ONNX Runtime fp32",
                              work / "pruned-ort-fp32", n_student, batch, args.threads, args.spin,
                              max_abs_diff_vs_torch=max(rep.max_abs_diff.values())))
    extra["batch_tokens"] = {"total": int(batch["input_ids"].shape[1]),
                             "image": int((batch["input_ids"] == teacher.config.image_token_id).sum())}
    return configs, extra


# ------------------------------------------------------------------------------------------------------------ timing


def time_rounds(configs: list[Config], measurement: str, rounds: int) -> None:
    def fn(c: Config) -> Callable[[], Any] | None:
        return {"forward": c.forward, "generate16": c.generate,
                "generate16_no_cache": c.generate_no_cache}[measurement]

    active = [c for c in configs if fn(c) is not None]
    for c in active:  # warm-up: first-call allocations, lazy kernel selection
        for _ in range(2 if measurement == "forward" else 1):
            fn(c)()
        c.times[measurement] = []
    t0 = time.perf_counter()
    for r in range(rounds):
        order = active[r % len(active):] + active[:r % len(active)]
        for c in order:
            start = time.perf_counter()
            fn(c)()
            c.times[measurement].append((time.perf_counter() - start) * 1000.0)
    log(f"{measurement}: {rounds} rounds x {len(active)} configurations in {time.perf_counter() - t0:.0f} s")


def paired(config: Config, baseline: Config, measurement: str) -> float | None:
    a, b = config.times.get(measurement), baseline.times.get(measurement)
    if not a or not b:
        return None
    return round(statistics.median(y / x for x, y in zip(a, b, strict=True)), 3)


# ------------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="reference-base")
    parser.add_argument("--repeats", type=int, default=8,
                        help="timed rounds of forward (each configuration once per round); generate gets "
                             "max(3, repeats // 2) rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prune", type=float, default=0.5, help="structural ratio (LM MLP, LM heads, vision MLP)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--text", type=int, default=32, help="text tokens in the batch (besides the image tokens)")
    parser.add_argument("--spin", action="store_true", help="keep the runtimes' busy-waiting worker threads "
                                                            "(OpenMP / ONNX Runtime defaults; good only on idle cores)")
    parser.add_argument("--no-generate", action="store_true", help="forward only")
    parser.add_argument("--torch-no-cache", action="store_true",
                        help="also time PyTorch generate without KV cache (like for like with ONNX Runtime; slow)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--work", type=Path, help="keep the artifacts here (default: a temporary directory)")
    args = parser.parse_args(argv)

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
            time_rounds(configs, m, args.repeats if m == "forward" else max(3, args.repeats // 2))
        sizes = {c.name: c.size_bytes for c in configs}
        files = {c.name: {k: v for k, v in dir_files(c.artifact).items() if v >= 2**20} for c in configs}

    by = {c.name: c for c in configs}
    teacher, ort_fp32 = by[TEACHER], by[ORT_FP32]
    out_configs: dict[str, Any] = {}
    for c in configs:
        entry: dict[str, Any] = {
            "description": c.description, "runtime": c.runtime, "params": c.params, "size_bytes": sizes[c.name],
            "size_mib": round(sizes[c.name] / 2**20, 1), "artifact_files_over_1mib": files[c.name],
            "p50_ms": {m: round(statistics.median(t), 1) for m, t in c.times.items()},
            "ratio_to_teacher": {
                "params": round(c.params / teacher.params, 3),
                "size": round(sizes[c.name] / sizes[TEACHER], 3),
                "x_smaller": round(sizes[TEACHER] / sizes[c.name], 2),
                **{f"speedup_{m}": paired(c, teacher, m) for m in c.times},
            },
            "speedup_vs_onnxruntime_fp32": {m: paired(c, ort_fp32, m) for m in c.times if m in ort_fp32.times},
            **c.info,
        }
        out_configs[c.name] = entry

    def verdict(name: str) -> dict[str, Any]:
        smaller = sizes[TEACHER] / sizes[name]
        faster = paired(by[name], teacher, "forward")
        vs_baselines = {n: paired(by[name], by[n], "forward") for n in BASELINES}
        v = {"x_smaller_than_teacher": round(smaller, 2), "ge_4x_smaller": smaller >= 4.0,
             "forward_speedup_vs_teacher": faster, "ge_3x_faster": faster is not None and faster >= 3.0,
             "forward_speedup_vs_each_baseline": vs_baselines,
             "faster_than_each_baseline": all(x is not None and x > 1.0 for x in vs_baselines.values()),
             "forward_speedup_vs_onnxruntime_fp32": paired(by[name], ort_fp32, "forward")}
        v["all_hold"] = bool(v["ge_4x_smaller"] and v["ge_3x_faster"] and v["faster_than_each_baseline"])
        return v

    per_pipeline = {name: verdict(name) for name in PIPELINES}
    acceptance = {
        "criteria": ">= 4x smaller and >= 3x faster (p50 forward) than the fp32 teacher in PyTorch eager, and faster "
                    "than each single-library baseline",
        "met_by": [name for name, v in per_pipeline.items() if v["all_hold"]],
        "pipelines": per_pipeline,
    }

    from importlib.metadata import PackageNotFoundError, version

    from dsvl_adapt.score.timing import cpu_model

    versions = {}
    for dist in ("torch", "transformers", "torch-pruning", "onnx", "onnxruntime"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    result = {
        "benchmark": "compression",
        "preset": args.preset,
        "weights": "random: speed and size only, accuracy not measured (top1_agreement fields compare random "
                   "models and say little)",
        "setup": {"threads": args.threads, "batch_size": 1, "tokens": extra["batch_tokens"], "vocab": args.vocab,
                  "forward_rounds": args.repeats,
                  "generate_rounds": None if args.no_generate else max(3, args.repeats // 2),
                  "cpu": cpu_model(), "versions": versions, "busy_wait_threads": args.spin, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                  "build_seconds": round(t_built - t_start, 1),
                  "total_seconds": round(time.perf_counter() - t_start, 1)},
        "method": {
            "timing": "rounds: every configuration once per round in rotating order; p50 = median over rounds; "
                      "speedups = median over rounds of paired ratios (baseline / configuration, same round)",
            "forward": "one forward, batch 1, all logits, use_cache=False",
            "generate16": "16 new tokens, greedy. PyTorch: HF generate with KV cache, min_new_tokens=max_new_tokens"
                          "=16. ONNX Runtime: the SDK's greedy_generate WITHOUT KV cache (the graphs have none): "
                          "image features once, the whole growing sequence re-run per token - so ONNX Runtime's "
                          "generate ratios understate it; compare runtimes on forward",
            "generate16_no_cache": "(--torch-no-cache) every runtime through greedy_generate without KV cache: "
                                   "like for like across runtimes",
            "size": "bytes on disk of the saved artifact directory (safetensors for fp32/pruned, save_quantized for "
                    "torch int8, the export directory for ONNX Runtime)",
            "params": "architecture parameters, tied embedding once; quantization does not change the count",
            "quantization": "dynamic int8, per channel. Default skip policy: vision tower and aligner fp32, LM and "
                            "lm_head int8 (-all: every linear layer int8). Token-embedding table: int8 per row in the "
                            "ONNX Runtime artifacts, fp32 in PyTorch (torch.ao quantizes nn.Linear only)",
        },
        "pruning": extra["pruning"],
        "configs": out_configs,
        "acceptance": acceptance,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
