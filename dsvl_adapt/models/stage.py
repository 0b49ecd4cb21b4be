"""The ``load`` stage: the base model, from a local checkpoint or a reference preset.

A reference preset is built with random weights and, with ``model.pretrain_general`` (the default),
given general ability first: trained once on the core general set and then taken from a cache
(:mod:`dsvl_adapt.models.pretrain`). A local checkpoint is used as it is.
"""

from __future__ import annotations

from typing import Any

from ..engine import RunContext, StageResult
from ..errors import ModelLoadError
from ..inject.training import on_main_process
from .checkpoint import build_reference, load_checkpoint, save_checkpoint
from .presets import get_preset
from .pretrain import pretrained_base
from .tokenizer import train_tokenizer
from .figures import model_figures


class LoadStage:
    name = "load"
    description = "load the base model (a local checkpoint, or a reference preset with an offline tokenizer)"

    def run(self, context: RunContext) -> StageResult:
        cfg = context.config.model
        if cfg.path is not None:
            model, processor = load_checkpoint(cfg.path, allow_pickle=cfg.allow_pickle,
                                               trust_remote_code=cfg.trust_remote_code)
            _check_architecture(model, cfg.path)
            return StageResult(artifacts={"base": str(cfg.path.resolve())},
                               figures={"source": str(cfg.path), **model_figures(model, cfg.path)})
        preset = get_preset(cfg.preset or "")
        train = context.split("train", preset.image_size)
        prompt = context.prompt
        texts = [prompt.system, prompt.user]
        texts += [f"{row.question} {row.answer}" for row in train.rows]
        tokenizer = train_tokenizer(texts, vocab_size=cfg.tokenizer_vocab_size)
        model, processor = build_reference(preset, tokenizer, seed=context.config.seed)
        figures: dict[str, Any] = {"source": f"preset {preset.name}", "vocab_size": len(tokenizer)}
        if cfg.pretrain_general:
            model, processor, figures["pretrain_general"] = pretrained_base(
                model, processor, context.registry, preset=preset, settings=cfg.pretrain, seed=context.config.seed,
                device=context.config.device, cache_dir=context.config.cache_dir, work_dir=context.work_dir)
        directory = context.work_dir / "base"
        on_main_process(lambda: save_checkpoint(model, processor, directory, preset=preset.name,
                                                vertical=context.vertical.name,
                                                pretrained_general=bool(cfg.pretrain_general)))
        return StageResult(artifacts={"base": "base"}, figures={**figures, **model_figures(model, directory)})


def _check_architecture(model, path) -> None:
    kind = type(model).__name__
    if not kind.startswith("DeepseekVL"):
        raise ModelLoadError(f"{path} holds a {kind}; dsvl-adapt adapts DeepSeek-VL models "
                             "(DeepseekVLForConditionalGeneration or DeepseekVLHybridForConditionalGeneration)")
