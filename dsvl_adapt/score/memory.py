"""Peak resident memory of a process serving one model: measured in a child process, no extra dependency.

The scoring process holds every model it scored, so its own peak says nothing about one model.
:func:`measure_serving_memory` starts a fresh Python process that imports the runtime, loads the
artifact through the same runner the scorecard uses (PyTorch, ONNX Runtime or OpenVINO), answers
one batch of test requests, and exits. The child reports its own peak resident memory
(:func:`dsvl_adapt.machine.process_peak_rss_bytes`: ``VmHWM`` on Linux, not ``ru_maxrss``, into which Linux
carries the parent's resident size at the spawn, so a scoring process that held the teacher made every child look
as large), and its resident size after the imports, before the model loads, so the interpreter's and libraries'
share is known.

What the request itself needs (activations, the runtime's arena, the KV cache: what a shorter prefill saves) is
measured apart from loading, whose own peak (a runtime optimising its graph) can hide it: on Linux the child
resets its peak after the model has loaded (:func:`dsvl_adapt.machine.reset_peak_rss`), and reports its resident
size then and its peak while answering. Elsewhere those two stay unknown.

Run as ``python -m dsvl_adapt.score.memory DIR BATCH.safetensors --max-new-tokens N ...`` (the child).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..machine import current_rss_bytes, process_peak_rss_bytes, reset_peak_rss

TIMEOUT_S = 900
DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                   "MASTER_PORT")


@dataclass(frozen=True)
class ServingMemory:
    peak_rss_bytes: int | None  # None: not measured (see error)
    baseline_rss_bytes: int | None
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    error: str = ""
    loaded_rss_bytes: int | None = None  # resident after the model loaded, when the request began (Linux)
    request_peak_rss_bytes: int | None = None  # peak resident while answering, reset after loading (Linux)

    @property
    def request_rss_bytes(self) -> int | None:
        """What answering the request added at its peak over the loaded model (None: not measurable here)."""
        if self.loaded_rss_bytes is None or self.request_peak_rss_bytes is None:
            return None
        return max(0, self.request_peak_rss_bytes - self.loaded_rss_bytes)


def measure_serving_memory(directory: Path, batch: dict[str, torch.Tensor], *, work_dir: Path, max_new_tokens: int,
                           eos_id: int | None, pad_id: int | None, threads: int | None = None,
                           allow_pickle: bool = False, trust_remote_code: bool = False,
                           timeout_s: float = TIMEOUT_S) -> ServingMemory:
    """Load ``directory`` in a fresh process, answer ``batch`` (greedy, up to ``max_new_tokens``), and return
    that process's peak resident memory."""
    from safetensors.torch import save_file

    batch_size = int(batch["input_ids"].shape[0])
    prompt_tokens = int(batch["input_ids"].shape[1])
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = f"memory-{Path(directory).name}-b{batch_size}"
    batch_file, out_file = work_dir / f"{stem}.safetensors", work_dir / f"{stem}.json"
    save_file({k: v.contiguous() for k, v in batch.items() if isinstance(v, torch.Tensor)}, str(batch_file))
    command = [sys.executable, "-m", "dsvl_adapt.score.memory", str(directory), str(batch_file), "--out",
               str(out_file), "--max-new-tokens", str(max_new_tokens)]
    for flag, value in (("--eos-id", eos_id), ("--pad-id", pad_id), ("--threads", threads)):
        if value is not None:
            command += [flag, str(value)]
    command += ["--allow-pickle"] if allow_pickle else []
    command += ["--trust-remote-code"] if trust_remote_code else []
    package_root = str(Path(__file__).resolve().parents[2])  # the same dsvl_adapt as this process
    env = {k: v for k, v in os.environ.items()  # a lone server: not a rank of a distributed launch
           if k not in DISTRIBUTED_ENV and not k.startswith(("ACCELERATE_", "TORCHELASTIC_"))}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
               DSVL_ADAPT_NO_PROGRESS="1")
    with open(work_dir / f"{stem}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return ServingMemory(None, None, batch_size, prompt_tokens, max_new_tokens,
                                 error=f"the serving process ran past {timeout_s:.0f} s")
    batch_file.unlink(missing_ok=True)
    if child.returncode != 0 or not out_file.is_file():
        tail = (work_dir / f"{stem}.log").read_text()[-600:].strip().splitlines()
        return ServingMemory(None, None, batch_size, prompt_tokens, max_new_tokens,
                             error=f"the serving process failed (exit {child.returncode}): "
                                   f"{tail[-1] if tail else 'no output'}")
    report = json.loads(out_file.read_text())
    if report["peak_rss_bytes"] is None:
        return ServingMemory(None, None, batch_size, prompt_tokens, max_new_tokens,
                             error="this platform reports no peak resident memory of a process")
    return ServingMemory(peak_rss_bytes=report["peak_rss_bytes"],
                         baseline_rss_bytes=report["baseline_rss_bytes"], batch_size=batch_size,
                         prompt_tokens=prompt_tokens, new_tokens=max_new_tokens,
                         loaded_rss_bytes=report.get("loaded_rss_bytes"),
                         request_peak_rss_bytes=report.get("request_peak_rss_bytes"))


def _serve(args: argparse.Namespace) -> dict[str, Any]:
    """The child: imports, then load the artifact and answer the batch once."""
    from safetensors.torch import load_file

    from ..models.checkpoint import load_checkpoint
    from .runners import open_runner

    batch = load_file(args.batch)
    baseline = process_peak_rss_bytes()
    runner = open_runner(Path(args.directory), threads=args.threads, load_torch=lambda path: load_checkpoint(
        path, allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code))
    load_peak = process_peak_rss_bytes()
    reset = reset_peak_rss()
    loaded = current_rss_bytes() if reset else None
    tokens = runner.generate_tokens(batch, args.max_new_tokens, eos_id=args.eos_id, pad_id=args.pad_id)
    end_peak = process_peak_rss_bytes()  # since the reset; over the whole process where it could not be reset
    peaks = [p for p in (load_peak, end_peak) if p]
    return {"baseline_rss_bytes": baseline, "runner": runner.label, "new_tokens": int(tokens.shape[1]),
            "peak_rss_bytes": max(peaks) if peaks else None,
            "loaded_rss_bytes": loaded, "request_peak_rss_bytes": end_peak if reset else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsvl_adapt.score.memory",
                                     description="serve one batch from a model directory (memory measurement)")
    parser.add_argument("directory")
    parser.add_argument("batch", help="a safetensors file of the generation batch")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--eos-id", type=int)
    parser.add_argument("--pad-id", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--allow-pickle", action="store_true")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).write_text(json.dumps(_serve(args)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
