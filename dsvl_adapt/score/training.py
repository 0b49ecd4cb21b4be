"""The training phases of a run as the scorecard shows them: steps taken of those planned, why each phase
stopped, and where its validation loss and exact match ended (read from the stages' recorded figures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# (stage, phase key in its figures or None for the stage's own, label)
PHASES = (("finetune", "full", "fine-tune (full)"), ("finetune", "lora", "fine-tune (LoRA)"),
          ("distill", None, "distill"))

STOP_REASONS = {
    "steps": "every step ran",
    "patience": "validation loss stopped improving (patience); the best weights were kept",
    "exact_match": "validation exact match reached stop_at_exact_match",
}


@dataclass
class TrainingPhase:
    label: str
    steps: int
    planned: int | None
    stop_reason: str
    precision: str
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def evaluations(self) -> list[dict[str, float]]:
        return [record for record in self.history if "validation_loss" in record]

    @property
    def last_evaluation(self) -> dict[str, float] | None:
        return self.evaluations[-1] if self.evaluations else None

    @property
    def steps_text(self) -> str:
        """``250 of 300``: the steps taken of those the schedule planned (older records: the steps alone)."""
        return f"{self.steps} of {self.planned}" if self.planned is not None else str(self.steps)

    @property
    def why(self) -> str:
        if self.stop_reason == "exact_match" and self.steps == 0:
            return "the model already reached stop_at_exact_match before any step: nothing to gain"
        return STOP_REASONS.get(self.stop_reason, self.stop_reason)


def training_phases(stages: dict[str, Any]) -> list[TrainingPhase]:
    """The phases the run's training stages recorded, in pipeline order (none when no stage trained)."""
    phases = []
    for stage, key, label in PHASES:
        figures = stages.get(stage)
        if key is not None:
            figures = (figures or {}).get(key)
        if not isinstance(figures, dict) or "history" not in figures:
            continue
        phases.append(TrainingPhase(label=label, steps=int(figures.get("steps", 0)),
                                    planned=figures.get("planned_steps"),
                                    stop_reason=str(figures.get("stop_reason", "steps")),
                                    precision=str(figures.get("precision", "fp32")),
                                    history=list(figures["history"])))
    return phases


def training_markdown(stages: dict[str, Any]) -> list[str]:
    phases = training_phases(stages)
    if not phases:
        return []
    lines = ["## Training", "",
             "| phase | steps | validation loss | validation exact match | precision | why it stopped |",
             "|---|---|---|---|---|---|"]
    for phase in phases:
        last = phase.last_evaluation or {}
        loss = f"{last['validation_loss']:.4f}" if "validation_loss" in last else "—"
        exact = f"{last['validation_exact_match']:.3f}" if "validation_exact_match" in last else "—"
        lines.append(f"| {phase.label} | {phase.steps_text} | {loss} | {exact} | {phase.precision} | {phase.why} |")
    lines += ["", "Validation figures at the phase's last evaluation. Exact match: the share of validation rows "
                  "greedy decoding answers word for word, read from teacher-forced logits (docs/training.md).", ""]
    return lines


__all__ = ["TrainingPhase", "training_markdown", "training_phases"]
