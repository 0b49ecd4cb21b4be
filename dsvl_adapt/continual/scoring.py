"""A version's deployed artifact scored on sets of rows, and two versions compared on the same rows.

Used by the ``update.score`` stage (parent vs update on the old test split, the new test rows and the general set)
and by ``dsvl-adapt rescore`` (one version on the latest test data). Every artifact is scored through its own
runtime (:func:`dsvl_adapt.score.runners.open_runner`), as the score stage does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import RunConfig
from ..data.batches import BatchEncoder
from ..data.loading import load_configured_split
from ..engine import RunContext
from ..schemas import Row
from ..score.intervals import bootstrap_interval, metric_on_rows, paired_difference, resample_indices
from ..score.lineage import SetScore
from ..score.runners import Runner, open_runner
from ..score.scorecard import ObjectiveCheck
from ..score.stage import _general_answers, _loader, answer_batch_size, compute_metrics


@dataclass
class Answered:
    """One artifact's answers on one set of rows, and what they score."""

    rows: Sequence[Any]
    answers: list[str]
    references: list[str]
    value: float
    metrics: dict[str, float | None]


def open_version(context: RunContext, path: Path) -> Runner:
    return open_runner(Path(path).resolve(), load_torch=_loader(context), threads=context.config.score.threads)


def answer_rows(context: RunContext, runner: Runner, rows: Sequence[Row], label: str) -> Answered:
    """``runner``'s answers on ``rows`` with the vertical's prompt, scored by its metrics (primary first)."""
    specs = [context.registry.metrics.get(name) for name in context.vertical.metrics]
    encoder = BatchEncoder(runner.processor, context.prompt)
    answers = runner.answers(encoder, encoder.encode_all(rows),
                             batch_size=answer_batch_size(context.config.score, runner),
                             max_new_tokens=context.vertical.max_answer_tokens, label=label)
    metrics = compute_metrics(specs, answers, list(rows))
    return Answered(rows, answers, [row.answer for row in rows], float(metrics[specs[0].name] or 0.0), metrics)


def answer_general(context: RunContext, runner: Runner, label: str) -> Answered | None:
    """``runner`` on the general set (None when ``score.general_size`` is 0)."""
    measured = _general_answers(context, runner, label)
    if measured is None:
        return None
    value, answers, references = measured
    return Answered(references, answers, references, value, {"exact_match": value})


def _row_score(context: RunContext, answered: Answered, general: bool) -> Any:
    if general:
        from ..metrics import exact_match

        return metric_on_rows(exact_match, answered.answers, answered.references, answered.references)
    primary = context.registry.metrics.get(context.vertical.metrics[0])
    return metric_on_rows(primary.compute, answered.answers, answered.references, answered.rows)


def set_score(context: RunContext, parent: Answered, update: Answered, *, general: bool = False) -> SetScore:
    """Parent vs update on the same rows: each with its interval, and the paired interval of the change."""
    draws = resample_indices(len(parent.answers), seed=context.config.seed)
    before, after = _row_score(context, parent, general), _row_score(context, update, general)
    change = paired_difference(before, after, draws)
    return SetScore(rows=len(parent.answers), parent=round(parent.value, 6), update=round(update.value, 6),
                    parent_ci=list(bootstrap_interval(before, draws)), update_ci=list(bootstrap_interval(after, draws)),
                    change=change.difference, change_ci=[change.low, change.high], within_noise=change.within_noise)


def compare_versions(context: RunContext, parent_config: RunConfig, parent_artifact: Path, update_artifact: Path
                     ) -> tuple[dict[str, SetScore], tuple[float, float, float] | None]:
    """Both deployed artifacts on the old test split, the new test rows and the general set; and the forgetting
    (old-split drop, parent - update) with its paired interval."""
    runners = {"parent": open_version(context, parent_artifact), "update": open_version(context, update_artifact)}
    image_size = runners["update"].processor.image_processor.size["height"]
    sets = {"old": load_configured_split(parent_config, context.registry, "test", image_size).rows,
            "new": context.split("test", image_size).rows}
    scores: dict[str, SetScore] = {}
    for name, rows in sets.items():
        answered = {version: answer_rows(context, runner, rows, f"{name} test {version}")
                    for version, runner in runners.items()}
        scores[name] = set_score(context, answered["parent"], answered["update"])
    general = {version: answer_general(context, runner, f"general {version}") for version, runner in runners.items()}
    if general["parent"] is not None and general["update"] is not None:
        scores["general"] = set_score(context, general["parent"], general["update"], general=True)
    old = scores["old"]
    forgetting = (round(-old.change, 6) + 0.0, round(-old.change_ci[1], 6) + 0.0, round(-old.change_ci[0], 6) + 0.0)
    return scores, forgetting


def forgetting_check(old: SetScore | None, limit: float | None) -> ObjectiveCheck:
    """``forgetting_update``: the old-split drop of the deployed model, parent -> update. It fails when the drop is
    larger than ``objectives.max_forgetting`` and outside its paired interval (a drop within noise is not
    forgetting, as for the general set); unknown when the old split was not scored or no limit is declared."""
    if old is None or limit is None:
        return ObjectiveCheck(name="forgetting_update", ok=None, value=None if old is None else -old.change,
                              limit=limit or 0.0, higher_is_better=False,
                              note="the old test split was not scored" if old is None
                              else "objectives.max_forgetting is null: not checked")
    drop = round(-old.change, 6) + 0.0
    significant = not old.within_noise and old.change < 0
    return ObjectiveCheck(
        name="forgetting_update", ok=not (significant and drop > limit), value=drop, limit=limit,
        higher_is_better=False,
        note=(f"old test split ({old.rows} rows), parent {old.parent:.3f} -> update {old.update:.3f}: drop "
              f"{drop:+.3f}, paired 95% interval of the change [{old.change_ci[0]:+.3f}, {old.change_ci[1]:+.3f}]: "
              f"{'forgetting' if significant else 'within noise' if old.within_noise else 'a gain'}"))
