"""Greedy answers for a split, batched, through a PyTorch model."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.batches import BatchEncoder, Encoded
from ..progress import progress_bar


@torch.no_grad()
def generate_answers(model: Any, encoder: BatchEncoder, items: Sequence[Encoded], *, batch_size: int,
                     max_new_tokens: int, label: str = "generate") -> list[str]:
    """Greedy-decode an answer for every item (left-padded batches)."""
    model.eval()
    answers: list[str] = []
    with progress_bar(label, total=len(items)) as advance:
        for start in range(0, len(items), batch_size):
            chunk = items[start: start + batch_size]
            batch = encoder.generation_batch(chunk)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=encoder.pad_id, eos_token_id=encoder.eos_id)
            answers += encoder.decode(output[:, batch["input_ids"].shape[1]:])
            advance(len(chunk))
    return answers
