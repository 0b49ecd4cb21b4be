"""Turn rows into DeepSeek-VL batches: image tokens where the model expects them, labels on answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..models.checkpoint import render_prompt
from ..schemas import PromptTemplate, Row

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One row encoded: prompt ids (image tokens expanded), answer ids, and its pixel tensors."""

    prompt_ids: list[int]
    answer_ids: list[int]
    pixels: dict[str, torch.Tensor]


class BatchEncoder:
    """Encodes rows with a model's processor and a vertical's prompt template."""

    def __init__(self, processor: Any, prompt: PromptTemplate) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.prompt = prompt
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id

    def prompt_text(self, row: Row) -> str:
        return render_prompt(self.prompt.system, self.prompt.render(row.question, row.meta))

    def encode(self, row: Row) -> Encoded:
        features = self.processor(text=[self.prompt_text(row)], images=[row.image], return_tensors="pt")
        prompt_ids = features["input_ids"][0].tolist()
        pixels = {k: v[0] for k, v in features.items() if k.endswith("pixel_values")}
        answer_ids = self.tokenizer(" " + row.answer, add_special_tokens=False)["input_ids"] + [self.eos_id]
        return Encoded(prompt_ids, answer_ids, pixels)

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
