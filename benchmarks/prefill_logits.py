"""Prefill with the head on the last position only, against the head on every position, side by side on one
artifact: the time and logits memory generation saves since the KV-cache LM graph takes ``logits_positions``.

    PYTHONPATH=. python benchmarks/prefill_logits.py                 # deepseek-vl-1.3b dimensions, random weights
    PYTHONPATH=. python benchmarks/prefill_logits.py --quick         # reference-tiny: proves it runs
    options: --preset P --prompt 32 --prune 0.5 --threads 2 --rounds 8 --seed 0 --work DIR --out FILE

Setup as ``generation.py``'s student (random weights, the published vocabulary of 102,400 at the 1.3B dimensions,
one request of the preset's image tokens + ``--prompt`` text tokens): ``prune_structural`` at ``--prune``, exported
split with a KV cache, quantized by the SDK's ONNX Runtime int8 (dynamic, int8 token table), loaded once. Both
configurations run that one session:

* ``last-position`` - ``prefill``, what generation and serving call: ``logits_positions`` = the last position, so the
  head multiplies one row per request;
* ``every-position`` - ``forward`` (image encoding + the LM over the prompt with an empty past, every position's
  logits): exactly the prefill's work before the graph took ``logits_positions``, when the head ran on every position
  and the runtime kept the last row.

Rounds rotate the order (``_stats.round_orders``); the ratio is every-position time / last-position time per round
(``_stats.paired_ratio``), > 1 when keeping only the last position is faster. ``logits_bytes``: the float32 logits
each returns for the request (exact). Worker threads wait passively unless ``--spin`` (``benchmarks/README.md``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SPIN = "--spin" in sys.argv[1:]
if not SPIN:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stats import paired_ratio, round_orders  # noqa: E402

from dsvl_adapt.machine import cpu_description  # noqa: E402

LAST, EVERY = "last-position", "every-position"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build(preset: str, prompt: int, prune: float, threads: int, work: Path) -> tuple[Any, dict[str, Any], int]:
    """The pruned int8 student of ``generation.py`` (built once per ``--work``), its request and its parameters."""
    from generation import setup

    from dsvl_adapt.compress.structural import StructuralPruneConfig, prune_structural
    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.quantization import QuantizeConfig
    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel, quantize_export

    student_dir, int8_dir = work / "student-onnx", work / "student-ort-int8"
    record_file = work / "build.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if record.get("settings") != [preset, prompt, prune]:
        started = time.perf_counter()
        student, _, calib = setup(preset, prompt)
        report = prune_structural(student, StructuralPruneConfig(
            lm_mlp_ratio=prune, lm_head_ratio=prune, vision_mlp_ratio=prune, vision_head_ratio=prune), [calib[0]])
        student.eval()
        export_onnx(student, student_dir, calib[0], split=True, threads=threads, release_model=True)
        del student
        quantize_export(student_dir, int8_dir, QuantizeConfig(backend="onnxruntime", mode="dynamic",
                                                              embedding="int8"), calib[:1], threads=threads)
        record = {"settings": [preset, prompt, prune], "params": int(report.params_after),
                  "build_s": round(time.perf_counter() - started, 1)}
        record_file.write_text(json.dumps(record, indent=1) + "\n")
        log(f"built the student in {record['build_s']} s")
    _, one, _ = setup(preset, prompt, with_model=False)
    spinning = {"session.intra_op.allow_spinning": "1" if SPIN else "0"}
    model = OnnxRuntimeModel.load(int8_dir, threads=threads, session_config=spinning)
    if not model.has_kv_cache or model.kv_cache.logits_positions is None:
        raise RuntimeError(f"{int8_dir} has no LM with logits_positions: rebuild it (delete {record_file})")
    return model, one, record["params"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="deepseek-vl-1.3b")
    parser.add_argument("--prompt", type=int, default=32, help="text tokens beside the image tokens")
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the artifacts here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime threads busy-wait")
    parser.add_argument("--quick", action="store_true", help="reference-tiny, 3 rounds: proves it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.rounds = "reference-tiny", 3
    work = args.work or Path(tempfile.mkdtemp(prefix="prefill-logits-"))
    work.mkdir(parents=True, exist_ok=True)
    model, batch, params = build(args.preset, args.prompt, args.prune, args.threads, work)
    calls = {LAST: lambda: model.prefill(batch)[0], EVERY: lambda: model.forward(batch)}
    outputs = {name: call() for name, call in calls.items()}  # warm-up, and what each returns
    last, every = np.asarray(outputs[LAST]), np.asarray(outputs[EVERY])[:, -1]
    times: dict[str, list[float]] = {name: [] for name in calls}
    for order in round_orders(list(calls), args.rounds, seed=args.seed):
        for name in order:
            started = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - started) * 1000)
    tokens = int(batch["input_ids"].shape[1])
    result = {
        "benchmark": "prefill_logits", "preset": args.preset, "weights": "random (speed only)",
        "prompt_tokens": tokens, "vocab": int(outputs[EVERY].shape[-1]), "params": params, "prune": args.prune,
        "runtime": "onnxruntime int8 (dynamic), split graphs with KV cache", "threads": args.threads,
        "spin": SPIN, "rounds": args.rounds, **cpu_description(),
        "configurations": {name: {"median_ms": round(statistics.median(t), 2),
                                  "logits_bytes": int(np.asarray(outputs[name]).nbytes)}
                           for name, t in times.items()},
        # dynamic int8 gives the head's activations a scale of their own rows: near, not bit-equal
        "last_row_max_abs_diff": round(float(np.abs(last - every).max()), 5),
        "last_row_logit_spread": round(float((every.max(-1) - every.min(-1)).min()), 3),
        "same_next_token": bool((last.argmax(-1) == every.argmax(-1)).all()),
        "speedup_last_over_every": paired_ratio(times[EVERY], times[LAST]).to_json(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
