"""Validated knobs of the compression layers, kept free of torch so configs validate in milliseconds.

The algorithms live beside this module (``structural.py``, ``weights.py``, ``quantize.py``) and
re-export their config class.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

_RATIO_FIELDS = ("lm_mlp_ratio", "lm_head_ratio", "vision_mlp_ratio", "vision_head_ratio")


class StructuralPruneConfig(BaseModel):
    """What to prune and how to rank what is pruned."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lm_mlp_ratio: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Fraction of the language model's MLP intermediate channels to remove from every "
                    "decoder layer (the kept count is then rounded down to a multiple of round_to).")
    lm_head_ratio: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Fraction of the language model's query heads to remove per layer. With GQA the same "
                    "number is removed from each key/value group and the key/value heads are kept; with "
                    "multi-head attention query/key/value heads are removed together. Rounded down to whole "
                    "heads (never removes more than asked).")
    vision_mlp_ratio: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Fraction of the SigLIP vision tower's MLP intermediate channels to remove from every "
                    "encoder layer (kept count rounded down to a multiple of round_to).")
    vision_head_ratio: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Fraction of the SigLIP vision tower's attention heads to remove per layer (whole heads, "
                    "rounded down). A SigLIP config cannot express this, so the pruned model needs "
                    "dsvl_adapt.models.exact_load to be reloaded.")
    importance: Literal["magnitude", "taylor", "activation"] = Field(
        "magnitude",
        description="How channels/heads are ranked: 'magnitude' (group L2 norm of the weights, no data), "
                    "'taylor' (|w * dL/dw| from calibration batches with labels), 'activation' (mean |input| "
                    "of the projection that reads the channel, from calibration batches).")
    round_to: int = Field(
        8, ge=1,
        description="Kept MLP channel counts are rounded down to a multiple of this (1 disables rounding).")
    calibration_batches: int = Field(
        4, ge=1,
        description="How many calibration batches 'taylor' and 'activation' importance use at most.")

    def is_noop(self) -> bool:
        return all(getattr(self, f) == 0.0 for f in _RATIO_FIELDS)



#: Module paths pruned by default: every ``nn.Linear`` inside a decoder layer of the language model,
#: a SigLIP encoder layer, and (hybrid models) a SAM encoder layer. The aligner, the patch/position
#: embeddings, norms and the heads are left alone.
DEFAULT_INCLUDE: tuple[str, ...] = (
    r"(^|\.)language_model\.layers\.\d+\.",
    r"(^|\.)vision_model\.encoder\.layers\.\d+\.",
    r"(^|\.)high_res_vision_model\.vision_encoder\.layers\.\d+\.",
)

class WeightPruneConfig(BaseModel):
    """How to prune weights. Regexes in ``include``/``exclude`` are searched in module paths
    (``model.language_model.layers.0.mlp.up_proj``); only ``nn.Linear`` modules are pruned."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Literal["magnitude", "wanda", "2:4"] = "magnitude"
    scope: Literal["layer", "global"] = Field(
        "layer", description="'global': one magnitude threshold over all selected layers (magnitude only)")
    sparsity: float = Field(0.5, description="fraction of weights set to zero, 0 <= s < 1; 2:4 is always 0.5")
    score: Literal["magnitude", "wanda"] | None = Field(
        None, description="2:4 only: rank weights in each group of 4 by |W| (default) or by the Wanda score")
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=list)
    calibration_batches: int = Field(8, description="at most this many calibration batches are run (wanda)")

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str, info: ValidationInfo) -> str:
        method = info.data.get("method")
        if v == "global" and method is not None and method != "magnitude":
            raise ValueError(f"scope='global' only applies to method='magnitude' (got method={method!r}): Wanda "
                             "compares scores within each output row and 2:4 within groups of 4; use scope='layer'")
        return v

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float, info: ValidationInfo) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"sparsity must satisfy 0 <= sparsity < 1, got {v}")
        if info.data.get("method") == "2:4" and v != 0.5:
            raise ValueError(f"method='2:4' always prunes exactly half the weights (2 of every 4), so sparsity "
                             f"must be 0.5 (got {v}); use method='magnitude' or 'wanda' for other sparsities")
        return v

    @field_validator("score")
    @classmethod
    def _score(cls, v: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("method")
        if v is not None and method is not None and method != "2:4" and v != method:
            raise ValueError(f"score={v!r} contradicts method={method!r}; score only chooses the ranking for "
                             "method='2:4'")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _regexes(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{info.field_name}: {pattern!r} is not a valid regular expression ({exc})") from None
        if info.field_name == "include" and not v:
            raise ValueError("include is empty: nothing would be pruned (leave it out for the default layers)")
        return v

    @field_validator("calibration_batches")
    @classmethod
    def _calib(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {v}")
        return v

    @property
    def ranking(self) -> Literal["magnitude", "wanda"]:
        """The score weights are ranked by: ``magnitude`` or ``wanda``."""
        if self.method == "2:4":
            return self.score or "magnitude"
        return self.method  # type: ignore[return-value]




class TokenPruneConfig(BaseModel):
    """``prune.tokens``: a budget of image tokens per image (docs/tokens.md). Off unless ``keep`` or ``tokens``
    is set; ``method`` names a registered token reducer (``select``, ``resolution``, or a plugin's)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: str = Field("select", min_length=1,
                        description="a registered token-reduction method: select | resolution | vision-merge | a plugin's")
    keep: float | None = Field(None, gt=0.0, le=1.0,
                               description="fraction of the image tokens kept (0 < keep <= 1); null = off")
    tokens: int | None = Field(None, ge=1, description="K, image tokens per image kept; null = off (or use keep)")

    @field_validator("tokens")
    @classmethod
    def _one_budget(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("keep") is not None:
            raise ValueError(f"set one of prune.tokens.keep (a ratio) or prune.tokens.tokens (K), not both "
                             f"(got keep={info.data['keep']}, tokens={v})")
        return v

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        from ..plugins import get_registry

        reducers = get_registry().token_reducers
        if v not in reducers:
            raise ValueError(f"unknown token-reduction method {v!r}; registered: {', '.join(reducers.names())}")
        return v

    @property
    def enabled(self) -> bool:
        return self.keep is not None or self.tokens is not None
