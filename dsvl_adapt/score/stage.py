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
from .hardware import check_target, count_linear_macs, estimate_throughput
from .runners import Runner, open_runner
from .scorecard import Latency, ObjectiveCheck, RuntimeScore, Scorecard, Size, TargetFit, Throughput
from .timing import peak_rss_bytes


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
            runner = open_runner(path, load_torch=_loader(context), threads=cfg.threads)
            encoder = BatchEncoder(runner.processor, context.prompt)
            rows = context.split("test", runner.processor.image_processor.size["height"]).rows
            items = encoder.encode_all(rows)
            answers = runner.answers(encoder, items, batch_size=cfg.batch_size,
                                     max_new_tokens=vertical.max_answer_tokens, label=f"score {label}")
            _write_predictions(context.work_dir / f"predictions-{label}.jsonl", rows, answers)
            result: dict[str, Any] = {"runner": runner, "metrics": compute_metrics(specs, answers, rows),
                                      "general": _general_accuracy(context, runner, label)}
            if label != "base":
                one = encoder.generation_batch(items[:1])
                result["latency"] = Latency(**runner.latency(one, warmup=cfg.latency_warmup,
                                                             repeats=cfg.latency_repeats, threads=cfg.threads))
                if runner.torch_model is not None and runner.dtype == "fp32":
                    result["macs"] = count_linear_macs(runner.torch_model, one)
                result["encoder"], result["items"] = encoder, items  # batches at each target's size
            results[path] = result
            if label not in ("student", "teacher"):
                runner.torch_model = runner.onnx_model = None  # free memory early
        card = self._card(context, specs, primary, plan, results, len(rows))
        if rows:
            common = Counter(row.answer for row in rows).most_common(1)[0][0]
            card.constant_answer = compute_metrics(specs, [common] * len(rows), rows)
        card.write(context.work_dir)
        if "student" in context.artifacts and card.accuracy:
            from .modelcard import write_model_card

            example = rows[0] if rows else None
            write_model_card(card, context.artifacts["student"], system=context.prompt.system,
                             question=context.prompt.render(example.question, example.meta) if example
                             else "Describe any defect.")
        return StageResult(artifacts={"scorecard": "scorecard.json"},
                           figures={"accuracy": card.accuracy, "retention": card.retention})

    def _card(self, context: RunContext, specs: list[MetricSpec], primary: MetricSpec, plan: dict[Path, str],
              results: dict[Path, dict[str, Any]], test_rows: int) -> Scorecard:
        roles = _roles(context)
        metrics, latency, sizes, params, notes = {}, {}, {}, {}, []
        for role, path in roles.items():
            result = results[path]
            runner: Runner = result["runner"]
            metrics[role] = result["metrics"]
            if "latency" in result:
                latency[role] = result["latency"]
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
                                                  size_bytes=runner.size_bytes)
        accuracy = {role: values[primary.name] for role, values in metrics.items()}
        general = {role: results[path]["general"] for role, path in roles.items()
                   if results[path]["general"] is not None}
        if "base" in general and "teacher" in general and general["teacher"] < general["base"] - 0.1:
            notes.append(f"forgetting: general-capability accuracy fell from {general['base']:.2f} (base) to "
                         f"{general['teacher']:.2f} (teacher) with fine-tuning")
        retention = None
        if "teacher" in accuracy and "student" in accuracy and accuracy["teacher"] > 0:
            retention = round(accuracy["student"] / accuracy["teacher"], 6)
        objectives = _objectives(context.vertical.objectives, accuracy, retention)
        targets, throughput = _targets(context, results)
        return Scorecard(
            vertical=context.vertical.name, metric=primary.name, higher_is_better=primary.higher_is_better,
            accuracy=accuracy, retention=retention, metrics=metrics, general=general, latency=latency, runtimes=runtimes, size=sizes,
            params=params, peak_rss_bytes=peak_rss_bytes(), targets=targets, throughput=throughput,
            objectives=objectives, verdict=all(o.ok for o in objectives) if objectives else None,
            skipped_rows=context.skipped_rows(), test_rows=test_rows, stages=dict(context.figures), notes=notes,
            provenance={"config": context.raw_config, "seed": context.config.seed, "versions": package_versions(),
                        "git_revision": git_revision(), "run_dir": str(context.run_dir),
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        )


def _general_accuracy(context: RunContext, runner: Runner, label: str) -> float | None:
    """Exact match on the core's general visual questions: flags what fine-tuning made the model forget."""
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
    answers = runner.answers(encoder, encoder.encode_all(rows), batch_size=context.config.score.batch_size,
                             max_new_tokens=4, label=f"general {label}")
    return round(exact_match(answers, [row.answer for row in rows]), 6)


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


def _targets(context: RunContext, results: dict[Path, dict[str, Any]]) -> tuple[list[TargetFit], list[Throughput]]:
    """Fit of the deployed student on every target, and its throughput at each target's batch size: measured
    where the target is a CPU whose runtime ran the student here, a roofline estimate otherwise."""
    roles = _roles(context)
    if "student" not in roles:
        return [], []
    deployed = results[roles["student"]]
    runner: Runner = deployed["runner"]
    here = {r["runner"].runtime: r for path, r in results.items()
            if path in _student_paths(context) and "latency" in r}
    measured = {runtime: r["latency"] for runtime, r in here.items()}
    macs = next((r["macs"] for r in here.values() if "macs" in r), 0)
    inventory = _inventory(context.artifacts.get("onnx"))
    fits, throughputs = [], []
    for target in context.targets():
        source = here.get(target.runtime) if target.device == "cpu" else None
        throughput = (_measure_throughput(context, target, source) if source is not None else
                      estimate_throughput(target, macs=macs, weight_bytes=runner.weight_bytes, dtype=runner.dtype))
        throughputs.append(throughput)
        fits.append(check_target(target, model_dtype=runner.dtype, weight_bytes=runner.weight_bytes,
                                 config=runner.config, macs=macs, measured=measured, inventory=inventory,
                                 throughput=throughput))
    return fits, throughputs


def _measure_throughput(context: RunContext, target: Any, result: dict[str, Any]) -> Throughput:
    """Forward over ``target.batch_size`` test requests at once (test rows repeated when there are fewer)."""
    cfg = context.config.score
    runner: Runner = result["runner"]
    items = result["items"]
    batch = result["encoder"].generation_batch([items[i % len(items)] for i in range(target.batch_size)])
    samples = runner.batch_ms(batch, warmup=1, repeats=max(3, cfg.latency_repeats // 3), threads=cfg.threads)
    p50 = float(np.median(samples))
    latency = result["latency"]
    return Throughput(target=target.name, runtime=target.runtime, batch_size=target.batch_size, measured=True,
                      requests_per_s=round(target.batch_size / p50 * 1000.0, 2), batch_p50_ms=round(p50, 3),
                      how=f"{runner.label} ({runner.runtime}) on {latency.cpu}, {latency.threads} threads, median of "
                          f"{len(samples)} forwards over a batch of {target.batch_size} after 1 warm-up")


def _inventory(directory: Path | None) -> dict[str, Any] | None:
    """Op types and opset over every graph of an ONNX export directory."""
    if directory is None or not (directory / "export.json").is_file():
        return None
    from ..export.onnx import read_report

    report = read_report(directory)
    op_types: set[str] = set()
    for path in report.inventories.values():
        op_types |= set(json.loads(Path(path).read_text())["op_types"])
    return {"opset": report.opset, "op_types": sorted(op_types)}


def _objectives(objectives: Any, accuracy: dict[str, float], retention: float | None) -> list[ObjectiveCheck]:
    checks = []
    if objectives.min_retention is not None:
        checks.append(ObjectiveCheck(name="min_retention", ok=retention is not None and retention >=
                                     objectives.min_retention, value=retention, limit=objectives.min_retention))
    if objectives.min_accuracy is not None:
        value = accuracy.get("student")
        checks.append(ObjectiveCheck(name="min_accuracy", ok=value is not None and value >= objectives.min_accuracy,
                                     value=value, limit=objectives.min_accuracy))
    return checks


def _write_predictions(path: Path, rows: list[Row], answers: list[str]) -> None:
    with path.open("w") as handle:
        for row, answer in zip(rows, answers):
            handle.write(json.dumps({"id": row.id, "question": row.question, "reference": row.answer,
                                     "prediction": answer}) + "\n")
