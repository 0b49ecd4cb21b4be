"""Visual-token budget (issue 17): time to first token and peak prefill memory at each K through one deployed
runtime, and accuracy per method and keep ratio, without and with distillation under the budget.

    PYTHONPATH=.:plugins/industrial:plugins/medical:plugins/ecommerce:plugins/finance \\
        python benchmarks/tokens.py [--preset deepseek-vl-1.3b] [--keeps 1 0.5 0.25 0.125] [--methods select ...]
                                    [--rounds 6] [--threads 2] [--verticals industrial medical ecommerce finance]
                                    [--accuracy-preset reference-small] [--work DIR] [--quick] [--no-speed]
                                    [--no-accuracy]

Speed and memory (random weights at ``--preset``'s dimensions): for each method and keep ratio the model is
reduced, exported to ONNX (full graph, fp32) and run by ONNX Runtime. Time to first token = one request's vision
+ prefill forward (image + prompt -> logits of the first answer token); every configuration runs once per round in
a rotating order (``_stats.round_orders``), and each is compared with all N tokens **in the same round**
(``_stats.paired_ratio``: geometric mean with a 95% paired t interval; target "2.5x faster at keep 0.25"). The
runtimes are held in memory together when their graphs fit in half the machine's memory; otherwise (the 1.3B preset's
fp32 graphs, 6 GB each) each is loaded for its turn and runs one warm-up forward before it is timed. Memory:
a fresh child process loads the export and answers one request with one new token
(``dsvl_adapt.score.memory.measure_serving_memory``). Peak prefill memory (the "40% lower" target) is that
request's peak RSS over the loaded model's RSS, the peak reset after loading (Linux; unknown elsewhere): the weights
are the same at every K, so the process's whole peak RSS, also reported, cannot fall by 40% on a 1.3B model.

Accuracy: ``dsvl_adapt.run`` of each vertical at ``--accuracy-preset`` with ``prune.tokens`` at each keep ratio and
method, sharing finished stages through a cache (``cache_dir``): **without distillation** the method is applied to
the teacher itself (``prune=none``, no ``distill``: the training-free figure), **with distillation** the compressed
student (the default pruning) is distilled under the budget. Every model is scored in PyTorch (no ``quantize`` /
``export``: the masking methods ``window`` and ``text-guided`` run in PyTorch only), without the base model, the
general set or per-run memory. Each run gives the student's accuracy with its 95% bootstrap interval, the teacher's,
retention; then every distilled student is timed together (``time_students``: PyTorch, one request a round in
rotating order, ``--rounds`` rounds), since a figure measured inside each run reflects whatever else the machine
was doing at that moment. ``--quick``: reference-tiny, keep 1 and 0.25, select only,
industrial only, 2 rounds: it checks that the script runs; its figures are not worth quoting.
Prints one JSON object on stdout and the same figures as Markdown tables on stderr (with, per method, on how many
verticals the student distilled at keep 0.25 keeps retention >= 0.95: ``accuracy_acceptance``); writes ``tokens.png``
(accuracy against time to first token per method) in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _stats import RATIO_METHOD, paired_ratio, round_orders, target_check


def _log(message: str) -> None:
    print(f"[tokens] {message}", file=sys.stderr, flush=True)


def _request(processor: Any, image_size: int) -> dict[str, torch.Tensor]:
    """One request: a generated image and a short question through the checkpoint's chat template."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray((np.random.default_rng(0).random((image_size, image_size, 3)) * 255).astype("uint8"))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Is there a defect on this part?"}]}]
    features = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                             return_tensors="pt")
    return {k: features[k] for k in ("input_ids", "attention_mask", "pixel_values")}


def _fits_together(directories: list[Path]) -> bool:
    """Whether the exported graphs of ``directories`` together take under half of this machine's memory."""
    total = sum(f.stat().st_size for d in directories for f in d.rglob("*") if f.is_file())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total < memory / 2


def speed_and_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Build the preset once, then per (method, keep): reduce, export, time in rotating rounds, measure RSS."""
    from dsvl_adapt.compress.tokens.budget import apply_token_budget
    from dsvl_adapt.export.onnx import export_onnx
    from dsvl_adapt.models.checkpoint import build_reference, load_checkpoint, save_checkpoint
    from dsvl_adapt.models.presets import get_preset
    from dsvl_adapt.models.tokenizer import train_tokenizer
    from dsvl_adapt.plugins import get_registry
    from dsvl_adapt.runtimes.onnxruntime import OnnxRuntimeModel
    from dsvl_adapt.score.memory import measure_serving_memory

    torch.set_num_threads(args.threads)
    base_dir = work / "base"
    if not (base_dir / "config.json").is_file():
        tokenizer = train_tokenizer(["is there a defect on this part", "yes no scratch dent crack"] * 50,
                                    vocab_size=args.vocab)
        model, processor = build_reference(get_preset(args.preset), tokenizer, seed=0)
        save_checkpoint(model, processor, base_dir)
        del model
    configs: dict[str, dict[str, Any]] = {}
    reducers = get_registry().token_reducers
    for method in args.methods:
        if reducers.get(method).deploys != "graphs":
            _log(f"{method}: PyTorch only (a mask over all N tokens), no exported graph to time")
            continue
        for keep in args.keeps:
            name = "all" if keep == 1 else f"{method}@{keep:g}"
            if name in configs:
                continue
            directory = work / "export" / name
            model, processor = load_checkpoint(base_dir)
            if keep != 1:
                apply_token_budget(model, processor, get_registry().token_reducers.get(method), keep=keep)
            request = _request(processor, int(get_preset(args.preset).image_size))
            if not (directory / "export.json").is_file():
                _log(f"export {name}")
                export_onnx(model, directory, {k: torch.cat([v, v]) for k, v in request.items()},
                            threads=args.threads)
                processor.save_pretrained(directory)
            configs[name] = {"method": None if keep == 1 else method, "keep": keep, "request": request,
                             "image_tokens": int(processor.num_image_tokens),
                             "prompt_tokens": int(request["input_ids"].shape[1])}
            del model
    times: dict[str, list[float]] = {name: [] for name in configs}
    # held together when they fit in half the machine's memory; else each is loaded for its turn (one warm-up
    # forward after every load), so that the 1.3B preset's fp32 graphs need one model's memory, not four
    held = _fits_together([work / "export" / name for name in configs])
    runtimes = {name: OnnxRuntimeModel.load(work / "export" / name, threads=args.threads) for name in configs} \
        if held else {}
    for name, runtime in runtimes.items():  # one warm-up each
        runtime.forward(configs[name]["request"])
    for order in round_orders(list(configs), args.rounds, seed=args.seed):
        for name in order:
            runtime = runtimes.get(name)
            if runtime is None:
                runtime = OnnxRuntimeModel.load(work / "export" / name, threads=args.threads)
                runtime.forward(configs[name]["request"])
            started = time.perf_counter()
            runtime.forward(configs[name]["request"])
            times[name].append((time.perf_counter() - started) * 1000)
            del runtime
    del runtimes
    results: dict[str, Any] = {}
    for name, config in configs.items():
        memory = measure_serving_memory(work / "export" / name, config["request"], work_dir=work / "memory" / name,
                                        max_new_tokens=1, eos_id=None, pad_id=None, threads=args.threads)
        speed = paired_ratio(times["all"], times[name]).to_json() if name != "all" else None
        results[name] = {k: config[k] for k in ("method", "keep", "image_tokens", "prompt_tokens")} | {
            "ttft_ms_median": round(float(torch.tensor(times[name]).median()), 2),
            "ttft_speedup_vs_all": speed,
            "peak_rss_bytes": memory.peak_rss_bytes, "baseline_rss_bytes": memory.baseline_rss_bytes,
            "loaded_rss_bytes": memory.loaded_rss_bytes, "request_rss_bytes": memory.request_rss_bytes,
            "memory_error": memory.error or None}
    full = results["all"]
    for name, result in results.items():
        if name == "all" or not (result["peak_rss_bytes"] and full["peak_rss_bytes"]):
            continue
        above = lambda r: r["peak_rss_bytes"] - (r["baseline_rss_bytes"] or 0)  # noqa: E731 - the model's share
        result["peak_rss_reduction"] = round(1 - result["peak_rss_bytes"] / full["peak_rss_bytes"], 3)
        # the model's share (peak - RSS before it loaded); None when too small to see (a tiny preset)
        result["model_rss_reduction"] = round(1 - above(result) / above(full), 3) if above(full) > 0 else None
        # the prefill's own memory: the request's peak over the loaded model (the weights are the same at every K)
        result["prefill_memory_reduction"] = (round(1 - result["request_rss_bytes"] / full["request_rss_bytes"], 3)
                                              if result["request_rss_bytes"] is not None and full["request_rss_bytes"]
                                              else None)
    acceptance = {}
    for name, result in results.items():
        if result["keep"] == 0.25 and result["ttft_speedup_vs_all"]:
            ci = result["ttft_speedup_vs_all"]["ci95"] or [None, None]
            acceptance[name] = {
                "ttft_2.5x_faster": target_check(result["ttft_speedup_vs_all"]["ratio"], ci[0], ci[1], 2.5),
                "peak_memory_40pct_lower": None if result.get("prefill_memory_reduction") is None
                else ("met" if result["prefill_memory_reduction"] >= 0.40 else "not met")}
    return {"preset": args.preset, "runtime": "onnxruntime fp32 (full graph)", "threads": args.threads,
            "runtimes_held_together": held,
            "rounds": args.rounds, "ratio_method": RATIO_METHOD, "configs": results, "acceptance": acceptance}


def accuracy(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Pipeline runs per vertical, method, keep ratio, with and without distillation."""
    import dsvl_adapt

    # accuracy and time to first token only: no base model, no general set, no fresh-process memory per run
    common = [f"model={args.accuracy_preset}", "score.models=[teacher,student]", "score.general_size=0",
              "score.measure_memory=false", *args.overrides, f"cache_dir={args.cache_dir or work / 'cache'}"]
    if args.quick:
        common += ["finetune=fast", "distill=fast", "data.train_size=48", "data.validation_size=8",
                   "data.test_size=12", "score.latency_repeats=3", "score.latency_warmup=1", "score.general_size=0",
                   "score.measure_memory=false"]
    stages = ["load", "finetune", "prune.structural", "prune.weights", "prune.tokens", "distill", "score"]
    out: dict[str, Any] = {}
    for vertical in args.verticals:
        rows = []
        for method in args.methods:
            for keep in args.keeps:
                for distilled in (False, True):
                    if keep == 1 and method != args.methods[0]:
                        continue  # all tokens: one run per vertical, whatever the method
                    # without distillation: the method applied to the teacher itself (no weight pruning), the
                    # training-free figure the literature reports; with: the compressed student distilled under it
                    run_stages = stages if distilled else [s for s in stages if s != "distill"]
                    budget = [] if keep == 1 else [f"prune.tokens.keep={keep}", f"prune.tokens.method={method}"]
                    if not distilled:
                        budget.append("prune=none")
                    label = f"{vertical}/{'all' if keep == 1 else f'{method}@{keep:g}'}/" \
                            f"{'distilled' if distilled else 'not-distilled'}"
                    _log(f"run {label}")
                    card = dsvl_adapt.run([f"vertical={vertical}", *common, *budget,
                                           "pipeline.stages=[" + ",".join(run_stages) + "]"],
                                          run_dir=str(work / "runs" / label.replace("/", "-")))
                    student = card.tokens.get("student")
                    rows.append({"method": None if keep == 1 else method, "keep": keep, "distilled": distilled,
                                 "run_dir": str(work / "runs" / label.replace("/", "-")),
                                 "image_tokens": student.image_tokens if student else None,
                                 "accuracy": card.accuracy.get("student"), "ci95": card.accuracy_ci.get("student"),
                                 "teacher": card.accuracy.get("teacher"), "retention": card.retention,
                                 "retention_ci95": card.retention_ci,
                                 "ttft_ms": student.ttft_ms if student else
                                 (card.latency["student"].p50_ms if "student" in card.latency else None)})
        time_students(rows, args)
        out[vertical] = rows
    return out


#: forwards timed per student and round (their median is the round's time): one ~20 ms forward is noise-prone
TIMED_FORWARDS = 5


def time_students(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Time to first token of every distilled student, measured together after the runs: each student (loaded from
    its run with its token budget, PyTorch, ``--threads``) answers one request per round, in rotating order, for
    ``--rounds`` rounds after a warm-up; ``ttft_ms`` becomes the median over rounds and ``ttft_speedup_vs_all`` the
    paired ratio against the all-token student. The scorecard's own figure (measured inside each run, whatever else
    the machine was doing then) stays as ``ttft_ms_in_run``."""
    from dsvl_adapt.models.checkpoint import load_checkpoint
    from dsvl_adapt.runtimes import TorchRuntimeModel

    runtimes: dict[str, Any] = {}
    requests: dict[str, dict[str, torch.Tensor]] = {}
    for row in rows:
        if not row["distilled"]:
            continue
        run = Path(row["run_dir"])
        student = json.loads((run / "stages" / "distill" / "stage.json").read_text())["artifacts"]["student"]
        model, processor = load_checkpoint(run / student)
        name = _config(row)
        runtimes[name] = TorchRuntimeModel(model, threads=args.threads)
        requests[name] = _request(processor, int(processor.image_processor.size["height"]))
        runtimes[name].forward(requests[name])  # warm-up
    if "all" not in runtimes:
        return
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for order in round_orders(list(runtimes), args.rounds, seed=args.seed):
        for name in order:
            spent = []
            for _ in range(TIMED_FORWARDS):
                started = time.perf_counter()
                runtimes[name].forward(requests[name])
                spent.append((time.perf_counter() - started) * 1000)
            times[name].append(float(torch.tensor(spent).median()))
    for row in rows:
        name = _config(row)
        if row["distilled"] and name in times:
            row["ttft_ms_in_run"] = row["ttft_ms"]
            row["ttft_ms"] = round(float(torch.tensor(times[name]).median()), 2)
            row["ttft_speedup_vs_all"] = None if name == "all" else paired_ratio(times["all"], times[name]).to_json()
    _log(f"timed {len(runtimes)} students in {args.rounds} rotating rounds")


def _config(row: dict[str, Any]) -> str:
    return "all" if row["method"] is None else f"{row['method']}@{row['keep']:g}"


def _figure(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def tables(result: dict[str, Any]) -> str:
    """The result as the Markdown tables docs/tokens.md and the README quote: speed and memory per method and K, and
    per vertical accuracy per method and keep ratio, training-free and distilled, with retention."""
    out: list[str] = []
    speed = result.get("speed_memory")
    if speed:
        out += [f"time to first token and peak prefill memory: {speed['preset']}, {speed['runtime']}, "
                f"{speed['threads']} threads, {speed['rounds']} rounds; {result['cpu']} "
                f"{' '.join(result['cpu_flags'])}",
                "", "| method | keep | image tokens | time to first token (median) | faster than all [95%] | "
                "prefill memory lower |", "|---|---|---|---|---|---|"]
        for name, row in speed["configs"].items():
            ratio = row["ttft_speedup_vs_all"]
            faster = "-" if ratio is None else f"{ratio['ratio']:.2f}x" + (
                f" [{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}]" if ratio.get("ci95") else "")
            memory = row.get("prefill_memory_reduction")
            out.append(f"| {row['method'] or 'all'} | {row['keep']:g} | {row['image_tokens']} | "
                       f"{row['ttft_ms_median']:.0f} ms | {faster} | {'-' if memory is None else f'{memory:.0%}'} |")
        out.append("")
    for vertical, rows in (result.get("accuracy") or {}).items():
        teacher = next((r["teacher"] for r in rows if r["teacher"] is not None), None)
        out += [f"{vertical} (teacher {_figure(teacher)}): accuracy of the teacher under the budget (training-free) "
                "and of the student distilled under it, 95% bootstrap intervals", "",
                "| method | keep | image tokens | training-free | distilled | retention | student time to first "
                "token | faster than all [95%] |", "|---|---|---|---|---|---|---|---|"]
        paired: dict[tuple[Any, float], dict[bool, dict]] = {}
        for row in rows:
            paired.setdefault((row["method"], row["keep"]), {})[row["distilled"]] = row
        for (method, keep), pair in paired.items():
            free, distilled = pair.get(False), pair.get(True)
            either = distilled or free
            ttft = f"{distilled['ttft_ms']:.1f} ms" if distilled and distilled["ttft_ms"] else "-"
            speedup = (distilled or {}).get("ttft_speedup_vs_all")
            faster = "-" if not speedup else f"{speedup['ratio']:.2f}x" + (
                f" [{speedup['ci95'][0]:.2f}, {speedup['ci95'][1]:.2f}]" if speedup.get("ci95") else "")
            training_free = "(the teacher)" if method is None else _figure(free["accuracy"], free["ci95"]) if free \
                else "-"
            out.append(f"| {method or 'all tokens'} | {keep:g} | {either['image_tokens'] or 'all'} | {training_free} | "
                       f"{_figure(distilled['accuracy'], distilled['ci95']) if distilled else '-'} | "
                       f"{_figure(distilled['retention'], distilled['retention_ci95']) if distilled else '-'} | "
                       f"{ttft} | {faster} |")
        out.append("")
    for method, check in (result.get("accuracy_acceptance") or {}).items():
        out.append(f"{method}: distilled retention >= 0.95 at keep 0.25 on {len(check['verticals_met'])} of "
                   f"{check['verticals']} verticals ({', '.join(check['verticals_met']) or 'none'}): {check['target']}")
    return "\n".join(out)


def accuracy_acceptance(accuracies: dict[str, Any]) -> dict[str, Any]:
    """Per method: the verticals where the student distilled at keep 0.25 keeps retention >= 0.95 (point estimate),
    against the issue's "at least three of the four"."""
    out: dict[str, Any] = {}
    for vertical, rows in accuracies.items():
        for row in rows:
            if row["distilled"] and row["keep"] == 0.25 and row["method"]:
                check = out.setdefault(row["method"], {"verticals": len(accuracies), "verticals_met": []})
                if row["retention"] is not None and row["retention"] >= 0.95:
                    check["verticals_met"].append(vertical)
    for check in out.values():
        check["target"] = "met" if len(check["verticals_met"]) >= 3 else (
            "not met" if check["verticals"] >= 4 else "fewer than four verticals in this run")
    return out


def plot(accuracies: dict[str, Any], path: Path) -> bool:
    """One panel per vertical, a line per method through its distilled students' (time to first token, accuracy)
    at each keep ratio, every line starting from the student with all image tokens; panels side by side, two a row."""
    import io

    from PIL import Image

    from dsvl_adapt.score.plots import accuracy_ttft_plot

    panels = []
    for vertical, rows in accuracies.items():
        measured = [r for r in rows if r["distilled"] and r["ttft_ms"] is not None and r["accuracy"] is not None]
        full = [r for r in measured if r["method"] is None]
        series: dict[str, list[tuple[float, float, str]]] = {}
        for row in measured:
            if row["method"] is not None:
                series.setdefault(row["method"], [(r["ttft_ms"], r["accuracy"], "all") for r in full]).append(
                    (row["ttft_ms"], row["accuracy"], f"K={row['image_tokens']}"))
        png = accuracy_ttft_plot(series or {"all tokens": [(r["ttft_ms"], r["accuracy"], "all") for r in full]},
                                 title=f"{vertical}: student distilled under the budget")
        if png:
            panels.append(Image.open(io.BytesIO(png)).convert("RGB"))
    if not panels:
        return False
    width, height = panels[0].size
    grid = Image.new("RGB", (width * min(2, len(panels)), height * ((len(panels) + 1) // 2)), "white")
    for index, panel in enumerate(panels):
        grid.paste(panel, ((index % 2) * width, (index // 2) * height))
    grid.save(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deepseek-vl-1.3b")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--keeps", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    parser.add_argument("--methods", nargs="+",
                        default=["select", "resolution", "vision-merge", "window", "text-guided"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verticals", nargs="+", default=["industrial", "medical", "ecommerce", "finance"])
    parser.add_argument("--accuracy-preset", default="reference-small")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="the stage cache of the accuracy runs (default WORK/cache): another work folder's cache "
                             "re-scores its finished runs without training them again")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra run overrides for the accuracy runs")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.accuracy_preset, args.vocab = "reference-tiny", "reference-tiny", 300
        args.keeps, args.methods, args.rounds, args.verticals = [1.0, 0.25], ["select"], 2, ["industrial"]
    if 1.0 not in args.keeps:
        args.keeps = [1.0, *args.keeps]
    work = args.work or Path(tempfile.mkdtemp(prefix="tokens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from dsvl_adapt.machine import cpu_description

    result: dict[str, Any] = {"quick": args.quick, **cpu_description(), "work": str(work)}
    if not args.no_speed:
        result["speed_memory"] = speed_and_memory(args, work)
    if not args.no_accuracy:
        result["accuracy"] = accuracy(args, work)
        result["accuracy_acceptance"] = accuracy_acceptance(result["accuracy"])
        result["plot"] = str(work / "tokens.png") if plot(result["accuracy"], work / "tokens.png") else None
    print(tables(result), file=sys.stderr)  # the JSON alone on stdout
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
