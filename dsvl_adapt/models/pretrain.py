"""A pretrained reference base: a reference preset that has learnt the core general set, cached per machine.

The reference presets start from random weights; without this they know nothing general, and the
scorecard's general-capability row (the guard against forgetting) could never fire. With
``model.pretrain_general=true`` (off by default: it cost the vertical teacher accuracy, see
docs/general-ability.md) the ``load`` stage trains the fresh model on the general set's train split
(colours, shapes, counts, left/right) with the project's one training loop, then keeps the result in
a per-user cache folder. Later runs with the same inputs take it from there.

The cache key hashes everything the weights depend on: the preset's dimensions, the run's tokenizer
(it is trained on the vertical's text, so each vertical has its own base), the general set's
generator code and prompt, the seed, the training settings and the device. Entries are written
to a temporary folder and renamed into place, so a killed run never leaves a half entry.

Cache folder: ``<cache_dir>/pretrained`` when the run sets ``cache_dir``, else
``$XDG_CACHE_HOME/dsvl-adapt/pretrained`` (``~/.cache/dsvl-adapt/pretrained``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..config import GeneralPretrainSection
from .checkpoint import load_checkpoint, save_checkpoint
from .presets import Preset

PRETRAIN_FORMAT = 1  # bump when what a cached entry holds, or how it is trained, changes
RECORD = "pretrain.json"  # written last into an entry: the entry is complete when it exists


def cache_root(cache_dir: Path | None) -> Path:
    """Where pretrained bases are kept: under the run's ``cache_dir``, else the user's cache folder."""
    if cache_dir is not None:
        return Path(cache_dir) / "pretrained"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsvl-adapt" / "pretrained"


def _generator_digest() -> str:
    """The general set's generator code: a change to how rows are drawn makes a new key."""
    from ..data import general, synthetic

    digest = hashlib.sha256()
    for module in (general, synthetic):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def pretrain_key(preset: Preset, tokenizer: Any, settings: GeneralPretrainSection, *, seed: int, device: str,
                 prompt: Any) -> str:
    """Content key of a pretrained base: preset, tokenizer, general data, prompt, seed, settings and device."""
    parts = {
        "format": PRETRAIN_FORMAT,
        "preset": dataclasses.asdict(preset),
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "generator": _generator_digest(),
        "prompt": [prompt.system, prompt.user],
        "settings": settings.model_dump(mode="json"),
        "seed": seed,
        "device": device,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def general_accuracy_and_floor(model: torch.nn.Module, processor: Any, registry: Any, *, rows: int, seed: int,
                               batch_size: int = 16) -> tuple[float, float]:
    """Exact match on ``rows`` rows of the general validation split, and the most-common-answer floor there."""
    from ..data.replay import general_encoder, general_rows
    from ..metrics import exact_match
    from ..score.generate import generate_answers

    encoder = general_encoder(registry, processor)
    validation = general_rows(registry, "validation", rows, seed, processor.image_processor.size["height"])
    answers = generate_answers(model, encoder, encoder.encode_all(validation), batch_size=batch_size,
                               max_new_tokens=4, label="general accuracy")
    references = [row.answer for row in validation]
    floor_answer = Counter(references).most_common(1)[0][0]
    return (round(exact_match(answers, references), 6),
            round(exact_match([floor_answer] * len(references), references), 6))


def train_on_general(model: torch.nn.Module, processor: Any, registry: Any, settings: GeneralPretrainSection, *,
                     seed: int, device: str, checkpoint_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A full-parameter phase on the general set's train split, through the project's training loop."""
    from ..data.replay import general_encoder, general_items
    from ..inject.training import Trainer

    train = general_items(registry, processor, "train", settings.rows, seed)
    validation = general_items(registry, processor, "validation", settings.validation_rows, seed)
    model.train()
    model.requires_grad_(True)
    started = time.perf_counter()
    trainer = Trainer(model, general_encoder(registry, processor), settings, checkpoint_dir=checkpoint_dir,
                      seed=seed + 3, label="pretrain (general set)", device=device)
    result = trainer.train(train, validation)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    seconds = time.perf_counter() - started
    accuracy, floor = general_accuracy_and_floor(model, processor, registry, rows=settings.validation_rows,
                                                 seed=seed)
    return model, {**result.as_dict(), "seconds": round(seconds, 1), "general_accuracy": accuracy,
                   "general_floor": floor, "rows": settings.rows}


def pretrained_base(model: torch.nn.Module, processor: Any, registry: Any, *, preset: Preset,
                    settings: GeneralPretrainSection, seed: int, device: str, cache_dir: Path | None,
                    work_dir: Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """``model`` (a fresh reference preset) after general pretraining: from the cache, or trained and cached.

    Every process of a multi-process launch calls this; the main process decides whether the cache
    holds the entry (so all processes agree) and writes the entry.
    """
    from accelerate import PartialState

    state = PartialState()
    key = pretrain_key(preset, processor.tokenizer, settings, seed=seed, device=device,
                       prompt=registry.prompts.get("general-vqa"))
    entry = cache_root(cache_dir) / f"{preset.name}-{key}"
    hit = [(entry / RECORD).is_file()]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        hit = broadcast_object_list(hit)
    if hit[0]:
        if state.is_main_process:
            print(f"  pretrained {preset.name} base taken from the cache ({entry})", file=sys.stderr, flush=True)
        model, processor = load_checkpoint(entry)
        record = json.loads((entry / RECORD).read_text())
        return model, processor, {**record, "key": key, "cache": str(entry), "from_cache": True}

    if state.is_main_process:
        print(f"  {preset.name} learns the general set first: once on this machine, then kept in {entry.parent} "
              "(model.pretrain_general=false skips it)", file=sys.stderr, flush=True)
    model, record = train_on_general(model, processor, registry, settings, seed=seed, device=device,
                                     checkpoint_dir=work_dir / "pretrain-checkpoints")
    if state.is_main_process:
        _store(entry, model, processor, record)
        shutil.rmtree(work_dir / "pretrain-checkpoints", ignore_errors=True)
    state.wait_for_everyone()
    return model, processor, {**record, "key": key, "cache": str(entry), "from_cache": False}


def _store(entry: Path, model: torch.nn.Module, processor: Any, record: dict[str, Any]) -> None:
    """Write the entry beside its final place and rename it there; an unwritable cache only warns."""
    partial = entry.with_name(f".{entry.name}.{os.getpid()}.partial")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        save_checkpoint(model, processor, partial, role="pretrained reference base")
        (partial / RECORD).write_text(json.dumps(record, indent=2, default=str))
        try:
            os.replace(partial, entry)
        except OSError:  # another run stored the same key first: theirs is as good
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        print(f"warning: could not keep the pretrained base in {entry.parent} ({exc}); the next run trains it "
              "again (set cache_dir to a writable folder)", file=sys.stderr)
