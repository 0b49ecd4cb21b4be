"""The ``finetune`` stage: base capability on the vertical's data, merged into the teacher.

Phase 1 (full parameters) runs for models that start from random weights (the reference
presets), so the teacher actually knows the task. Phase 2 trains PEFT LoRA adapters on the
modules matched by ``finetune.lora.target_modules`` (a regex on full module paths) and merges
them into the weights. Both phases checkpoint; a killed run resumes inside the phase.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import LoraSection, TrainSchedule
from ..data.batches import BatchEncoder, Encoded
from ..data.replay import with_general_replay
from ..engine import RunContext, StageResult, seed_everything
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.figures import model_figures
from .training import Trainer, causal_lm_loss, on_main_process

DONE = "phase.json"


def lora_model(model: torch.nn.Module, lora: LoraSection) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters on the modules whose full path matches the regex."""
    import re

    from peft import LoraConfig, get_peft_model

    pattern = re.compile(lora.target_modules)
    matched = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    if not matched:
        raise ValueError(f"finetune.lora.target_modules={lora.target_modules!r} matches no Linear module; "
                         "module paths look like 'model.language_model.layers.0.self_attn.q_proj'")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, bias="none")
    return get_peft_model(model, config)


class FinetuneStage:
    name = "finetune"
    description = "fine-tune on the vertical's data (full phase for random-init presets, then LoRA) -> teacher"

    def run(self, context: RunContext) -> StageResult:
        cfg = context.config.finetune
        work = context.work_dir
        model, processor = context.load_model("base")
        encoder = BatchEncoder(processor, context.prompt)
        image_size = processor.image_processor.size["height"]
        train = encoder.encode_all(context.split("train", image_size).rows)
        train = with_general_replay(context, processor, train, cfg.replay_general)
        validation = encoder.encode_all(context.split("validation", image_size).rows)
        figures: dict[str, Any] = {}
        seed = context.config.seed

        full_wanted = cfg.full_when == "always" or (cfg.full_when == "auto" and context.config.model.preset)
        if full_wanted and cfg.full.steps > 0:
            model, processor, figures["full"] = full_phase(
                model, processor, encoder, cfg.full, work / "full", train, validation, seed=seed,
                label="finetune (full)", section="finetune.full", device=context.config.device)

        if cfg.lora.train.steps > 0:
            seed_everything(seed + 1)  # LoRA's initialisation must not depend on whether phase 1 ran in this process
            model.requires_grad_(False)
            peft_model = lora_model(model, cfg.lora)
            trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
            trainer = Trainer(peft_model, encoder, cfg.lora.train, checkpoint_dir=work / "lora" / "checkpoints",
                              seed=seed + 1, label="finetune (LoRA)", section="finetune.lora.train",
                              device=context.config.device)
            result = trainer.train(train, validation)
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.requires_grad_(True)  # merged weights stay frozen otherwise; pruning would then remove nothing
            model = merged
            figures["lora"] = {**result.as_dict(), "trainable_params": trainable}
        model.eval()
        teacher_dir = work / "teacher"
        on_main_process(lambda: save_checkpoint(model, processor, teacher_dir, role="teacher",
                                                vertical=context.vertical.name))
        figures.update(model_figures(model, teacher_dir))
        return StageResult(artifacts={"teacher": "teacher", "student": "teacher"}, figures=figures)


def full_phase(model: torch.nn.Module, processor: Any, encoder: BatchEncoder, schedule: TrainSchedule,
               phase_dir: Path, train: list[Encoded], validation: list[Encoded], *, seed: int, label: str,
               section: str, device: str, loss_for: Callable[[torch.nn.Module], Any] | None = None,
               ) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Every weight of ``model`` trained on ``schedule`` in ``phase_dir`` -> (model, processor, the phase's record).

    A finished phase (its ``phase.json``) is read back instead of trained again; an unfinished one resumes from
    its checkpoints. ``loss_for(model)`` gives the trainer's loss (the default: the causal-LM loss)."""
    if (phase_dir / DONE).is_file():
        model, processor = load_checkpoint(phase_dir / "model")
        return model, processor, json.loads((phase_dir / DONE).read_text())
    model.train()
    model.requires_grad_(True)
    trainer = Trainer(model, encoder, schedule, checkpoint_dir=phase_dir / "checkpoints", seed=seed, label=label,
                      section=section, device=device, loss_fn=causal_lm_loss if loss_for is None else loss_for(model))
    result = trainer.train(train, validation)
    model = trainer.accelerator.unwrap_model(trainer.model)
    record = result.as_dict()

    def save_full_phase() -> None:
        save_checkpoint(model, processor, phase_dir / "model")
        finish_phase(phase_dir, record)

    on_main_process(save_full_phase)
    return model, processor, record


def finish_phase(phase_dir: Path, record: dict[str, Any]) -> None:
    tmp = phase_dir / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(phase_dir / DONE)
