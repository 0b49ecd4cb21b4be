"""Reference model presets: the DeepSeek-VL architecture at sizes that fit a laptop.

Every preset is a real ``DeepseekVLConfig`` (or ``DeepseekVLHybridConfig``) built in code;
weights start random. ``deepseek-vl-1.3b`` carries the dimensions of the published
1.3B chat checkpoint (from transformers' own conversion script) for scale checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Dimensions of one reference model; ``build_config`` turns it into a transformers config."""

    name: str
    description: str
    text: dict[str, Any]
    vision: dict[str, Any]
    high_res_vision: dict[str, Any] | None = None
    tie_word_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hybrid(self) -> bool:
        return self.high_res_vision is not None

    @property
    def image_size(self) -> int:
        return int(self.vision["image_size"])

    @property
    def num_image_tokens(self) -> int:
        return (self.vision["image_size"] // self.vision["patch_size"]) ** 2

    @property
    def high_res_image_size(self) -> int | None:
        return None if self.high_res_vision is None else int(self.high_res_vision["image_size"])


def _text(hidden: int, inter: int, layers: int, heads: int, kv_heads: int, max_pos: int = 2048) -> dict[str, Any]:
    return dict(
        model_type="llama",
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_pos,
    )


def _siglip(hidden: int, inter: int, layers: int, heads: int, image: int, patch: int) -> dict[str, Any]:
    return dict(
        model_type="siglip_vision_model",
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image,
        patch_size=patch,
        vision_use_head=False,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "reference-tiny",
            "≈0.3M params, 16 image tokens: unit tests, seconds per stage",
            _text(64, 128, 2, 4, 2, max_pos=512),
            _siglip(64, 128, 2, 4, image=32, patch=8),
        ),
        Preset(
            "reference-small",
            "≈24M params, 64 image tokens: the default, trains 200 steps in about 2 minutes on 2 cores",
            _text(512, 1376, 6, 8, 4),
            _siglip(256, 1024, 4, 4, image=128, patch=16),
        ),
        Preset(
            "reference-base",
            "≈120M params, 64 image tokens: speed benchmarks",
            _text(1024, 2816, 8, 16, 4),
            _siglip(384, 1536, 6, 6, image=128, patch=16),
        ),
        Preset(
            "deepseek-vl-1.3b",
            "dimensions of deepseek-vl-1.3b-chat (random weights, 1.7B params): scale checks",
            _text(2048, 5632, 24, 16, 16, max_pos=16384),
            _siglip(1024, 4096, 24, 16, image=384, patch=16),
        ),
        Preset(
            "reference-tiny-hybrid",
            "SigLIP + SAM hybrid, tiny: 576 image tokens (SAM's projection fixes that count)",
            _text(64, 128, 2, 4, 2, max_pos=1024),
            _siglip(64, 128, 2, 4, image=96, patch=4),
            high_res_vision=dict(
                model_type="sam_vision_model",
                hidden_size=32,
                output_channels=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=256,
                patch_size=16,
                global_attn_indexes=[1],
                mlp_dim=64,
            ),
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def build_config(preset: Preset | str, *, vocab_size: int, image_token_id: int, pad_token_id: int | None = None,
                 bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A transformers config for ``preset`` with the tokenizer's vocabulary and special ids."""
    from transformers import DeepseekVLConfig, DeepseekVLHybridConfig

    if isinstance(preset, str):
        preset = get_preset(preset)
    text = dict(preset.text, vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                eos_token_id=eos_token_id)
    kwargs: dict[str, Any] = dict(
        text_config=text,
        vision_config=dict(preset.vision),
        image_token_id=image_token_id,
        tie_word_embeddings=preset.tie_word_embeddings,
    )
    if preset.hybrid:
        return DeepseekVLHybridConfig(high_res_vision_config=dict(preset.high_res_vision), **kwargs)
    return DeepseekVLConfig(**kwargs)
