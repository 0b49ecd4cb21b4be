"""The scorecard's visual-token section (issue 17): K, the method, and each model's image tokens and time to
first token, when ``prune.tokens`` ran."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ImageTokens(BaseModel):
    """One model's image tokens per image and its time to first token."""

    model_config = ConfigDict(extra="forbid")

    image_tokens: int = Field(description="image tokens per image its language model reads")
    in_sequence: int | None = Field(None, description="image tokens per image in the sequence, when a masking method "
                                                      "(window, text-guided) lets the text read image_tokens of them")
    method: str | None = Field(None, description="the token-reduction method (student), null for a full model")
    keep: float | None = Field(None, description="image_tokens / the unreduced count (student)")
    ttft_ms: float | None = Field(None, description="time to first token: p50 of one request's vision + prefill "
                                                    "(latency.<model>.p50_ms), through `runtime`")
    runtime: str | None = None


def token_summary(stage_figures: dict[str, Any], roles: dict[str, Any], results: dict[Any, dict[str, Any]]
                  ) -> dict[str, ImageTokens]:
    """Per model (base, teacher, student): image tokens and time to first token; empty when prune.tokens did not
    reduce the student."""
    figures = stage_figures.get("prune.tokens") or {}
    if not figures or "skipped" in figures:
        return {}
    out: dict[str, ImageTokens] = {}
    for role, path in roles.items():
        result = results[path]
        latency = result.get("latency")
        tokens = int(result["runner"].processor.num_image_tokens)
        student = role == "student"
        masked = student and figures.get("masks") and figures.get("image_tokens") is not None
        out[role] = ImageTokens(image_tokens=int(figures["image_tokens"]) if masked else tokens,
                                in_sequence=tokens if masked else None,
                                method=figures.get("method") if student else None,
                                keep=figures.get("keep") if student else None,
                                ttft_ms=latency.p50_ms if latency is not None else None,
                                runtime=latency.runtime if latency is not None else None)
    return out


def tokens_markdown(tokens: dict[str, ImageTokens]) -> list[str]:
    """The scorecard.md section, or nothing."""
    if not tokens:
        return []
    lines = ["## Visual tokens", "", "| model | image tokens | method | keep | time to first token (ms) | runtime |",
             "|---|---|---|---|---|---|"]
    for role, t in tokens.items():
        shown = f"{t.image_tokens} of {t.in_sequence} (mask)" if t.in_sequence else str(t.image_tokens)
        lines.append(f"| {role} | {shown} | {t.method or '—'} | "
                     f"{'—' if t.keep is None else f'{t.keep:.3f}'} | "
                     f"{'—' if t.ttft_ms is None else f'{t.ttft_ms:.1f}'} | {t.runtime or '—'} |")
    return lines + [""]


__all__ = ["ImageTokens", "token_summary", "tokens_markdown"]
