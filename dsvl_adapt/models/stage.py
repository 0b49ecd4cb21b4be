"""The ``load`` stage: the base model, from a local checkpoint or a reference preset.

It hands the loaded checkpoint on as ``base``, ``teacher`` and ``student``: a later ``finetune``
replaces the teacher and student, and without one, compression starts from the loaded checkpoint
(the base is then the teacher). The model is kept in the dtype ``model.dtype`` decides
(:func:`dsvl_adapt.models.dtype.resolve_dtype`).

A local checkpoint already in that dtype and stored as safetensors is not copied: the stage's
``base`` folder links to its files (never to its ``README.md``, so that a model card written for
the student cannot overwrite the user's). Otherwise (another dtype, or pickled weights) the stage
writes a converted safetensors copy there, so later stages never unpickle or convert again.

A reference preset is built with random weights and, with ``model.pretrain_general=true``,
given general ability first: trained once on the core general set and then taken from a cache
(:mod:`dsvl_adapt.models.pretrain`). The stage runs on every process of a multi-process launch (the
pretraining is a training loop); only the main process writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.report import data_figures
from ..engine import RunContext, StageResult, on_main_process
from ..errors import ModelLoadError
from .checkpoint import build_reference, load_checkpoint, save_checkpoint
from .checkpoint_files import weight_files, weights_dtype
from .dtype import dtype_name, resolve_dtype
from .figures import model_figures
from .presets import get_preset
from .pretrain import pretrained_base
from .tokenizer import train_tokenizer

BASE = "base"
# Files of a user's checkpoint that later stages must not see through the linked folder.
NOT_LINKED = ("README.md",)


class LoadStage:
    name = "load"
    description = "load the base model (a local checkpoint, or a reference preset with an offline tokenizer)"

    def run(self, context: RunContext) -> StageResult:
        cfg = context.config.model
        directory = context.work_dir / BASE
        stages = context.config.pipeline.stages
        if cfg.path is not None:
            figures = self._local(context, cfg.path, directory, stages)
        else:
            figures = self._preset(context, directory, stages)
        return StageResult(artifacts={"base": BASE, "teacher": BASE, "student": BASE}, figures=figures)

    @staticmethod
    def _local(context: RunContext, path: Path, directory: Path, stages: list[str]) -> dict[str, Any]:
        cfg = context.config.model
        files = weight_files(path, cfg.allow_pickle)  # load_checkpoint below warns about a mixed folder
        stored = weights_dtype(path, files)
        dtype = resolve_dtype(cfg.dtype, stored, device=context.config.device, stages=stages)
        model, processor = load_checkpoint(path, dtype=dtype, allow_pickle=cfg.allow_pickle,
                                           trust_remote_code=cfg.trust_remote_code)
        _check_architecture(model, path)
        figures: dict[str, Any] = {"source": str(path), "weights_read": files.read,
                                   "checkpoint_dtype": stored, "dtype": dtype_name(dtype)}
        if files.note:
            figures["weights_note"] = files.note
        if files.pickled or stored != dtype_name(dtype):
            on_main_process(lambda: save_checkpoint(model, processor, directory, source=str(path)))
            figures["copy"] = (f"converted to {dtype_name(dtype)} safetensors" if not files.pickled else
                               f"pickled weights rewritten as {dtype_name(dtype)} safetensors")
        else:
            _link_files(path, directory, skip=set(files.ignored) | set(NOT_LINKED))
            figures["copy"] = "none: the stage's folder links to the checkpoint's files"
        image_size = processor.image_processor.size["height"]
        return {**figures, **model_figures(model, directory), "data": data_figures(context, image_size)}

    @staticmethod
    def _preset(context: RunContext, directory: Path, stages: list[str]) -> dict[str, Any]:
        cfg = context.config.model
        preset = get_preset(cfg.preset or "")
        train = context.split("train", preset.image_size)
        prompt = context.prompt
        texts = [prompt.system, prompt.user]
        texts += [f"{row.question} {row.answer}" for row in train.rows]
        tokenizer = train_tokenizer(texts, vocab_size=cfg.tokenizer_vocab_size)
        dtype = resolve_dtype(cfg.dtype, "float32", device=context.config.device, stages=stages)
        model, processor = build_reference(preset, tokenizer, seed=context.config.seed)
        figures: dict[str, Any] = {"source": f"preset {preset.name}", "vocab_size": len(tokenizer)}
        if cfg.pretrain_general:  # in float32, then kept in the run's dtype
            model, processor, figures["pretrain_general"] = pretrained_base(
                model, processor, context.registry, preset=preset, settings=cfg.pretrain, seed=context.config.seed,
                device=context.config.device, cache_dir=context.config.cache_dir, work_dir=context.work_dir)
        if dtype != torch.float32:
            model = model.to(dtype)
        on_main_process(lambda: save_checkpoint(model, processor, directory, preset=preset.name,
                                                vertical=context.vertical.name,
                                                pretrained_general=bool(cfg.pretrain_general)))
        return {**figures, "dtype": dtype_name(dtype), **model_figures(model, directory),
                "data": data_figures(context, preset.image_size)}


def _link_files(source: Path, directory: Path, skip: set[str]) -> None:
    """Make ``directory`` a view of ``source``: a symbolic link to each of its files (not subfolders)."""
    directory.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.resolve().iterdir()):
        if not item.is_file() or item.name in skip:
            continue
        staged = directory / f".{item.name}.{os.getpid()}.link"
        os.symlink(item, staged)
        os.replace(staged, directory / item.name)  # atomic: safe when several processes run the stage


def _check_architecture(model: torch.nn.Module, path: Path) -> None:
    kind = type(model).__name__
    if not kind.startswith("DeepseekVL"):
        raise ModelLoadError(f"{path} holds a {kind}; dsvl-adapt adapts DeepSeek-VL models "
                             "(DeepseekVLForConditionalGeneration or DeepseekVLHybridForConditionalGeneration)")
