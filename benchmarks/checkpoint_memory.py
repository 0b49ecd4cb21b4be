"""Peak memory and time of compressing a published-form checkpoint without fine-tuning.

Builds a DeepSeek-VL checkpoint at a preset's dimensions (random weights) the way the converted
deepseek-vl-1.3b-chat weights are published: plain transformers ``save_pretrained`` in bfloat16, with
its processor and tokenizer, and vocab 102400 for the 1.3B preset. Then runs, in a fresh process,

    dsvl-adapt run vertical=industrial model=local model.path=DIR pipeline.stages=[load,prune.structural,export]

and prints one JSON object: the child's peak RSS (GiB), wall seconds, seconds per stage, the peak so far after each
stage (the stage that raised it set the peak), the CPU model and the dtype
the load stage chose. The checkpoint is built once per --work folder and reused.

    python benchmarks/checkpoint_memory.py --preset deepseek-vl-1.3b --work /tmp/ckpt-1.3b
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SMALL_DATA = ["data.train_size=8", "data.validation_size=1", "data.test_size=1"]


def build_checkpoint(preset_name: str, directory: Path, vocab_size: int | None) -> None:
    import torch
    from transformers import AutoModelForImageTextToText

    from dsvl_adapt.models.checkpoint import build_processor
    from dsvl_adapt.models.presets import build_config, get_preset
    from dsvl_adapt.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["What defect is visible? scratch dent stain crack none normal"], vocab_size=1024)
    config = build_config(get_preset(preset_name), vocab_size=vocab_size or len(tokenizer),
                          image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    build_processor(tokenizer, config).save_pretrained(directory)


def main() -> None:
    from dsvl_adapt.machine import cpu_description

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="deepseek-vl-1.3b")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="model vocabulary (default: 102400 for deepseek-vl-1.3b, else the tokenizer's)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the checkpoint and the run")
    parser.add_argument("--stages", default="load,prune.structural,export")
    parser.add_argument("overrides", nargs="*", help="extra dsvl-adapt overrides (e.g. model.dtype=float32)")
    args = parser.parse_args()

    checkpoint = args.work / f"{args.preset}-bf16"
    vocab = args.vocab_size or (102400 if args.preset == "deepseek-vl-1.3b" else None)
    if not (checkpoint / "config.json").is_file():
        print(f"building {checkpoint} ...", file=sys.stderr)
        build_checkpoint(args.preset, checkpoint, vocab)
    run_dir = args.work / f"run-{int(time.time())}"
    command = [sys.executable, "-m", "dsvl_adapt.cli", "run", "vertical=industrial", "model=local",
               f"model.path={checkpoint}", f"pipeline.stages=[{args.stages}]", *SMALL_DATA, *args.overrides,
               f"run_dir={run_dir}"]
    print(" ".join(command), file=sys.stderr)
    start = time.perf_counter()
    result = subprocess.run(command, env=dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1"))
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child
    stages, peaks = {}, {}
    for name in args.stages.split(","):
        record = run_dir / "stages" / name / "stage.json"
        if record.is_file():
            data = json.loads(record.read_text())
            stages[name] = round(data["seconds"], 1)
            if data.get("process_peak_rss_bytes"):
                peaks[name] = round(data["process_peak_rss_bytes"] / 2**30, 2)
    load = run_dir / "stages" / "load" / "stage.json"
    dtype = json.loads(load.read_text())["figures"].get("dtype") if load.is_file() else None
    print(json.dumps({"preset": args.preset, "returncode": result.returncode,
                      "peak_rss_gib": round(peak_kib / 2**20, 2), "seconds": round(seconds, 1),
                      "stage_seconds": stages, "peak_rss_gib_after_stage": peaks, "dtype": dtype,
                      **cpu_description(), "run_dir": str(run_dir)}, indent=1))


if __name__ == "__main__":
    main()
