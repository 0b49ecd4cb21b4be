"""Build, save and load complete DeepSeek-VL checkpoint directories.

A directory written here holds weights (safetensors), config, processor and tokenizer, so
transformers alone loads it::

    model = AutoModelForImageTextToText.from_pretrained(d)
    processor = AutoProcessor.from_pretrained(d)

Loading is local-only, safetensors-only unless pickles are allowed, and never runs remote code
unless the user enables it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .checkpoint_files import WeightFiles, check_model_type, weight_files
from .presets import Preset, build_config, get_preset
from .tokenizer import DEEPSEEK_VL_CHAT_TEMPLATE, ensure_chat_template

# Shards of at most this size: saving copies one shard at a time, so a large model is written without
# a second full copy of its weights in memory.
MAX_SHARD_SIZE = "2GB"


def build_processor(tokenizer: Any, config: Any) -> Any:
    """A DeepSeek-VL (or Hybrid) processor matching the model config's image sizes."""
    from transformers import (
        DeepseekVLHybridImageProcessorPil,
        DeepseekVLHybridProcessor,
        DeepseekVLImageProcessorPil,
        DeepseekVLProcessor,
    )

    size = config.vision_config.image_size
    num_image_tokens = (size // config.vision_config.patch_size) ** 2
    common = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if config.model_type == "deepseek_vl_hybrid":
        high = config.high_res_vision_config.image_size
        image_processor = DeepseekVLHybridImageProcessorPil(
            size={"height": size, "width": size}, high_res_size={"height": high, "width": high},
            high_res_image_mean=[0.5, 0.5, 0.5], high_res_image_std=[0.5, 0.5, 0.5], **common,
        )
        return DeepseekVLHybridProcessor(image_processor, tokenizer, chat_template=DEEPSEEK_VL_CHAT_TEMPLATE,
                                         num_image_tokens=num_image_tokens)
    image_processor = DeepseekVLImageProcessorPil(size={"height": size, "width": size}, **common)
    return DeepseekVLProcessor(image_processor, tokenizer, chat_template=DEEPSEEK_VL_CHAT_TEMPLATE,
                               num_image_tokens=num_image_tokens)


def build_reference(preset: Preset | str, tokenizer: Any, seed: int = 0,
                    dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, Any]:
    """A reference model with random weights (seeded) and its processor; ``dtype`` None = float32."""
    from transformers import AutoModelForImageTextToText

    preset = get_preset(preset) if isinstance(preset, str) else preset
    config = build_config(
        preset,
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, build_processor(tokenizer, config)


def save_checkpoint(model: torch.nn.Module, processor: Any, directory: str | Path, **info: Any) -> Path:
    """Write weights (safetensors), config, generation config, processor and tokenizer.

    A model pruned beyond what its config can express also gets the structure sidecar that
    :func:`load_checkpoint` uses to rebuild it exactly.
    """
    from .exact_load import save_pruned

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_pruned(model, directory, max_shard_size=MAX_SHARD_SIZE)
    ensure_chat_template(processor)  # the format the SDK rendered its prompts in, for transformers alone
    processor.save_pretrained(directory)
    if info:
        (directory / "dsvl_adapt.json").write_text(json.dumps(info, indent=2, default=str))
    return directory


def check_weights_are_safe(directory: Path, allow_pickle: bool) -> WeightFiles:
    """The weight files a load of ``directory`` reads; refuses pickles unless allowed, warns on mixed folders."""
    files = weight_files(directory, allow_pickle)
    if files.note:
        warnings.warn(f"{directory}: {files.note}", stacklevel=3)
    return files


def load_checkpoint(
    directory: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Load a local checkpoint directory exactly: model and processor.

    ``dtype``: the weights' dtype (None keeps the checkpoint's own). Only DeepSeek-VL checkpoints
    (``config.json`` model_type ``deepseek_vl`` or ``deepseek_vl_hybrid``) are accepted. Weights are read
    from safetensors; pickled ``pytorch_model.bin`` only with ``allow_pickle=True`` and only when the
    folder holds no safetensors (a folder with both reads the safetensors and warns, naming the files).

    Pruned checkpoints whose shapes no config field can express (vision-tower heads) are
    rebuilt by :func:`dsvl_adapt.models.exact_load.load_exact`; torch-quantized ones by
    :func:`dsvl_adapt.compress.quantize.load_quantized`; others load with plain
    ``from_pretrained``. ``ignore_mismatched_sizes`` is never used.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory} is not a Hugging Face checkpoint directory (no config.json)")
    check_model_type(directory)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    quantized = (directory / "quantization.json").is_file()
    files = None if quantized else check_weights_are_safe(directory, allow_pickle)
    if trust_remote_code:
        warnings.warn("model.trust_remote_code=true: code from the checkpoint directory will run", stacklevel=2)
    common: dict[str, Any] = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        processor = AutoProcessor.from_pretrained(directory, **common)
    except Exception as exc:
        raise ModelLoadError(
            f"{directory}: could not load its processor/tokenizer ({type(exc).__name__}: {exc}). A DeepSeek-VL "
            "checkpoint needs tokenizer files and preprocessor_config.json beside the weights."
        ) from exc
    from .exact_load import STRUCTURE_FILE, load_exact, needs_exact_load

    if quantized:  # a torch-quantized student: rebuilt from its recipe (save_pretrained cannot write it)
        from ..compress.quantize import load_quantized

        model = load_quantized(directory)
    elif files is not None and not files.pickled and needs_exact_load(directory):
        model = load_exact(directory, dtype=dtype)
    else:
        if files is not None and files.pickled and (directory / STRUCTURE_FILE).is_file() \
                and needs_exact_load(directory):
            raise ModelLoadError(f"{directory}: a pruned checkpoint ({STRUCTURE_FILE}) must be stored as "
                                 "safetensors to be rebuilt exactly; pickled weights cannot be")
        model = AutoModelForImageTextToText.from_pretrained(
            directory, dtype=dtype, use_safetensors=files is None or not files.pickled, **common
        )
    from ..compress.tokens.budget import restore_token_budget

    restore_token_budget(model)  # a prune.tokens student: its reducer after the aligner (config.token_budget)
    model.eval()
    return model, processor
