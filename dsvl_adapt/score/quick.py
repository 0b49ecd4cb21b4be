"""A quick accuracy probe on the validation split, recorded by every model-changing stage."""

from __future__ import annotations

from typing import Any

from ..data.batches import BatchEncoder
from .generate import generate_answers


def validation_accuracy(context: Any, model: Any, processor: Any) -> float:
    """The vertical's primary metric on the validation split, by greedy generation."""
    from .stage import compute_metrics

    encoder = BatchEncoder(processor, context.prompt)
    image_size = processor.image_processor.size["height"]
    rows = context.split("validation", image_size).rows
    answers = generate_answers(model, encoder, encoder.encode_all(rows), batch_size=context.config.score.batch_size,
                               max_new_tokens=context.vertical.max_answer_tokens, label="validation")
    primary = context.registry.metrics.get(context.vertical.primary_metric)
    return compute_metrics([primary], answers, rows)[primary.name]
