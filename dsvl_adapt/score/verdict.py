"""The verdict: a vertical's objectives checked against a scorecard, floors and forgetting included.

Objectives (``dsvl_adapt.schemas.Objectives``) and what each check needs from the scorecard:

* ``teacher_floor`` / ``student_floor`` (``floor_margin``): the primary metric must reach
  ``bar = floor + floor_margin x (best - floor)`` and beat the floor, where the floor is the
  score of a constant answer (``constant_answer``) and ``best`` the metric's perfect value. A
  retention of 4.0 between two models below the floor means nothing: both must clear it.
* ``min_retention``: ``retention`` (student / teacher).
* ``min_accuracy``: the student's primary metric.
* ``forgetting_finetune`` / ``forgetting_compression`` (``max_forgetting``): the drop of
  general-capability accuracy, teacher vs base and student vs teacher; it fails only when the
  drop is outside its paired interval (``general_comparisons[..].forgetting``) and larger than
  ``max_forgetting``.

A check that cannot be made (a model not scored, no general set, no test rows) has ``ok: null``.
The verdict is true when every check passed, false when one failed, and null otherwise: an
unknown check is never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schemas import Objectives
from .scorecard import Floor, ObjectiveCheck, Scorecard, TeacherDiagnosis

# general_comparisons key -> objective name
FORGETTING = {"teacher_vs_base": "forgetting_finetune", "student_vs_teacher": "forgetting_compression"}


def floor_bar(card: Scorecard, margin: float, *, best: float) -> Floor | None:
    """The constant-answer floor of the primary metric and the bar a trained model must reach; None without a
    floor (no test rows scored)."""
    floor = card.constant_answer.get(card.metric)
    if floor is None:
        return None
    return Floor(metric=card.metric, constant_answer=floor, margin=margin,
                 bar=round(floor + margin * (best - floor), 6))


def clears(value: float, floor: Floor, higher_is_better: bool) -> bool:
    """``value`` reaches the bar and beats the floor itself (a margin of 0 still needs more than a constant)."""
    if higher_is_better:
        return value >= floor.bar and value > floor.constant_answer
    return value <= floor.bar and value < floor.constant_answer


def _interval_note(card: Scorecard, model: str) -> str:
    ci = card.accuracy_ci.get(model)
    return f"95% interval [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def objective_checks(card: Scorecard, objectives: Objectives, *, best: float = 1.0) -> list[ObjectiveCheck]:
    """Every declared objective checked against ``card`` (``best``: the primary metric's perfect value)."""
    checks: list[ObjectiveCheck] = []
    higher = card.higher_is_better
    if objectives.floor_margin is not None:
        floor = floor_bar(card, objectives.floor_margin, best=best)
        for model in ("teacher", "student"):
            value = card.accuracy.get(model)
            name = f"{model}_floor"
            if floor is None:
                checks.append(ObjectiveCheck(name=name, ok=None, value=value, limit=0.0, higher_is_better=higher,
                                             note="no constant-answer floor: no test rows were scored"))
            elif value is None:
                checks.append(ObjectiveCheck(name=name, ok=None, value=None, limit=floor.bar, higher_is_better=higher,
                                             note=f"the {model} was not scored (score.models)"))
            else:
                checks.append(ObjectiveCheck(
                    name=name, ok=clears(value, floor, higher), value=value, limit=floor.bar, higher_is_better=higher,
                    note=(f"floor {floor.constant_answer:.3f} (constant answer) + {floor.margin:g} x the way to "
                          f"{best:g}; {_interval_note(card, model)}").rstrip("; ")))
    if objectives.min_retention is not None:
        retention = card.retention
        comparison = card.comparisons.get("student_vs_teacher")
        note = "" if retention is not None else "no retention: the teacher or the student was not scored (or is 0)"
        if comparison is not None and retention is not None:
            ci = f"[{card.retention_ci[0]:.3f}, {card.retention_ci[1]:.3f}]" if card.retention_ci else "—"
            note = (f"95% interval {ci}; student - teacher {comparison.difference:+.3f} "
                    f"[{comparison.ci[0]:+.3f}, {comparison.ci[1]:+.3f}]: "
                    f"{'within noise' if comparison.within_noise else 'outside noise'}")
        checks.append(ObjectiveCheck(name="min_retention", ok=None if retention is None else
                                     retention >= objectives.min_retention, value=retention,
                                     limit=objectives.min_retention, note=note))
    if objectives.min_accuracy is not None:
        value = card.accuracy.get("student")
        ok = None if value is None else (value >= objectives.min_accuracy if higher
                                         else value <= objectives.min_accuracy)
        checks.append(ObjectiveCheck(name="min_accuracy", ok=ok, value=value, limit=objectives.min_accuracy,
                                     higher_is_better=higher,
                                     note=_interval_note(card, "student") if value is not None
                                     else "the student was not scored (score.models)"))
    if objectives.max_forgetting is not None:
        for key, name in FORGETTING.items():
            comparison = card.general_comparisons.get(key)
            if comparison is None:
                before, after = key.split("_vs_")[::-1]
                checks.append(ObjectiveCheck(
                    name=name, ok=None, value=None, limit=objectives.max_forgetting, higher_is_better=False,
                    note=f"general capability of {before} and {after} not both measured (score.general_size is 0, "
                         "or a model was not scored)"))
                continue
            drop = round(-comparison.difference, 6) + 0.0  # no -0.0
            significant = bool(comparison.forgetting)
            before_score = card.general.get(comparison.before)
            nothing_to_lose = (card.general_floor is not None and before_score is not None
                               and before_score <= card.general_floor)
            checks.append(ObjectiveCheck(
                name=name, ok=not (significant and drop > objectives.max_forgetting), value=drop,
                limit=objectives.max_forgetting, higher_is_better=False,
                note=(f"general accuracy {comparison.before} -> {comparison.after}: drop {drop:+.3f}, paired 95% "
                      f"interval of the change [{comparison.ci[0]:+.3f}, {comparison.ci[1]:+.3f}]: "
                      f"{'forgetting' if significant else 'within noise'}"
                      + (f"; the {comparison.before} scores {before_score:.3f}, at or below the general set's floor "
                         f"{card.general_floor:.3f}: it had no general ability to lose, so this check cannot show "
                         "forgetting here (a checkpoint that knows the general set, or model.pretrain_general=true "
                         "for a reference preset, makes it informative)" if nothing_to_lose else ""))))
    return checks


def verdict_of(checks: list[ObjectiveCheck]) -> bool | None:
    """False when a check failed, true when every check passed, null when none is declared or one is unknown."""
    if not checks or any(c.ok is False for c in checks):
        return None if not checks else False
    return None if any(c.ok is None for c in checks) else True


def apply_verdict(card: Scorecard, objectives: Objectives, *, best: float = 1.0) -> Scorecard:
    """Fill ``card.floor``, ``card.objectives`` and ``card.verdict`` (in place; returns ``card``)."""
    if objectives.floor_margin is not None:
        card.floor = floor_bar(card, objectives.floor_margin, best=best)
    card.objectives = objective_checks(card, objectives, best=best)
    card.verdict = verdict_of(card.objectives)
    return card


# -- a teacher that did not learn ---------------------------------------------------------------
@dataclass(frozen=True)
class TrainingFacts:
    """How the teacher was trained, as far as the diagnosis needs it."""

    from_preset: bool  # a reference preset (random weights) rather than a checkpoint
    full_when: str
    full_ran: bool
    full_steps: int
    full_lr: float
    lora_steps: int
    lora_lr: float
    train_rows: int | None = None
    full_keys: str = "finetune.full"  # where the full phase's step count and switch are set (an update: update.full)


def diagnose_teacher(card: Scorecard, facts: TrainingFacts) -> TeacherDiagnosis | None:
    """When the teacher does not clear the floor's bar: why, most likely, and which options address it."""
    floor, value = card.floor, card.accuracy.get("teacher")
    if floor is None or value is None or clears(value, floor, card.higher_is_better):
        return None
    at_floor = value <= floor.constant_answer if card.higher_is_better else value >= floor.constant_answer
    metric = card.metric
    if at_floor:
        summary = (f"The teacher did not learn the task: its {metric} {value:.3f} is at or below the "
                   f"{floor.constant_answer:.3f} that answering every row with the most common answer scores.")
    else:
        summary = (f"The teacher learnt little: its {metric} {value:.3f} is above the constant-answer floor "
                   f"{floor.constant_answer:.3f} but below the bar {floor.bar:.3f} (floor_margin {floor.margin:g}).")
    causes: list[str] = []
    remedies: list[str] = []
    if not facts.full_ran:
        when = "finetune.full_when" if facts.full_keys == "finetune.full" else f"{facts.full_keys}.when"
        why = (f"{when}=never" if facts.full_when == "never" else
               f"{facts.full_keys}.steps=0" if facts.full_when == "always" else
               f"{when}=auto runs it for reference presets only")
        causes.append(f"only LoRA trained the model (the full-parameter phase did not run: {why}); LoRA alone "
                      "does not teach a freshly initialised or badly matched checkpoint")
        remedies.append(f"{when}=always (with {facts.full_keys}.steps > 0) to train every weight before LoRA")
    else:
        causes.append(f"too few full-parameter steps ({facts.full_steps})")
        remedies.append(f"more steps: {facts.full_keys}.steps={max(2 * facts.full_steps, 100)} "
                        f"(now {facts.full_steps})")
    if facts.lora_steps == 0:
        causes.append("LoRA did not run (finetune.lora.train.steps=0)")
    remedies.append(f"more LoRA steps: finetune.lora.train.steps={max(2 * facts.lora_steps, 60)} "
                    f"(now {facts.lora_steps})")
    causes.append("a learning rate that stalls the loss (too high) or barely moves it (too low)")
    lrs = ([f"finetune.full.lr (now {facts.full_lr:g})"] if facts.full_ran else []) + \
          [f"finetune.lora.train.lr (now {facts.lora_lr:g})"]
    remedies.append("another learning rate: " + ", ".join(lrs) + "; from random weights 1e-4..2e-4 learn on "
                    "reference-small where 1e-3 stalled at chance (conf/finetune/default.yaml)")
    if facts.train_rows is not None and facts.train_rows < 200:
        causes.append(f"few training rows ({facts.train_rows})")
        remedies.append(f"more data: data.train_size (now {facts.train_rows}) or more rows in data.source")
    return TeacherDiagnosis(summary=summary, causes=causes, remedies=remedies)
