"""A byte-level BPE tokenizer trained offline on a vertical's text.

Nothing is downloaded: the reference presets get a tokenizer trained in seconds with the
`tokenizers` library on the vertical's prompts, questions and answers, wrapped as a
``PreTrainedTokenizerFast`` that carries DeepSeek-VL's special tokens.
"""

from __future__ import annotations

from typing import Any, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS = "<｜begin▁of▁sentence｜>"  # full-width bars (U+FF5C) and U+2581, as in DeepSeek's tokenizer
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image_placeholder>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE)

# DeepSeek-VL's conversation format ("deepseek" SFT template), the chat template the reference presets ship:
# the system text, then turns separated by blank lines, the image placeholder at the start of the user's
# text, each assistant turn closed by the end-of-sentence token, and "Assistant:" as the generation prompt:
#   "{system}\n\nUser: <image_placeholder>{question}\n\nAssistant:"  ->  " {answer}<｜end▁of▁sentence｜>"
# It is also given to a local checkpoint's processor that has no chat template of its own.
DEEPSEEK_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for c in message['content'] if c['type'] == 'text' -%}{{ c['text'] }}{%- endfor -%}"
    "{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'User: ' }}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' -%}" + IMAGE + "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'Assistant: ' }}"
    "{%- for c in message['content'] if c['type'] == 'text' -%}{{ c['text'] }}{%- endfor -%}"
    "{{ eos_token }}{{ '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


def ensure_chat_template(processor: Any) -> bool:
    """Give ``processor`` DeepSeek-VL's chat template when it has none; True when it had to."""
    if getattr(processor, "chat_template", None):
        return False
    processor.chat_template = DEEPSEEK_VL_CHAT_TEMPLATE
    return True

# A little general English so that prompts outside the training text still tokenize compactly.
_BASE_TEXT = (
    "You are a helpful assistant. Describe the image. What is shown? Answer with one word. "
    "yes no none normal left right top bottom red green blue yellow black white gray orange purple "
    "one two three four five circle square triangle the a an of in on is are this that which what how many"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer; every text encodes, special tokens are single ids."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [_BASE_TEXT, *texts]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=4096,
    )
