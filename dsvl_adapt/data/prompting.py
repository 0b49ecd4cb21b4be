"""Prompts go through the checkpoint's chat template: one rendering for training, scoring and the runtimes.

A row (image, question, reference answer) becomes a chat conversation: an optional ``system`` message
holding the vertical's system text, then a ``user`` message holding the image and the vertical's
question (``PromptTemplate.user`` filled from the row). The model's processor renders it with
``processor.apply_chat_template`` — the same call ``transformers.pipeline("image-text-to-text")``, a
chat server or the model card's snippet make — so the model is trained and scored on exactly the text
its users will send it.

A processor without a chat template gets DeepSeek-VL's conversation format
(:data:`dsvl_adapt.models.tokenizer.DEEPSEEK_VL_CHAT_TEMPLATE`, the one the reference presets ship),
attached to the processor (:func:`~dsvl_adapt.models.tokenizer.ensure_chat_template`, which
``save_checkpoint`` also applies) so that every model directory saved from it carries the format it
was trained in.

Training labels: the answer is what the template appends to the generation prompt when the
conversation ends with the ``assistant`` message, up to the tokenizer's end-of-sentence token; its
ids follow the prompt's ids, so the labels cover exactly the answer and the end token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelLoadError
from ..models.tokenizer import ensure_chat_template
from ..schemas import PromptTemplate, Row

Message = dict[str, Any]


def conversation(prompt: PromptTemplate, row: Row, answer: str | None = None) -> list[Message]:
    """The chat messages of one row: [system], user (image + question) [, assistant (``answer``)]."""
    messages: list[Message] = []
    if prompt.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    messages.append({"role": "user", "content": [{"type": "image", "image": row.image},
                                                 {"type": "text", "text": prompt.render(row.question, row.meta)}]})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


@dataclass
class RenderedRow:
    """One row's generation prompt through the chat template: its ids (image tokens expanded) and pixels."""

    prompt_ids: list[int]
    pixels: dict[str, torch.Tensor]


class ChatPrompter:
    """Renders rows with a processor's chat template and a vertical's :class:`PromptTemplate`."""

    def __init__(self, processor: Any, prompt: PromptTemplate) -> None:
        self.processor = processor
        self.prompt = prompt
        self.tokenizer = processor.tokenizer
        self.template_added = ensure_chat_template(processor)

    def prompt_text(self, row: Row) -> str:
        """The rendered generation prompt (image placeholder not expanded)."""
        return self.processor.apply_chat_template(conversation(self.prompt, row), add_generation_prompt=True,
                                                  tokenize=False)

    def render(self, row: Row) -> RenderedRow:
        """Prompt ids and pixels exactly as ``apply_chat_template(tokenize=True)`` makes them: what the
        image-text-to-text pipeline feeds the model."""
        features = self.processor.apply_chat_template(conversation(self.prompt, row), add_generation_prompt=True,
                                                      tokenize=True, return_dict=True, return_tensors="pt")
        return RenderedRow(prompt_ids=features["input_ids"][0].tolist(),
                           pixels={k: v[0] for k, v in features.items() if k.endswith("pixel_values")})

    def answer_text(self, row: Row) -> str:
        """What the template writes after the generation prompt for the row's answer, without the end token."""
        prompt_text = self.prompt_text(row)
        full_text = self.processor.apply_chat_template(conversation(self.prompt, row, answer=row.answer),
                                                       add_generation_prompt=False, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ModelLoadError(
                "the checkpoint's chat template does not render an assistant turn as a continuation of its "
                f"generation prompt (generation prompt ends {prompt_text[-40:]!r}, the conversation with the "
                f"answer reads {full_text[len(prompt_text) - 40: len(prompt_text) + 40]!r} there), so the answer "
                "tokens cannot be told apart from the prompt for training. Fix the template (chat_template.jinja "
                "in the model folder) so that the assistant message extends the add_generation_prompt text."
            )
        rest = full_text[len(prompt_text):]
        eos = self.tokenizer.eos_token
        rest = rest[: rest.index(eos)] if eos and eos in rest else rest.rstrip()
        if row.answer.strip() not in rest:
            raise ModelLoadError(f"the checkpoint's chat template drops the assistant's text (row {row.id}: "
                                 f"answer {row.answer!r} rendered as {rest!r}); fix chat_template.jinja")
        return rest

    def answer_ids(self, row: Row) -> list[int]:
        """Ids of :meth:`answer_text`, then the end-of-sentence id: the labelled part of a training sequence."""
        ids = self.tokenizer(self.answer_text(row), add_special_tokens=False)["input_ids"]
        return list(ids) + [self.tokenizer.eos_token_id]


__all__ = ["ChatPrompter", "RenderedRow", "conversation"]
