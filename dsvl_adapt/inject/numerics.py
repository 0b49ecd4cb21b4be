"""Numerically safe training: a NaN or inf loss, gradient or weight stops the phase with the likely cause.

The training loop calls these before each optimizer step (so no non-finite update is applied),
after each validation pass and on the weights entering and leaving a phase. The error names the
stage and phase, the config section, the step, what was non-finite, the likely causes with the
settings that address them, and what was kept; it is raised before the stage is recorded as
complete, so the run can never go on with a broken model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..config import TrainSchedule
from ..errors import StageError


class NonFiniteTrainingError(StageError):
    """A training phase met a NaN or inf loss, gradient or weight."""


@dataclass(frozen=True)
class PhaseInfo:
    """What the messages say about a phase: its label (``finetune (LoRA)``) and config section
    (``finetune.lora.train``)."""

    label: str
    section: str
    schedule: TrainSchedule


def is_finite(value: float | torch.Tensor) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return math.isfinite(value)


def first_non_finite(modules: Iterable[torch.nn.Module]) -> str | None:
    """The name of the first parameter or buffer holding a NaN or inf, or None."""
    for module in modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return name
    return None


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def generic_causes(phase: PhaseInfo, step: int, precision: str) -> list[str]:
    """Causes that apply to every phase, most likely first for the step it happened at."""
    s, path = phase.schedule, phase.section
    causes = []
    if step <= 1:
        causes.append("the loss is not finite at the first step, before any update: the loss settings or the input "
                      "model are at fault, not the learning rate")
    else:
        causes.append(f"training diverged after {step - 1} update(s): lower {path}.lr (now {_fmt(s.lr)}), keep "
                      f"{path}.max_grad_norm set (now {_fmt(s.max_grad_norm)}) or raise {path}.warmup_steps "
                      f"(now {s.warmup_steps})")
    if precision != "fp32":
        causes.append(f"the phase runs in {precision} autocast, whose range can overflow: try {path}.precision=fp32")
    return causes


def non_finite_message(phase: PhaseInfo, *, step: int, what: str, causes: Sequence[str],
                       kept_checkpoint: int | None) -> str:
    """The full error text: where, what, likely causes with their fixes, and what was kept."""
    lines = [f"{phase.label} [{phase.section}], step {step} of {phase.schedule.steps}: {what}.",
             "Likely cause" + ("s" if len(causes) > 1 else "") + ":"]
    lines += [f"  - {cause}" for cause in causes]
    kept = (f"its last checkpoint (step {kept_checkpoint}) is kept" if kept_checkpoint is not None
            else "no checkpoint of this phase was written")
    lines.append(f"The stage stopped before being recorded as complete; {kept}. Change the setting and run with a "
                 "new run_dir (cache_dir reuses the finished earlier stages).")
    return "\n".join(lines)
