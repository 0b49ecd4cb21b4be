"""The ``score`` stage: measures every model the run produced and writes the scorecard.

``base`` and ``teacher`` are scored in PyTorch. The ``student`` is scored through its deployable
artifact (the quantized model or ONNX graphs made for the target's runtime) when the run made
one; the uncompressed-runtime student is listed beside it under ``runtimes``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.batches import BatchEncoder
from ..engine import RunContext, StageResult
from ..errors import PluginError
from ..manifest import git_revision, package_versions
from ..schemas import MetricSpec, Row
from .hardware import FAR_BELOW, check_target, count_linear_macs, estimate_throughput
from ..machine import process_peak_rss_bytes
from .runners import Runner, open_runner
from .intervals import (
    LEVEL,
    RESAMPLES,
    PairedDifference,
    bootstrap_interval,
    metric_on_rows,
    paired_difference,
    paired_ratio_interval,
    resample_indices,
)
from .scorecard import (
    Comparison,
    Generation,
    DataCleaning,
    Intervals,
    Latency,
    Memory,
    RuntimeScore,
    Scorecard,
    Size,
    TargetFit,
    Throughput,
)
from .tokens import token_summary
from .verdict import TrainingFacts, apply_verdict, diagnose_teacher


def compute_metrics(specs: list[MetricSpec], predictions: list[str], rows: list[Row]) -> dict[str, float | None]:
    """Every metric on (predictions, references); a value out of its declared range is a plugin error.

    A metric returns None when it does not apply to the rows (shown as "—"); the primary may not.
    """
    references = [row.answer for row in rows]
    values: dict[str, float | None] = {}
    for spec in specs:
        raw = spec.compute(predictions, references, rows)
        if raw is None and spec is not specs[0]:
            values[spec.name] = None
            continue
        if raw is None:
            raise PluginError(f"primary metric {spec.name!r} returned None (not applicable) on the test split; the "
                              "primary metric must apply to every test split (list another metric first)")
        value = float(raw)
        if not spec.lower <= value <= spec.upper:
            raise PluginError(f"metric {spec.name!r} returned {value}, outside its range [{spec.lower}, {spec.upper}]")
        values[spec.name] = round(value, 6)
    return values


class ScoreStage:
    name = "score"
    description = "score base, teacher and student: accuracy, retention, latency, size, hardware fit"

    def run(self, context: RunContext) -> StageResult:
        cfg = context.config.score
        vertical = context.vertical
        specs = [context.registry.metrics.get(name) for name in vertical.metrics]
        primary = specs[0]
        plan = _plan(context)
        results: dict[Path, dict[str, Any]] = {}
        rows: list[Row] = []
        for path, label in plan.items():
            runner = open_runner(path, load_torch=_loader(context), threads=cfg.threads,
                                 registry=context.registry)
            if label.startswith("student-"):  # another artifact of the student: named by what it is
                label = f"student-{runner.label}"
            encoder = BatchEncoder(runner.processor, context.prompt)
            rows = context.split("test", runner.processor.image_processor.size["height"]).rows
            items = encoder.encode_all(rows)
            batch_size = answer_batch_size(cfg, runner)
            answers = runner.answers(encoder, items, batch_size=batch_size,
                                     max_new_tokens=vertical.max_answer_tokens, label=f"score {label}")
            predictions = f"predictions-{label}.jsonl"
            _write_predictions(context.work_dir / predictions, rows, answers)
            result: dict[str, Any] = {"runner": runner, "metrics": compute_metrics(specs, answers, rows),
                                      "answers": answers, "predictions": predictions,
                                      "answer_batch_size": batch_size,
                                      "general": _general_answers(context, runner, label)}
            if label != "base":
                one = encoder.generation_batch(items[:1])
                latency, samples = runner.latency(one, warmup=cfg.latency_warmup, repeats=cfg.latency_repeats,
                                                  threads=cfg.threads)
                result["latency"], result["prefill_samples"] = Latency(**latency), samples
                result["generation"] = Generation(**runner.generation(
                    one, answer_tokens=vertical.max_answer_tokens, eos_id=encoder.eos_id, pad_id=encoder.pad_id,
                    warmup=1, repeats=max(1, min(3, cfg.latency_repeats)), threads=cfg.threads))
                if runner.torch_model is not None and runner.dtype == "fp32":
                    result["macs"] = count_linear_macs(runner.torch_model, one)
                result["encoder"], result["items"] = encoder, items  # batches at each target's size
            results[path] = result
            if label == "base":
                runner.torch_model = runner.onnx_model = None  # free memory early (the student's artifacts are timed
                # again at each target's batch size)
        card = self._card(context, specs, primary, plan, results, rows)
        card.write(context.work_dir)
        if "student" in context.artifacts and card.accuracy:
            from .modelcard import write_model_card

            example = rows[0] if rows else None
            write_model_card(card, context.artifacts["student"], system=context.prompt.system,
                             question=context.prompt.render(example.question, example.meta) if example
                             else "Describe any defect.")
        return StageResult(artifacts={"scorecard": "scorecard.json"},
                           figures={"accuracy": card.accuracy, "retention": card.retention,
                                    "verdict": card.verdict})

    def _card(self, context: RunContext, specs: list[MetricSpec], primary: MetricSpec, plan: dict[Path, str],
              results: dict[Path, dict[str, Any]], rows: list[Row]) -> Scorecard:
        roles = _roles(context)
        metrics, latency, sizes, params, notes = {}, {}, {}, {}, []
        generation: dict[str, Generation] = {}
        for role, path in roles.items():
            result = results[path]
            runner: Runner = result["runner"]
            metrics[role] = result["metrics"]
            if "latency" in result:
                latency[role] = result["latency"]
            if "generation" in result:
                generation[role] = result["generation"]
            sizes[role] = Size(bytes=runner.size_bytes, weight_bytes=runner.weight_bytes,
                               by_component=runner.by_component)
            if runner.params is not None:
                params[role] = runner.params
            if plan[path] != role:
                notes.append(f"{role} is the same model as {plan[path]} (no stage changed it)")
        runtimes = {}
        for path in _student_paths(context):
            result = results[path]
            runner = result["runner"]
            runtimes[runner.label] = RuntimeScore(runtime=runner.runtime, dtype=runner.dtype, path=str(path),
                                                  metrics=result["metrics"], latency=result.get("latency"),
                                                  size_bytes=runner.size_bytes, predictions=result["predictions"],
                                                  answer_batch_size=result["answer_batch_size"])
        accuracy = {role: values[primary.name] for role, values in metrics.items()}
        general = {role: results[path]["general"][0] for role, path in roles.items()
                   if results[path]["general"] is not None}
        retention = None
        if "teacher" in accuracy and "student" in accuracy and accuracy["teacher"] > 0:
            retention = round(accuracy["student"] / accuracy["teacher"], 6)
        targets, throughput, memory = _targets(context, results)
        card = Scorecard(
            vertical=context.vertical.name, metric=primary.name, higher_is_better=primary.higher_is_better,
            accuracy=accuracy, retention=retention, metrics=metrics, general=general, latency=latency,
            generation=generation,
            runtimes=runtimes, size=sizes, params=params, peak_rss_bytes=process_peak_rss_bytes(), targets=targets,
            throughput=throughput, memory=memory, skipped_rows=context.skipped_rows(), test_rows=len(rows),
            data=DataCleaning.from_figures(context.figures.get("clean", {}).get("data")),
            stages=_stage_figures(context), notes=notes,
            provenance={"config": context.raw_config, "seed": context.config.seed, "versions": package_versions(),
                        "git_revision": git_revision(), "run_dir": str(context.run_dir),
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        )
        card.tokens = token_summary(context.figures, roles, results)
        if rows:
            common = Counter(row.answer for row in rows).most_common(1)[0][0]
            card.constant_answer = compute_metrics(specs, [common] * len(rows), rows)
            _test_intervals(card, context, primary, {role: results[path]["answers"] for role, path in roles.items()},
                            rows)
        _general_intervals(card, context, {role: results[path]["general"] for role, path in roles.items()})
        best = primary.upper if primary.higher_is_better else primary.lower
        apply_verdict(card, context.vertical.objectives, best=best)
        if "teacher" in accuracy:
            card.teacher_diagnosis = diagnose_teacher(card, _training_facts(context))
        for key, comparison in card.general_comparisons.items():
            if comparison.forgetting:
                card.notes.append(f"forgetting: general-capability accuracy fell from "
                                  f"{card.general[comparison.before]:.3f} ({comparison.before}) to "
                                  f"{card.general[comparison.after]:.3f} ({comparison.after}), outside the paired "
                                  f"95% interval [{comparison.ci[0]:+.3f}, {comparison.ci[1]:+.3f}]")
        return card


def _comparison(before: str, after: str, difference: PairedDifference, *, general: bool = False) -> Comparison:
    return Comparison(before=before, after=after, difference=difference.difference,
                      ci=[difference.low, difference.high], within_noise=difference.within_noise,
                      forgetting=(not difference.within_noise and difference.high < 0) if general else None)


PAIRS = {"teacher_vs_base": ("base", "teacher"), "student_vs_teacher": ("teacher", "student")}


def _test_intervals(card: Scorecard, context: RunContext, primary: MetricSpec, answers: dict[str, list[str]],
                    rows: list[Row]) -> None:
    """``accuracy_ci``, ``comparisons`` and ``retention_ci``: bootstrap over the test rows, paired across models."""
    draws = resample_indices(len(rows), resamples=RESAMPLES, seed=context.config.seed)
    references = [row.answer for row in rows]
    score = {role: metric_on_rows(primary.compute, predictions, references, rows)
             for role, predictions in answers.items()}
    card.intervals = Intervals(level=LEVEL, resamples=RESAMPLES, seed=context.config.seed)
    card.accuracy_ci = {role: list(bootstrap_interval(fn, draws)) for role, fn in score.items()}
    for key, (before, after) in PAIRS.items():
        if before in score and after in score:
            card.comparisons[key] = _comparison(before, after, paired_difference(score[before], score[after], draws))
    if card.retention is not None:
        card.retention_ci = list(paired_ratio_interval(score["student"], score["teacher"], draws))


def _general_intervals(card: Scorecard, context: RunContext,
                       general: dict[str, tuple[float, list[str], list[str]] | None]) -> None:
    """``general_ci`` and ``general_comparisons`` (forgetting: a drop outside the paired interval)."""
    from ..metrics import exact_match

    measured = {role: g for role, g in general.items() if g is not None}
    if not measured:
        return
    references = next(iter(measured.values()))[2]  # the same general rows for every model
    draws = resample_indices(len(references), resamples=RESAMPLES, seed=context.config.seed)
    score = {role: metric_on_rows(exact_match, answers, references, references)
             for role, (_, answers, _) in measured.items()}
    card.general_ci = {role: list(bootstrap_interval(fn, draws)) for role, fn in score.items()}
    if references:  # the floor as the test split's: the most common answer given to every row, by the row's metric
        common = Counter(references).most_common(1)[0][0]
        card.general_floor = round(exact_match([common] * len(references), references), 6)
    for key, (before, after) in PAIRS.items():
        if before in score and after in score:
            card.general_comparisons[key] = _comparison(before, after, paired_difference(score[before], score[after],
                                                                                         draws), general=True)


def _training_facts(context: RunContext) -> TrainingFacts:
    finetune, update = context.config.finetune, context.config.update
    lora = {"lora_steps": finetune.lora.train.steps, "lora_lr": finetune.lora.train.lr}
    if update is not None:  # an update's teacher: the parent's, trained further by update.finetune
        return TrainingFacts(from_preset=context.config.model.preset is not None, full_when=update.full.when,
                             full_ran="full" in context.figures.get("update.finetune", {}),
                             full_steps=update.full.steps, full_lr=finetune.full.lr, full_keys="update.full",
                             **lora)
    return TrainingFacts(from_preset=context.config.model.preset is not None, full_when=finetune.full_when,
                         full_ran="full" in context.figures.get("finetune", {}), full_steps=finetune.full.steps,
                         full_lr=finetune.full.lr, **lora,
                         train_rows=context.config.data.train_size if context.config.data.source is None else None)


def _stage_figures(context: RunContext) -> dict[str, Any]:
    """Each stage's figures, with paths into a stage's ``.partial`` work folder (where it ran) rewritten to the
    stage folder the engine moved it to (where its artifacts are)."""
    stages = context.run_dir / "stages"

    def portable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: portable(v) for k, v in value.items()}
        if isinstance(value, list):
            return [portable(v) for v in value]
        if isinstance(value, str) and ".partial" in value:
            for name in context.figures:
                for base in {str(stages), str(stages.resolve())}:
                    partial = f"{base}{os.sep}{name}.partial"
                    if value == partial or value.startswith(partial + os.sep):
                        return f"{base}{os.sep}{name}" + value[len(partial):]
        return value

    return {name: portable(figures) for name, figures in context.figures.items()}


def _general_answers(context: RunContext, runner: Runner, label: str) -> tuple[float, list[str], list[str]] | None:
    """Exact match on the core's general visual questions (flags what fine-tuning made the model forget), with the
    answers and references it came from (for intervals)."""
    size = context.config.score.general_size
    if size == 0:
        return None
    from ..data.loading import load_split
    from ..metrics import exact_match
    from ..schemas import DatasetRequest

    registry = context.registry
    image_size = runner.processor.image_processor.size["height"]
    rows = load_split(registry.datasets.get("general-vqa"),
                      DatasetRequest(split="test", size=size, seed=context.config.seed, image_size=image_size)).rows
    encoder = BatchEncoder(runner.processor, registry.prompts.get("general-vqa"))
    batch_size = answer_batch_size(context.config.score, runner)
    answers = runner.answers(encoder, encoder.encode_all(rows), batch_size=batch_size, max_new_tokens=4,
                             label=f"general {label}")
    references = [row.answer for row in rows]
    return round(exact_match(answers, references), 6), answers, references


def answer_batch_size(cfg: Any, runner: Runner) -> int:
    """Rows per generate call: ``score.batch_size`` for a PyTorch model, ``score.runtime_batch_size`` through an
    exported runtime (1 by default: each row alone, as the server answers a lone request; a dynamic-int8 artifact's
    answer can depend on the rows batched with it)."""
    return cfg.batch_size if runner.torch_model is not None else cfg.runtime_batch_size


def _loader(context: RunContext) -> Any:
    from ..models.checkpoint import load_checkpoint

    model_cfg = context.config.model
    return lambda path: load_checkpoint(path, allow_pickle=model_cfg.allow_pickle,
                                        trust_remote_code=model_cfg.trust_remote_code)


def _roles(context: RunContext) -> dict[str, Path]:
    """base / teacher / student -> the directory scored for it (the student's deployable artifact first)."""
    roles = {}
    for role in context.config.score.models:
        source = "deploy" if role == "student" and "deploy" in context.artifacts else role
        if source in context.artifacts:
            roles[role] = context.artifacts[source].resolve()
    return roles


def _student_paths(context: RunContext) -> list[Path]:
    paths = [context.artifacts[name].resolve() for name in ("student", "deploy") if name in context.artifacts]
    return list(dict.fromkeys(paths)) if "student" in context.config.score.models else []


def _plan(context: RunContext) -> dict[Path, str]:
    """Each distinct directory once, with the first role that uses it."""
    plan: dict[Path, str] = {}
    for role, path in _roles(context).items():
        plan.setdefault(path, role)
    for path in _student_paths(context):
        plan.setdefault(path, "student-" + path.name)
    return plan


def _targets(context: RunContext, results: dict[Path, dict[str, Any]]
             ) -> tuple[list[TargetFit], list[Throughput], dict[str, Memory]]:
    """Fit of the deployed student on every target, its throughput at each target's batch size (measured where
    the target is a CPU whose runtime ran the student here, a roofline estimate otherwise), and the peak memory of
    a process serving each scored model (teacher, student)."""
    roles = _roles(context)
    memory = _serving_memory(context, results, roles)
    if "student" not in roles:
        return [], [], memory
    deployed = results[roles["student"]]
    runner: Runner = deployed["runner"]
    here = {r["runner"].runtime: (path, r) for path, r in results.items()
            if path in _student_paths(context) and "latency" in r}
    measured = {runtime: r["latency"] for runtime, (_, r) in here.items()}
    macs = next((r["macs"] for _, r in here.values() if "macs" in r), 0)
    inventory = _inventory(context.artifacts.get("onnx"))
    fits, throughputs = [], []
    for target in context.targets():
        path, source = here.get(target.runtime, (None, None)) if target.device == "cpu" else (None, None)
        stand_in = False
        if source is not None:
            throughput = _measure_throughput(context, target, source)
        elif target.device == "cpu" and here:  # another runtime ran here: a better stand-in than a roofline
            path, source = here.get(runner.runtime) or min(here.values(), key=lambda item: item[1]["latency"].p90_ms)
            stand_in = True
            throughput = _measure_throughput(context, target, source, stand_in=True)
        else:
            throughput = estimate_throughput(target, macs=macs, weight_bytes=runner.weight_bytes, dtype=runner.dtype)
            fastest = min(measured.values(), key=lambda lat: lat.p50_ms, default=None)
            if fastest is not None and target.batch_size == fastest.batch_size and throughput.requests_per_s:
                here_rps = 1000.0 * fastest.batch_size / fastest.p50_ms
                if throughput.requests_per_s >= FAR_BELOW * here_rps:
                    throughput.how += (f"; NOTE: {throughput.requests_per_s / here_rps:.0f}x the {here_rps:.1f} "
                                       f"req/s measured for the same model on this machine ({fastest.runtime}): a "
                                       "roofline leaves out runtime overhead and kernel efficiency")
        throughputs.append(throughput)
        serving = None
        if source is not None and context.config.score.measure_memory:
            serving = _memory_of(context, path, source, target.batch_size)
        fits.append(check_target(target, model_dtype=runner.dtype, weight_bytes=runner.weight_bytes,
                                 config=runner.config, macs=macs, measured=measured, inventory=inventory,
                                 throughput=throughput, serving=serving, serving_stand_in=stand_in,
                                 reference_memory=memory.get("student"), deployed_runtime=runner.runtime))
    return fits, throughputs, memory


def _serving_memory(context: RunContext, results: dict[Path, dict[str, Any]],
                    roles: dict[str, Path]) -> dict[str, Memory]:
    """``memory.<model>``: each timed model (teacher, student) served at batch 1 by a process of its own."""
    if not context.config.score.measure_memory:
        return {}
    return {role: _memory_of(context, path, results[path], 1) for role, path in roles.items()
            if "latency" in results[path]}


def _memory_of(context: RunContext, path: Path, result: dict[str, Any], batch_size: int) -> Memory:
    """Peak RSS of a fresh process that loads ``path`` through its runner and answers ``batch_size`` test requests
    (measured once per artifact and batch size)."""
    cache = result.setdefault("memory", {})
    if batch_size in cache:
        return cache[batch_size]
    from .memory import measure_serving_memory

    runner: Runner = result["runner"]
    encoder, items = result["encoder"], result["items"]
    batch = encoder.generation_batch([items[i % len(items)] for i in range(batch_size)])
    model_cfg = context.config.model
    served = measure_serving_memory(path, batch, work_dir=context.work_dir / "memory",
                                    max_new_tokens=context.vertical.max_answer_tokens, eos_id=encoder.eos_id,
                                    pad_id=encoder.pad_id, threads=context.config.score.threads,
                                    allow_pickle=model_cfg.allow_pickle, trust_remote_code=model_cfg.trust_remote_code)
    how = (f"a fresh process loads {runner.label} ({runner.runtime}) and answers {served.batch_size} test "
           f"request(s) of up to {served.prompt_tokens} prompt tokens with up to {served.new_tokens} new tokens")
    if served.baseline_rss_bytes is not None:
        how += f"; {served.baseline_rss_bytes:,} B of it is the interpreter and libraries before the model loads"
    if served.error:
        how = f"not measured: {served.error}"
    cache[batch_size] = Memory(peak_rss_bytes=served.peak_rss_bytes, baseline_rss_bytes=served.baseline_rss_bytes,
                               runtime=runner.runtime, batch_size=served.batch_size,
                               prompt_tokens=served.prompt_tokens, new_tokens=served.new_tokens, how=how)
    return cache[batch_size]


def _measure_throughput(context: RunContext, target: Any, result: dict[str, Any], *,
                        stand_in: bool = False) -> Throughput:
    """Forwards over ``target.batch_size`` test requests at once (test rows repeated when there are fewer), timed
    by the same method as latency; at the latency's batch size, the latency's own forwards. ``stand_in``: the
    result is of another runtime than the target's (an estimate for it, marked so)."""
    cfg = context.config.score
    runner: Runner = result["runner"]
    latency: Latency = result["latency"]
    if target.batch_size == latency.batch_size:
        samples = result["prefill_samples"]
        how = (f"{runner.label} ({runner.runtime}) on {latency.cpu}, {latency.threads} threads: the latency "
               f"measurement itself (median of its {len(samples)} prefills over a batch of {target.batch_size} after "
               f"{latency.warmup} warm-up)")
    else:
        items = result["items"]
        batch = result["encoder"].generation_batch([items[i % len(items)] for i in range(target.batch_size)])
        samples = runner.prefill_ms(batch, warmup=cfg.latency_warmup, repeats=cfg.latency_repeats,
                                    threads=cfg.threads)
        how = (f"{runner.label} ({runner.runtime}) on {latency.cpu}, {latency.threads} threads, median of "
               f"{len(samples)} prefills over a batch of {target.batch_size} after {cfg.latency_warmup} warm-up "
               "(timed as latency is)")
    p50 = float(np.median(samples))
    if stand_in:
        how += f"; the target runs {target.runtime}, which did not serve this model here"
    return Throughput(target=target.name, runtime=target.runtime, batch_size=target.batch_size, measured=not stand_in,
                      requests_per_s=round(target.batch_size / p50 * 1000.0, 2), batch_p50_ms=round(p50, 3), how=how)


def _inventory(directory: Path | None) -> dict[str, Any] | None:
    """Op types and opset over every graph of an ONNX export directory."""
    if directory is None or not (directory / "export.json").is_file():
        return None
    from ..export.onnx_format import read_report

    report = read_report(directory)
    op_types: set[str] = set()
    for path in report.inventories.values():
        op_types |= set(json.loads(Path(path).read_text())["op_types"])
    return {"opset": report.opset, "op_types": sorted(op_types)}


def _write_predictions(path: Path, rows: list[Row], answers: list[str]) -> None:
    with path.open("w") as handle:
        for row, answer in zip(rows, answers):
            handle.write(json.dumps({"id": row.id, "question": row.question, "reference": row.answer,
                                     "prediction": answer}) + "\n")
