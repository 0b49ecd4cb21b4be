"""The ``score`` stage: measures every model the run produced and writes the scorecard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.batches import BatchEncoder
from ..engine import RunContext, StageResult, git_revision, package_versions
from ..errors import PluginError
from ..models.figures import model_figures
from ..schemas import MetricSpec, Row
from .generate import generate_answers
from .hardware import check_target, count_linear_macs, read_inventory
from .scorecard import Latency, ObjectiveCheck, Scorecard, Size
from .timing import measure_torch_latency, peak_rss_bytes

TORCH_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compute_metrics(specs: list[MetricSpec], predictions: list[str], rows: list[Row]) -> dict[str, float]:
    """Every metric on (predictions, references); a value out of its declared range is a plugin error."""
    references = [row.answer for row in rows]
    values: dict[str, float] = {}
    for spec in specs:
        value = float(spec.compute(predictions, references, rows))
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
        card_metrics: dict[str, dict[str, float]] = {}
        latency: dict[str, Latency] = {}
        sizes: dict[str, Size] = {}
        params: dict[str, int] = {}
        notes: list[str] = []
        scored: dict[Path, str] = {}
        probes: dict[str, dict[str, Any]] = {}  # per model: what the hardware checks need
        for name in cfg.models:
            if name not in context.artifacts:
                notes.append(f"{name}: not produced by this pipeline, not scored")
                continue
            path = context.artifacts[name].resolve()
            if path in scored:  # e.g. no compression stage ran: the student is the teacher
                other = scored[path]
                card_metrics[name] = card_metrics[other]
                for table in (latency, sizes, params, probes):
                    if other in table:
                        table[name] = table[other]  # type: ignore[index]
                notes.append(f"{name} is the same model as {other} (no stage changed it)")
                continue
            model, processor = context.load_model(name)
            encoder = BatchEncoder(processor, context.prompt)
            image_size = processor.image_processor.size["height"]
            rows = context.split("test", image_size).rows
            items = encoder.encode_all(rows)
            answers = generate_answers(model, encoder, items, batch_size=cfg.batch_size,
                                       max_new_tokens=vertical.max_answer_tokens, label=f"score {name}")
            card_metrics[name] = compute_metrics(specs, answers, rows)
            figures = model_figures(model, path)
            params[name] = figures["params"]
            sizes[name] = Size(bytes=figures["size_bytes"],
                               weight_bytes=sum(figures["weight_bytes_by_component"].values()),
                               by_component=figures["weight_bytes_by_component"])
            one = encoder.generation_batch(items[:1])
            if name in ("teacher", "student"):
                latency[name] = Latency(**measure_torch_latency(
                    model, one, warmup=cfg.latency_warmup, repeats=cfg.latency_repeats, threads=cfg.threads))
            if name != "base":
                probes[name] = {"model": model, "batch": one, "weight_bytes": sizes[name].weight_bytes}
            _write_predictions(context.work_dir / f"predictions-{name}.jsonl", rows, answers)
            scored[path] = name
        accuracy = {m: values[primary.name] for m, values in card_metrics.items()}
        retention = None
        if "teacher" in accuracy and "student" in accuracy and accuracy["teacher"] > 0:
            retention = round(accuracy["student"] / accuracy["teacher"], 6)
        targets = self._targets(context, probes.get("student", {}), latency)
        probes.clear()
        objectives = _objectives(vertical.objectives, accuracy, retention)
        card = Scorecard(
            vertical=vertical.name, metric=primary.name, higher_is_better=primary.higher_is_better,
            accuracy=accuracy, retention=retention, metrics=card_metrics, latency=latency, size=sizes,
            params=params, peak_rss_bytes=peak_rss_bytes(), targets=targets, objectives=objectives,
            verdict=all(o.ok for o in objectives) if objectives else None,
            skipped_rows=context.skipped_rows(), test_rows=len(rows) if card_metrics else 0,
            stages=dict(context.figures), notes=notes,
            provenance={"config": context.raw_config, "seed": context.config.seed, "versions": package_versions(),
                        "git_revision": git_revision(), "run_dir": str(context.run_dir),
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        )
        card.write(context.work_dir)
        if "student" in context.artifacts and card.accuracy:
            from .modelcard import write_model_card

            write_model_card(card, context.artifacts["student"])
        return StageResult(artifacts={"scorecard": "scorecard.json"},
                           figures={"accuracy": accuracy, "retention": retention})

    @staticmethod
    def _targets(context: RunContext, student: dict[str, Any], latency: dict[str, Latency]) -> list:
        if not student:
            return []
        model = student["model"]
        dtype = TORCH_DTYPES.get(next(model.parameters()).dtype, "fp32")
        macs = count_linear_macs(model, student["batch"])
        measured = {"torch": latency["student"]} if "student" in latency else {}
        inventory = read_inventory(context.artifacts.get("onnx_inventory"))
        return [check_target(t, model_dtype=dtype, weight_bytes=student["weight_bytes"], config=model.config,
                             macs=macs, measured=measured, inventory=inventory) for t in context.targets()]


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
    import json

    with path.open("w") as handle:
        for row, answer in zip(rows, answers):
            handle.write(json.dumps({"id": row.id, "question": row.question, "reference": row.answer,
                                     "prediction": answer}) + "\n")
