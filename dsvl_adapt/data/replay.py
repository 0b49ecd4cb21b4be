"""Rows of the core general set, encoded for training: pretraining of the reference presets, and replay.

Replay (rehearsal) keeps general ability while a model learns a vertical: a share of the rows a
training phase sees come from the general set's train split (the rows the reference presets were
pretrained on), encoded with the general set's own prompt. The rows are added to the phase's row
list, and the training loop shuffles that whole list every epoch, so each epoch holds exactly
``share`` general rows and each batch holds them in that proportion on average::

    train = with_general_replay(context, processor, train, context.config.finetune.replay_general)
"""

from __future__ import annotations

from typing import Any, Sequence

from .batches import BatchEncoder, Encoded

GENERAL_DATASET = "general-vqa"  # registered by the core (dsvl_adapt.builtins), with its prompt of the same name


def general_encoder(registry: Any, processor: Any) -> BatchEncoder:
    """A batch encoder for the general set: the model's processor with the general set's prompt."""
    return BatchEncoder(processor, registry.prompts.get(GENERAL_DATASET))


def general_rows(registry: Any, split: str, size: int, seed: int, image_size: int) -> list[Any]:
    """``size`` validated rows of the general set's ``split`` at ``image_size`` pixels."""
    from ..schemas import DatasetRequest
    from .loading import load_split

    request = DatasetRequest(split=split, size=size, seed=seed, image_size=image_size)  # type: ignore[arg-type]
    return load_split(registry.datasets.get(GENERAL_DATASET), request).rows


def general_items(registry: Any, processor: Any, split: str, size: int, seed: int) -> list[Encoded]:
    """``size`` rows of the general set's ``split``, encoded for ``processor``'s model."""
    rows = general_rows(registry, split, size, seed, processor.image_processor.size["height"])
    return general_encoder(registry, processor).encode_all(rows)


def replay_rows(vertical_rows: int, share: float) -> int:
    """How many general rows make up ``share`` of the mixed list (0 when ``share`` is 0)."""
    if not 0 <= share < 1:
        raise ValueError(f"replay share must be in [0, 1), got {share}")
    return round(vertical_rows * share / (1 - share))


def with_general_replay(context: Any, processor: Any, train: Sequence[Encoded], share: float) -> list[Encoded]:
    """``train`` followed by general rows that make up ``share`` of the result (``train`` itself when 0)."""
    count = replay_rows(len(train), share)
    if count == 0:
        return list(train)
    return [*train, *general_items(context.registry, processor, "train", count, context.config.seed)]
