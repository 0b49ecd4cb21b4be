"""The ``load`` stage: the base model, from a local checkpoint or a reference preset."""

from __future__ import annotations

from ..data.report import data_figures
from ..engine import RunContext, StageResult
from ..errors import ModelLoadError
from .checkpoint import build_reference, load_checkpoint, save_checkpoint
from .presets import get_preset
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
            data = data_figures(context, processor.image_processor.size["height"])
            return StageResult(artifacts={"base": str(cfg.path.resolve())},
                               figures={"source": str(cfg.path), **model_figures(model, cfg.path), "data": data})
        preset = get_preset(cfg.preset or "")
        train = context.split("train", preset.image_size)
        prompt = context.prompt
        texts = [prompt.system, prompt.user]
        texts += [f"{row.question} {row.answer}" for row in train.rows]
        tokenizer = train_tokenizer(texts, vocab_size=cfg.tokenizer_vocab_size)
        model, processor = build_reference(preset, tokenizer, seed=context.config.seed)
        directory = save_checkpoint(model, processor, context.work_dir / "base",
                                    preset=preset.name, vertical=context.vertical.name)
        return StageResult(artifacts={"base": "base"},
                           figures={"source": f"preset {preset.name}", "vocab_size": len(tokenizer),
                                    **model_figures(model, directory),
                                    "data": data_figures(context, preset.image_size)})


def _check_architecture(model, path) -> None:
    kind = type(model).__name__
    if not kind.startswith("DeepseekVL"):
        raise ModelLoadError(f"{path} holds a {kind}; dsvl-adapt adapts DeepSeek-VL models "
                             "(DeepseekVLForConditionalGeneration or DeepseekVLHybridForConditionalGeneration)")
