"""The stages of an update run (``dsvl-adapt update``), around the core's distill, quantize, export and score.

``update.parent``    the parent's teacher (as ``base`` and ``teacher``) and its pruned, distilled student
``update.finetune``  a fresh LoRA adapter on the parent's teacher: new rows (+ replay rows, + LwF / EWC terms),
                     merged into the new teacher; the adapter itself and the next replay buffer are kept. For a
                     model from a reference preset, a full-parameter phase first (``update.full``)
``update.distill``   the core's distillation from the new teacher into the parent's student (its pruned
                     structure kept), on the new rows plus the replay rows
``update.score``     the parent's and the new version's deployed artifacts on the old test split, the new test
                     rows and the general set: ``lineage.*`` of the scorecard, and the ``forgetting_update``
                     objective (``objectives.max_forgetting``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, validate
from ..data.batches import BatchEncoder, Encoded
from ..data.loading import load_configured_split
from ..data.replay import with_general_replay
from ..engine import STAGE_RECORD, RunContext, StageResult, on_main_process, seed_everything
from ..errors import ConfigError
from ..inject.distill import DistillStage
from ..inject.finetune import full_phase, lora_model
from ..inject.training import Trainer
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.figures import model_figures
from ..schemas import Row
from .buffer import next_buffer, read_buffer, select_rows, with_new_share, write_buffer
from .lineage import ParentRun, lineage_chain, read_parent
from .losses import EwcPenalty, MarkingEncoder, UpdateLoss, diagonal_fisher

BUFFER_DIR = "replay"
#: the stages whose seconds are an update's training time (the prune stages run with ``update.reprune=true``)
TRAINING_STAGES = ("update.finetune", "prune.structural", "prune.weights", "update.distill")


def _update(context: RunContext) -> Any:
    update = context.config.update
    if update is None:
        raise ConfigError("the update.* stages run in a run made by `dsvl-adapt update` (the config has no update "
                          "section)")
    return update


def parent_of(context: RunContext) -> ParentRun:
    """The parent run, refused when its manifest changed since the update was configured."""
    update = _update(context)
    parent = read_parent(update.parent)
    if parent.manifest_sha256 != update.parent_manifest_sha256:
        raise ConfigError(f"the parent {update.parent} changed since this update began (manifest sha256 "
                          f"{parent.manifest_sha256[:12]}…, recorded {update.parent_manifest_sha256[:12]}…); start a "
                          "new update of it")
    return parent


def parent_config(parent: ParentRun) -> RunConfig:
    return validate(parent.config)


def old_rows(context: RunContext, parent: ParentRun, image_size: int) -> tuple[list[Row], str]:
    """The earlier rows an update can replay: the parent's buffer, or (a first run) its train split."""
    buffer = parent.artifacts.get(BUFFER_DIR)
    if buffer is not None and buffer.is_dir():
        return read_buffer(buffer), f"the replay buffer of {parent.run_dir.name}"
    config = parent_config(parent)
    rows = load_configured_split(config, context.registry, "train", image_size).rows
    return rows, f"the train split of {parent.run_dir.name}"


class UpdateParentStage:
    name = "update.parent"
    description = "take the parent's teacher and its pruned, distilled student as this version's starting point"

    def run(self, context: RunContext) -> StageResult:
        parent = parent_of(context)
        artifacts = {"base": str(parent.artifacts["teacher"]), "teacher": str(parent.artifacts["teacher"]),
                     "previous_teacher": str(parent.artifacts["teacher"]),
                     "student": str(parent.artifacts["student"])}
        if "deploy" in parent.artifacts:
            artifacts["parent_deploy"] = str(parent.artifacts["deploy"])
        return StageResult(artifacts=artifacts, figures={
            "parent": str(parent.run_dir), "parent_manifest_sha256": parent.manifest_sha256,
            "parent_version": parent.version, "version": _update(context).version,
            "parent_artifacts": {k: str(v) for k, v in parent.artifacts.items()},
            "parent_prune_weights": parent.figures.get("prune.weights", {}).get("per_layer", {}),
        })


class UpdateFinetuneStage:
    name = "update.finetune"
    description = ("the parent's teacher learns the new rows (+ replay, LwF, EWC): a full-parameter phase for "
                   "reference presets, then a fresh LoRA adapter, merged -> teacher")

    def run(self, context: RunContext) -> StageResult:
        update = _update(context)
        parent = parent_of(context)
        lora = context.config.finetune.lora
        work = context.work_dir
        model, processor = context.load_model("teacher")
        image_size = processor.image_processor.size["height"]
        encoder = BatchEncoder(processor, context.prompt)
        new_rows = context.split("train", image_size).rows
        earlier, earlier_from = old_rows(context, parent, image_size)
        seed = context.config.seed
        replay_rows = (select_rows(earlier, update.replay.size, update.replay.selection, seed)
                       if update.replays else [])
        new_items = encoder.encode_all(new_rows)
        replay_items = encoder.encode_all(replay_rows)
        mixed = with_new_share(new_items, replay_items, update.replay.training_share)
        train = with_general_replay(context, processor, mixed, context.config.finetune.replay_general)
        validation = encoder.encode_all(context.split("validation", image_size).rows)
        figures: dict[str, Any] = {"strategy": update.strategy, "new_rows": len(new_items),
                                   "new_rows_repeated_to": len(mixed) - len(replay_items),
                                   "replay_rows": len(replay_items), "replay_from": earlier_from,
                                   "general_rows": len(train) - len(mixed)}

        previous = None
        if update.strategy == "replay+lwf":
            previous, _ = load_checkpoint(context.artifact("previous_teacher"))
        marking = MarkingEncoder(encoder, replay_items)

        def update_loss(trained: torch.nn.Module, phase: str) -> UpdateLoss:
            """The strategy's loss for ``trained`` (EWC's Fisher over the parameters this phase trains)."""
            ewc = None
            if update.strategy == "replay+ewc":
                fisher = diagonal_fisher(trained, encoder, replay_items, batches=update.ewc.fisher_batches,
                                         batch_size=lora.train.batch_size)
                ewc = EwcPenalty(trained, fisher, update.ewc.weight)
                figures.setdefault("ewc", {})[phase] = ewc.figures()
            return UpdateLoss(previous_teacher=previous, lwf_weight=update.lwf.weight,
                              temperature=update.lwf.temperature, ewc=ewc)

        if full_phase_runs(context):  # finetune.full's schedule, update.full's steps
            schedule = context.config.finetune.full.model_copy(update={"steps": update.full.steps})
            model, _, figures["full"] = full_phase(
                model, processor, marking, schedule, work / "full", train, validation, seed=seed,
                label=f"update (full, {update.strategy})", section="update.full", device=context.config.device,
                loss_for=lambda trained: update_loss(trained, "full"))

        seed_everything(seed + 1)
        model.requires_grad_(False)
        peft_model = lora_model(model, lora)
        loss = update_loss(peft_model, "lora")
        trainer = Trainer(peft_model, marking, lora.train,
                          checkpoint_dir=work / "lora" / "checkpoints", seed=seed + 1,
                          label=f"update (LoRA, {update.strategy})", section="finetune.lora.train", loss_fn=loss,
                          device=context.config.device)
        result = trainer.train(train, validation)
        trained = trainer.accelerator.unwrap_model(trainer.model)
        on_main_process(lambda: trained.save_pretrained(str(work / "adapter")))  # this increment's delta, kept
        teacher = trained.merge_and_unload()
        teacher.requires_grad_(True)
        teacher.eval()
        on_main_process(lambda: save_checkpoint(teacher, processor, work / "teacher", role="teacher",
                                                vertical=context.vertical.name, update=update.strategy))
        kept = next_buffer(earlier, new_rows, size=update.replay.size, new_share=update.replay.new_share,
                           rule=update.replay.selection, seed=seed)
        origin = f"v{update.version} {context.run_dir.name}"
        on_main_process(lambda: write_buffer(kept, work / BUFFER_DIR, origin=origin))
        figures.update({"lora": {**result.as_dict(), "trainable_params": sum(
            p.numel() for p in peft_model.parameters() if p.requires_grad)},
            "buffer": {"rows": len(kept), "size": update.replay.size, "selection": update.replay.selection,
                       "answers": len({row.answer for row in kept})},
            **model_figures(teacher, work / "teacher")})
        artifacts = {"teacher": "teacher", "adapter": "adapter", BUFFER_DIR: BUFFER_DIR}
        if update.reprune:
            artifacts["student"] = "teacher"  # the prune stages that follow start from the new teacher
        return StageResult(artifacts=artifacts, figures=figures)


def full_phase_runs(context: RunContext) -> bool:
    """Whether the update trains every weight before its adapter (``update.full``)."""
    full = _update(context).full
    wanted = full.when == "always" or (full.when == "auto" and context.config.model.preset is not None)
    return wanted and full.steps > 0


class UpdateDistillStage(DistillStage):
    name = "update.distill"
    description = "re-distill the new teacher into the parent's student (its pruned structure kept): new + replay rows"

    def train_items(self, context: RunContext, encoder: BatchEncoder, processor: Any) -> list[Encoded]:
        update = _update(context)
        image_size = processor.image_processor.size["height"]
        new = encoder.encode_all(context.split("train", image_size).rows)
        replay = encoder.encode_all(read_buffer_rows_used(context, image_size, update)) if update.replays else []
        return with_general_replay(context, processor, with_new_share(new, replay, update.replay.training_share),
                                   context.config.distill.replay_general)

    def kept_zero_layers(self, context: RunContext) -> list[str]:
        if context.config.update is not None and context.config.update.reprune:
            return super().kept_zero_layers(context)
        return list(context.figures.get("update.parent", {}).get("parent_prune_weights", {}))


def read_buffer_rows_used(context: RunContext, image_size: int, update: Any) -> list[Row]:
    """The replay rows the fine-tune learnt from (the same selection of the parent's earlier rows)."""
    earlier, _ = old_rows(context, parent_of(context), image_size)
    return select_rows(earlier, update.replay.size, update.replay.selection, context.config.seed)


class UpdateScoreStage:
    name = "update.score"
    description = "score the parent and this version on the old test split, the new rows and the general set"

    def run(self, context: RunContext) -> StageResult:
        from ..score.scorecard import load_scorecard
        from .scoring import compare_versions, forgetting_check

        update = _update(context)
        parent = parent_of(context)
        scorecard_path = context.artifact("scorecard")
        card = load_scorecard(scorecard_path)
        parent_artifact = parent.artifacts.get("deploy") or parent.artifacts["student"]
        update_artifact = context.artifacts.get("deploy") or context.artifact("student")
        scores, forgetting = compare_versions(context, parent_config(parent), parent_artifact, update_artifact)
        increment = {"source": str(context.config.data.source)}
        manifest = json.loads((context.run_dir / "manifest.json").read_text())
        if isinstance(manifest.get("data"), dict):
            increment["fingerprint"] = manifest["data"].get("digest")
        increment.update({f"{name}_rows": context.figures.get("update.finetune", {}).get("new_rows")
                          for name in ("train",)})
        increment["test_rows"] = scores["new"].rows if "new" in scores else None
        from ..score.lineage import Lineage

        card.lineage = Lineage(
            version=update.version, parent=str(parent.run_dir), parent_manifest_sha256=parent.manifest_sha256,
            strategy=update.strategy, increment=increment, chain=lineage_chain(context.run_dir),
            scores=scores, accuracy_old=_pair(scores.get("old")), accuracy_new=_pair(scores.get("new")),
            accuracy_general=_pair(scores.get("general")),
            forgetting=None if forgetting is None else forgetting[0],
            forgetting_ci=None if forgetting is None else list(forgetting[1:]),
            replay={k: v for k, v in context.figures.get("update.finetune", {}).items()
                    if k in ("replay_rows", "replay_from", "buffer", "ewc")},
            training_seconds=training_seconds(context.run_dir),
            artifacts={"parent": str(parent_artifact), "update": str(update_artifact)})
        objectives = context.vertical.objectives
        card.objectives = [c for c in card.objectives if c.name != "forgetting_update"]
        card.objectives.append(forgetting_check(scores.get("old"), objectives.max_forgetting))
        from ..score.verdict import verdict_of

        card.verdict = verdict_of(card.objectives)
        card.write(context.work_dir)
        if "student" in context.artifacts:
            from ..score.modelcard import write_model_card

            example = context.split("test", image_size_of(context)).rows[0]
            write_model_card(card, context.artifacts["student"], system=context.prompt.system,
                             question=context.prompt.render(example.question, example.meta))
        return StageResult(artifacts={"scorecard": "scorecard.json"},
                           figures={"lineage": card.lineage.model_dump(), "verdict": card.verdict})


def image_size_of(context: RunContext) -> int:
    """The image size of this run's model (the split cache is keyed by it)."""
    sizes = [size for (_, size) in context._splits]  # noqa: SLF001 (the splits the score stage loaded)
    if sizes:
        return sizes[0]
    _, processor = context.load_model("teacher")
    return int(processor.image_processor.size["height"])


def _pair(score: Any) -> dict[str, float]:
    return {} if score is None else {"parent": score.parent, "update": score.update}


def training_seconds(run_dir: Path) -> float | None:
    """Seconds the update's training stages took (their ``stage.json`` records)."""
    total, found = 0.0, False
    for name in TRAINING_STAGES:
        path = run_dir / "stages" / name / STAGE_RECORD
        if path.is_file():
            total += float(json.loads(path.read_text())["seconds"])
            found = True
    return round(total, 3) if found else None
