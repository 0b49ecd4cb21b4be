"""A byte-level BPE tokenizer trained offline on a vertical's text.

Nothing is downloaded: the reference presets get a tokenizer trained in seconds with the
`tokenizers` library on the vertical's prompts, questions and answers, wrapped as a
``PreTrainedTokenizerFast`` that carries DeepSeek-VL's special tokens.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS = "<｜begin▁of▁sentence｜>"  # full-width bars (U+FF5C) and U+2581, as in DeepSeek's tokenizer
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image_placeholder>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE)

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
