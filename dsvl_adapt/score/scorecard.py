"""The scorecard: one pydantic model, written as JSON and rendered as Markdown.

Stable fields that scripts rely on (see the design notes): ``vertical``, ``metric``,
``accuracy.<model>``, ``retention``, ``metrics.<model>.<name>``, ``latency.<model>.p50_ms|p90_ms|
p99_ms|runtime``, ``size.<model>.bytes``, ``params.<model>``, ``targets[].name|fits|checks[]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Latency(_Model):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    runtime: str = Field(description="e.g. torch-eager, onnxruntime")
    decode_ms_per_token: float | None = None
    threads: int | None = None
    cpu: str | None = None
    batch_size: int = 1
    warmup: int = 0
    repeats: int = 0
    measured: bool = Field(True, description="false when estimated (see `estimate`)")
    estimate: str | None = Field(None, description="how an estimate was made")


class Throughput(_Model):
    """Requests per second of the student at a target's batch size (one request = one forward over image +
    prompt)."""

    target: str
    runtime: str
    batch_size: int
    requests_per_s: float | None
    batch_p50_ms: float | None = Field(None, description="median time of one batch (measured) or its roofline")
    measured: bool
    how: str = Field(description="where it was measured, or how it was estimated")


class Size(_Model):
    bytes: int = Field(description="size of the weight files on disk")
    weight_bytes: int | None = Field(None, description="bytes of the weights in memory")
    by_component: dict[str, int] = Field(default_factory=dict, description="weight bytes per component")


class FitCheck(_Model):
    name: str
    ok: bool | None = Field(description="null when it could not be checked (see note)")
    value: float | str | None = None
    limit: float | str | None = None
    unit: str = ""
    estimated: bool = False
    note: str = ""


class TargetFit(_Model):
    name: str
    device: str
    runtime: str
    fits: bool
    checks: list[FitCheck]


class ObjectiveCheck(_Model):
    name: str
    ok: bool
    value: float | None
    limit: float


class RuntimeScore(_Model):
    """The student as one runtime runs it: accuracy measured through that artifact, its speed and size."""

    runtime: str
    dtype: str
    path: str
    metrics: dict[str, float | None]
    latency: Latency | None = None
    size_bytes: int


class Scorecard(_Model):
    schema_version: int = SCHEMA_VERSION
    vertical: str
    metric: str = Field(description="the vertical's primary metric")
    higher_is_better: bool = True
    accuracy: dict[str, float] = Field(description="primary metric per model: base, teacher, student")
    retention: float | None = Field(description="accuracy.student / accuracy.teacher")
    metrics: dict[str, dict[str, float | None]] = Field(
        description="every metric of the vertical, per model; null where the metric does not apply to the test split")
    general: dict[str, float] = Field(default_factory=dict, description="general-capability accuracy per model")
    constant_answer: dict[str, float | None] = Field(
        default_factory=dict, description="every metric for a predictor that gives the test split's most common "
                                          "answer to every row: the floor a trained model must clear")
    latency: dict[str, Latency] = Field(default_factory=dict)
    throughput: list[Throughput] = Field(default_factory=list, description="the student at each target's batch size")
    runtimes: dict[str, RuntimeScore] = Field(
        default_factory=dict, description="the student through each runtime artifact the run produced"
    )
    size: dict[str, Size] = Field(default_factory=dict)
    params: dict[str, int] = Field(default_factory=dict)
    peak_rss_bytes: int | None = None
    targets: list[TargetFit] = Field(default_factory=list)
    objectives: list[ObjectiveCheck] = Field(default_factory=list)
    verdict: bool | None = Field(None, description="every objective met (null when the vertical declares none)")
    skipped_rows: dict[str, int] = Field(default_factory=dict)
    test_rows: int = 0
    stages: dict[str, Any] = Field(default_factory=dict, description="figures recorded by each stage")
    notes: list[str] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)

    def write(self, directory: Path) -> None:
        """``scorecard.json``, ``scorecard.md`` and a self-contained ``scorecard.html`` with plots."""
        from .html import write_html

        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scorecard.json").write_text(self.model_dump_json(indent=2))
        (directory / "scorecard.md").write_text(render_markdown(self))
        write_html(self, directory)


def load_scorecard(path: str | Path) -> Scorecard:
    """Read a ``scorecard.json`` (or a run directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "scorecard.json"
    return Scorecard.model_validate(json.loads(path.read_text()))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def render_markdown(card: Scorecard) -> str:
    models = list(card.accuracy)
    lines = [f"# Scorecard — {card.vertical}", ""]
    if card.verdict is not None:
        lines += [f"**Verdict: {'objectives met' if card.verdict else 'objectives NOT met'}**", ""]
    lines += ["## Accuracy", "", "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    names = list(next(iter(card.metrics.values()), {}).keys())
    for name in names:
        mark = " (primary)" if name == card.metric else ""
        lines.append(f"| {name}{mark} | " + " | ".join(_fmt(card.metrics[m].get(name)) for m in models) + " |")
    if card.general:
        lines.append("| general capability | " + " | ".join(_fmt(card.general.get(m)) for m in models) + " |")
    lines += ["", f"Retention (student / teacher, {card.metric}): **{_fmt(card.retention)}**", ""]
    if card.constant_answer:
        lines += [f"Floor: answering every row with the test split's most common answer scores {card.metric} "
                  f"{_fmt(card.constant_answer.get(card.metric))}.", ""]
    if card.latency or card.size:
        lines += ["## Speed and size", "",
                  "| model | p50 ms | p90 ms | p99 ms | decode ms/token | runtime | params | size on disk |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in models:
            lat = card.latency.get(m)
            size = card.size.get(m)
            params = card.params.get(m)
            lines.append(
                f"| {m} | {_fmt(lat and lat.p50_ms, 1)} | {_fmt(lat and lat.p90_ms, 1)} | {_fmt(lat and lat.p99_ms, 1)} "
                f"| {_fmt(lat and lat.decode_ms_per_token, 1)} | {lat.runtime if lat else '—'} "
                f"| {f'{params:,}' if params is not None else '—'} | {_mib(size and size.bytes)} |"
            )
        some = next(iter(card.latency.values()), None)
        if some:
            lines += ["", f"Measured on {some.cpu}, {some.threads} threads, batch {some.batch_size}, "
                          f"{some.warmup} warm-up + {some.repeats} timed runs (latency = one forward over image + "
                          "prompt)."]
        lines.append("")
    if card.throughput:
        lines += ["## Throughput at each target's batch size", "",
                  "| target | runtime | batch | requests/s | batch p50 ms | how |", "|---|---|---|---|---|---|"]
        for t in card.throughput:
            how = ("measured: " if t.measured else "estimated: ") + t.how
            lines.append(f"| {t.target} | {t.runtime} | {t.batch_size} | {_fmt(t.requests_per_s, 2)} | "
                         f"{_fmt(t.batch_p50_ms, 1)} | {how} |")
        lines.append("")
    if card.runtimes:
        lines += ["## The student on each runtime", "",
                  f"| artifact | {card.metric} | p50 ms | p90 ms | size |", "|---|---|---|---|---|"]
        for label, r in card.runtimes.items():
            lat = r.latency
            lines.append(f"| {label} | {_fmt(r.metrics.get(card.metric))} | {_fmt(lat and lat.p50_ms, 1)} | "
                         f"{_fmt(lat and lat.p90_ms, 1)} | {_mib(r.size_bytes)} |")
        lines.append("")
    if card.targets:
        lines += ["## Hardware targets", ""]
        for target in card.targets:
            lines += [f"### {target.name} ({target.device}, {target.runtime}): "
                      f"{'fits' if target.fits else 'does NOT fit'}", "",
                      "| check | ok | value | limit | how |", "|---|---|---|---|---|"]
            for c in target.checks:
                ok = "—" if c.ok is None else ("yes" if c.ok else "**no**")
                how = ("estimated: " if c.estimated else "measured" if c.ok is not None else "") + \
                      (c.note if c.estimated or c.ok is None else (f" — {c.note}" if c.note else ""))
                lines.append(f"| {c.name} | {ok} | {_fmt(c.value)} {c.unit} | {_fmt(c.limit)} {c.unit} | {how} |")
            lines.append("")
    if card.objectives:
        lines += ["## Objectives", "", "| objective | ok | value | limit |", "|---|---|---|---|"]
        for o in card.objectives:
            lines.append(f"| {o.name} | {'yes' if o.ok else '**no**'} | {_fmt(o.value)} | {_fmt(o.limit)} |")
        lines.append("")
    if card.skipped_rows:
        lines += ["## Skipped rows", ""] + [f"- {k}: {v}" for k, v in card.skipped_rows.items()] + [""]
    if card.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in card.notes] + [""]
    return "\n".join(lines)
