"""Calibration batches from the vertical's train split (for data-driven pruning and quantization)."""

from __future__ import annotations

from typing import Any

import torch

from .batches import BatchEncoder


def calibration_batches(context: Any, processor: Any, *, count: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """``count`` labelled training batches, the first rows of the train split (deterministic)."""
    encoder = BatchEncoder(processor, context.prompt)
    image_size = processor.image_processor.size["height"]
    rows = context.split("train", image_size).rows[: count * batch_size]
    items = encoder.encode_all(rows)
    return [encoder.training_batch(items[i: i + batch_size]) for i in range(0, len(items), batch_size)]
