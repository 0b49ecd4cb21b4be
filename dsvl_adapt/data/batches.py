"""Turn rows into DeepSeek-VL batches: image tokens where the model expects them, labels on answers.

Every row is rendered through the checkpoint's chat template (:mod:`dsvl_adapt.data.prompting`), so
training, calibration, validation, scoring and the exported runtimes all see the prompt that
``processor.apply_chat_template`` (and ``pipeline("image-text-to-text")``) gives the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..schemas import PromptTemplate, Row
from .prompting import ChatPrompter

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One row encoded: prompt ids (image tokens expanded), answer ids, and its pixel tensors."""

    prompt_ids: list[int]
    answer_ids: list[int]
    pixels: dict[str, torch.Tensor]


class BatchEncoder:
    """Encodes rows with a model's processor (its chat template) and a vertical's prompt template.

    A processor without a chat template is given DeepSeek-VL's (see
    :func:`dsvl_adapt.models.tokenizer.ensure_chat_template`), so a model saved with it carries the format.
    """

    def __init__(self, processor: Any, prompt: PromptTemplate) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.prompt = prompt
        self.prompter = ChatPrompter(processor, prompt)
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id

    def prompt_text(self, row: Row) -> str:
        """The generation prompt the chat template renders for ``row``."""
        return self.prompter.prompt_text(row)

    def encode(self, row: Row) -> Encoded:
        rendered = self.prompter.render(row)
        return Encoded(rendered.prompt_ids, self.prompter.answer_ids(row), rendered.pixels)

    def encode_all(self, rows: Sequence[Row]) -> list[Encoded]:
        return [self.encode(row) for row in rows]

    def training_batch(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Right-padded prompt + answer; labels are the answer tokens only."""
        sequences = [e.prompt_ids + e.answer_ids for e in items]
        length = max(map(len, sequences))
        input_ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(items), length), dtype=torch.long)
        for i, (e, seq) in enumerate(zip(items, sequences)):
            input_ids[i, : len(seq)] = torch.tensor(seq)
            attention[i, : len(seq)] = 1
            labels[i, len(e.prompt_ids): len(seq)] = torch.tensor(e.answer_ids)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, **self._pixels(items)}

    def generation_batch(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded prompts, ready for ``generate``."""
        length = max(len(e.prompt_ids) for e in items)
        input_ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), length), dtype=torch.long)
        for i, e in enumerate(items):
            input_ids[i, length - len(e.prompt_ids):] = torch.tensor(e.prompt_ids)
            attention[i, length - len(e.prompt_ids):] = 1
        return {"input_ids": input_ids, "attention_mask": attention, **self._pixels(items)}

    @staticmethod
    def _pixels(items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([e.pixels[key] for e in items]) for key in items[0].pixels}

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
