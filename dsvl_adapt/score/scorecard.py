"""The scorecard: one pydantic model, written as JSON and rendered as Markdown.

Stable fields that scripts rely on (see the design notes): ``vertical``, ``metric``,
``accuracy.<model>``, ``retention``, ``metrics.<model>.<name>``, ``latency.<model>.p50_ms|p90_ms|
p99_ms|runtime``, ``size.<model>.bytes``, ``params.<model>``, ``targets[].name|fits|checks[]``,
``accuracy_ci.<model>``, ``memory.<model>.peak_rss_bytes``, ``generation.<model>.ttft_ms|tpot_ms|tokens_per_s|
tokens_per_s_64|answer_tokens|kv_cache_bytes_per_token|runtime``.

Schema version 2 (what changed in meaning since 1):

* ``targets[].fits`` is true only when every check was made and passed; a check that could not be
  made (``ok: null``) makes it false, and ``targets[].status`` says ``unknown`` (``fits`` stays a
  bool, so ``if target["fits"]`` never passes an unchecked target).
* ``objectives[].ok`` may be null (the check could not be made), and ``verdict`` is null when no
  objective failed but one is unknown (as well as when none are declared).
* the verdict includes floors (teacher and student must clear the constant-answer floor by the
  vertical's ``floor_margin``) and forgetting (``max_forgetting``) beside retention.
* the ``memory`` fit check reads the measured peak resident memory of a process serving the
  student when its runtime ran here on a CPU target, else an estimate with activations and KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .lineage import Lineage, lineage_markdown
from .tokens import ImageTokens, tokens_markdown
from .training import training_markdown

SCHEMA_VERSION = 2


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


class Generation(_Model):
    """Generation speed of one model through its own runtime, one request (see
    :mod:`dsvl_adapt.score.generation_speed`)."""

    ttft_ms: float = Field(description="time to first token: image encoding + prefill + the first token, median")
    tpot_ms: float = Field(description="time per output token after the first (decode steps), median over a "
                                       "64-token continuation")
    tokens_per_s: float | None = Field(description="tokens / time of a whole answer at the vertical's "
                                                   "max_answer_tokens (stopping at EOS, as answers do)")
    answer_tokens: int = Field(description="tokens the timed answer had (median)")
    max_answer_tokens: int = Field(description="the vertical's generation budget")
    tokens_per_s_64: float | None = Field(description="tokens / time of a fixed 64-token continuation (EOS ignored)")
    kv_cache_bytes_per_token: int | None = Field(
        description="bytes the runtime's KV cache holds per cached position and row, measured after a prefill; "
                    "null when the runtime keeps no cache (it re-runs the sequence each step)")
    kv_cache: bool = Field(description="decode steps reuse cached keys/values")
    runtime: str = Field(description="runtime and artifact label, e.g. onnxruntime (onnxruntime-int8)")
    threads: int | None = None
    cpu: str | None = None
    batch_size: int = 1
    warmup: int = 0
    repeats: int = 0


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
    fits: bool = Field(description="true only when every check was made and passed (an unknown check is not a "
                                   "pass: see `status`)")
    status: Literal["fits", "does not fit", "unknown"] = Field(
        "fits", description="`does not fit` when a check failed; `unknown` when none failed but one could not be "
                            "made (then `fits` is false)")
    unknown: list[str] = Field(default_factory=list, description="checks that could not be made")
    checks: list[FitCheck]

    @model_validator(mode="before")
    @classmethod
    def _status_of_old_cards(cls, data: Any) -> Any:
        """Schema 1 had no status: derive it from ``fits``."""
        if isinstance(data, dict) and "status" not in data:
            data = {**data, "status": "fits" if data.get("fits") else "does not fit"}
        return data


class ObjectiveCheck(_Model):
    name: str
    ok: bool | None = Field(description="null when it could not be checked (see note)")
    value: float | None
    limit: float
    higher_is_better: bool = Field(True, description="true: value must be at least limit; false: at most")
    note: str = ""


class Memory(_Model):
    """Peak resident memory of a process that loads one model through its runtime and answers requests."""

    peak_rss_bytes: int | None = Field(description="peak resident set size of the serving process (null: not "
                                                   "measured, see how)")
    baseline_rss_bytes: int | None = Field(None, description="the same process after its imports, before loading "
                                                             "the model (interpreter + libraries)")
    runtime: str
    batch_size: int
    prompt_tokens: int = Field(0, description="tokens in the longest prompt of the batch (image tokens included)")
    new_tokens: int = Field(0, description="answer tokens generated at most")
    how: str


class Comparison(_Model):
    """``after - before`` on the same rows, with its 95% paired bootstrap interval."""

    before: str
    after: str
    difference: float
    ci: list[float] = Field(description="[low, high] of the difference (paired bootstrap over the same rows)")
    within_noise: bool = Field(description="the interval contains 0: the difference is not shown by these rows")
    forgetting: bool | None = Field(None, description="general set only: a drop outside the interval")


class Floor(_Model):
    """What a trained model must clear: the constant-answer floor of the primary metric, moved by the margin."""

    metric: str
    constant_answer: float = Field(description="the primary metric when every row gets the most common answer")
    margin: float = Field(description="share of the way from the floor to a perfect score (objectives.floor_margin)")
    bar: float = Field(description="floor + margin x (best - floor) (higher is better); a model must reach it")


class TeacherDiagnosis(_Model):
    """Why a teacher may not have learnt the task, and the options that address it."""

    summary: str
    causes: list[str]
    remedies: list[str]


class Intervals(_Model):
    method: str = "percentile bootstrap over test rows"
    level: float
    resamples: int
    seed: int


class RuntimeScore(_Model):
    """The student as one runtime runs it: accuracy measured through that artifact, its speed and size."""

    runtime: str
    dtype: str
    path: str
    metrics: dict[str, float | None]
    latency: Latency | None = None
    size_bytes: int
    predictions: str | None = Field(None, description="its answers to the test rows, in the score stage's folder")
    answer_batch_size: int | None = Field(None, description="test rows per generate call when those answers were "
                                                            "made (score.batch_size or score.runtime_batch_size)")


class DataCleaning(_Model):
    """What the clean stage found and did (docs/cleaning.md): the seed's share-of-usable-data measure."""

    rows_in: int = Field(description="rows of every split before cleaning (unreadable ones included)")
    flagged: dict[str, int] = Field(default_factory=dict, description="rows flagged, by reason")
    flagged_by_level: dict[str, int] = Field(default_factory=dict, description="rows flagged, by check level (1, 2)")
    dropped: int = 0
    fixed: int = 0
    open: int = Field(0, description="rows flagged and left for review (no decision, not dropped or fixed)")
    usable_share: float | None = Field(None, description="(rows in - dropped - left for review) / rows in")
    clean_share: float | None = Field(None, description="rows no check had anything to say about / rows in")

    @classmethod
    def from_figures(cls, figures: dict[str, Any] | None) -> "DataCleaning | None":
        if not figures or "rows_in" not in figures:
            return None
        return cls(**{key: figures[key] for key in cls.model_fields if key in figures})


class Scorecard(_Model):
    schema_version: int = SCHEMA_VERSION
    vertical: str
    metric: str = Field(description="the vertical's primary metric")
    higher_is_better: bool = True
    accuracy: dict[str, float] = Field(description="primary metric per model: base, teacher, student")
    accuracy_ci: dict[str, list[float]] = Field(
        default_factory=dict, description="[low, high] 95% bootstrap interval of accuracy.<model> over test rows")
    retention: float | None = Field(description="accuracy.student / accuracy.teacher")
    retention_ci: list[float] | None = Field(None, description="[low, high] paired bootstrap interval of retention")
    comparisons: dict[str, Comparison] = Field(
        default_factory=dict, description="primary metric: `teacher_vs_base` (what fine-tuning gained) and "
                                          "`student_vs_teacher` (what compression cost), paired over test rows")
    metrics: dict[str, dict[str, float | None]] = Field(
        description="every metric of the vertical, per model; null where the metric does not apply to the test split")
    general: dict[str, float] = Field(default_factory=dict, description="general-capability accuracy per model")
    general_ci: dict[str, list[float]] = Field(default_factory=dict,
                                               description="[low, high] 95% bootstrap interval of general.<model>")
    general_floor: float | None = Field(None, description="the general set's most common answer given to every row: "
                                                          "a model at or below it has no general ability to lose")
    general_comparisons: dict[str, Comparison] = Field(
        default_factory=dict, description="general set: `teacher_vs_base` (forgetting by fine-tuning) and "
                                          "`student_vs_teacher` (forgetting by compression); `forgetting` is true "
                                          "when the drop is outside the paired interval")
    constant_answer: dict[str, float | None] = Field(
        default_factory=dict, description="every metric for a predictor that gives the test split's most common "
                                          "answer to every row: the floor a trained model must clear")
    floor: Floor | None = Field(None, description="the bar the teacher and the student must each reach")
    teacher_diagnosis: TeacherDiagnosis | None = Field(
        None, description="set when the teacher did not clear the floor's bar: likely causes and remedies")
    intervals: Intervals | None = Field(None, description="how the intervals were computed")
    memory: dict[str, Memory] = Field(
        default_factory=dict, description="per model: peak resident memory of a process serving it (measured)")
    latency: dict[str, Latency] = Field(default_factory=dict)
    generation: dict[str, Generation] = Field(
        default_factory=dict, description="per model: time to first token, time per output token, tokens/s and KV-"
                                          "cache bytes per token, measured through the model's runtime")
    throughput: list[Throughput] = Field(default_factory=list, description="the student at each target's batch size")
    runtimes: dict[str, RuntimeScore] = Field(
        default_factory=dict, description="the student through each runtime artifact the run produced"
    )
    size: dict[str, Size] = Field(default_factory=dict)
    params: dict[str, int] = Field(default_factory=dict)
    peak_rss_bytes: int | None = Field(None, description="peak resident memory of the scoring process itself "
                                                         "(every model it scored); see `memory` per model")
    targets: list[TargetFit] = Field(default_factory=list)
    objectives: list[ObjectiveCheck] = Field(default_factory=list)
    verdict: bool | None = Field(None, description="true: every objective met; false: one failed; null: none "
                                                   "declared, or none failed but one could not be checked")
    skipped_rows: dict[str, int] = Field(default_factory=dict)
    data: DataCleaning | None = Field(None, description="when the clean stage ran: rows in, flagged by reason and "
                                                        "level, dropped, fixed, share of usable data")
    test_rows: int = 0
    stages: dict[str, Any] = Field(default_factory=dict, description="figures recorded by each stage")
    tokens: dict[str, ImageTokens] = Field(
        default_factory=dict, description="when prune.tokens ran: tokens.<model>.image_tokens, "
                                          "tokens.student.method, time to first token per model (docs/tokens.md)")
    notes: list[str] = Field(default_factory=list)
    provenance: dict[str, Any] = Field(default_factory=dict)
    lineage: Lineage | None = Field(None, description="an update run against its parent (docs/continual.md)")

    def write(self, directory: Path) -> None:
        """``scorecard.json``, ``scorecard.md`` and a self-contained ``scorecard.html`` with plots."""
        from .html import write_html

        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scorecard.json").write_text(self.model_dump_json(indent=2))
        (directory / "scorecard.md").write_text(render_markdown(self))
        write_html(self, directory)


def cleaning_lines(data: DataCleaning) -> list[str]:
    """The clean stage's figures as short sentences (scorecard.md and .html)."""
    share = lambda value: "unknown" if value is None else f"{value:.1%}"  # noqa: E731
    lines = [f"rows in: {data.rows_in}; usable share {share(data.usable_share)} (with no finding: "
             f"{share(data.clean_share)})",
             f"dropped {data.dropped}, fixed {data.fixed}, left for review {data.open}"]
    if data.flagged_by_level:
        lines.append("flagged by level: " + ", ".join(f"level {k}: {v}" for k, v in data.flagged_by_level.items()))
    if data.flagged:
        lines.append("flagged by reason: " + ", ".join(f"{k} {v}" for k, v in data.flagged.items()))
    return lines


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


def verdict_text(card: Scorecard) -> str:
    """``objectives met`` / ``objectives NOT met (...)`` / ``objectives unknown (...)`` / ``no objectives declared``."""
    if not card.objectives:
        return "no objectives declared"
    if card.verdict:
        return "objectives met"
    if card.verdict is False:
        return "objectives NOT met (" + ", ".join(o.name for o in card.objectives if o.ok is False) + ")"
    return "objectives unknown (" + ", ".join(o.name for o in card.objectives if o.ok is None) + " not checked)"


def fit_text(target: TargetFit) -> str:
    if target.status == "unknown":
        return f"fit unknown ({', '.join(target.unknown)} not checked)"
    return "fits" if target.status == "fits" else "does NOT fit"


def ci_text(ci: list[float] | None, signed: bool = False) -> str:
    if not ci:
        return ""
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def comparison_text(name: str, c: Comparison) -> str:
    """e.g. ``student - teacher: -0.021 [-0.063, +0.021], within noise``."""
    if c.forgetting:
        verdict = "forgetting (a drop outside the interval)"
    else:
        verdict = "within noise" if c.within_noise else ("a gain" if c.difference > 0 else "a loss") + \
                  " outside noise"
    return f"{c.after} - {c.before}{name}: {c.difference:+.3f} {ci_text(c.ci, signed=True)}, {verdict}"


def render_markdown(card: Scorecard) -> str:
    models = list(card.accuracy)
    lines = [f"# Scorecard — {card.vertical}", ""]
    if card.objectives:
        lines += [f"**Verdict: {verdict_text(card)}**", ""]
    diagnosis = card.teacher_diagnosis
    if diagnosis is not None:
        lines += ["## The teacher did not learn the task" if "did not learn" in diagnosis.summary
                  else "## The teacher learnt little", "", diagnosis.summary, "", "Likely causes:", ""]
        lines += [f"- {c}" for c in diagnosis.causes] + ["", "What to try:", ""]
        lines += [f"- {r}" for r in diagnosis.remedies] + [""]
    lines += ["## Accuracy", "", "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    names = list(next(iter(card.metrics.values()), {}).keys())
    for name in names:
        mark = " (primary)" if name == card.metric else ""
        cells = []
        for m in models:
            ci = card.accuracy_ci.get(m) if name == card.metric else None
            cells.append(_fmt(card.metrics[m].get(name)) + (f" {ci_text(ci)}" if ci else ""))
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    if card.general:
        lines.append("| general capability | " + " | ".join(
            _fmt(card.general.get(m)) + (f" {ci_text(card.general_ci[m])}" if m in card.general_ci else "")
            for m in models) + " |")
    if card.intervals is not None:
        lines += ["", f"[low, high]: {card.intervals.level:.0%} {card.intervals.method} ({card.intervals.resamples} "
                      f"resamples, seed {card.intervals.seed}; {card.test_rows} test rows)."]
    retention_ci = f" {ci_text(card.retention_ci)}" if card.retention_ci else ""
    lines += ["", f"Retention (student / teacher, {card.metric}): **{_fmt(card.retention)}**{retention_ci}", ""]
    lines += tokens_markdown(card.tokens)
    for key, c in card.comparisons.items():
        lines.append(f"- {comparison_text(f' ({card.metric})', c)}")
    for key, c in card.general_comparisons.items():
        lines.append(f"- {comparison_text(' (general capability)', c)}")
    if card.comparisons or card.general_comparisons:
        lines.append("")
    if card.constant_answer:
        floor = card.floor
        bar = (f" The teacher and the student must each reach {floor.bar:.3f} (floor + {floor.margin:g} x the way "
               "to a perfect score).") if floor is not None else ""
        lines += [f"Floor: answering every row with the test split's most common answer scores {card.metric} "
                  f"{_fmt(card.constant_answer.get(card.metric))}.{bar}", ""]
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
    if card.generation:
        lines += ["## Generation", "",
                  "| model | time to first token ms | ms per output token | tokens/s (answer) | answer tokens "
                  "| tokens/s (64) | KV cache bytes/token | runtime |", "|---|---|---|---|---|---|---|---|"]
        for m, g in card.generation.items():
            kv = f"{g.kv_cache_bytes_per_token:,}" if g.kv_cache_bytes_per_token is not None else "no cache"
            lines.append(f"| {m} | {_fmt(g.ttft_ms, 1)} | {_fmt(g.tpot_ms, 1)} | {_fmt(g.tokens_per_s, 1)} "
                         f"| {g.answer_tokens} | {_fmt(g.tokens_per_s_64, 1)} | {kv} | {g.runtime} |")
        some = next(iter(card.generation.values()))
        lines += ["", f"One request through each model's runtime on {some.cpu}, {some.threads} threads; medians of "
                      f"{some.repeats} runs after {some.warmup} warm-up. Time to first token = image encoding + "
                      "prefill; tokens/s (64) = a fixed 64-token continuation.", ""]
    if card.memory:
        lines += ["## Memory of a process serving each model", "",
                  "| model | peak RSS | before the model loads | runtime | batch | how |", "|---|---|---|---|---|---|"]
        for m, mem in card.memory.items():
            lines.append(f"| {m} | {_mib(mem.peak_rss_bytes)} | {_mib(mem.baseline_rss_bytes)} | {mem.runtime} | "
                         f"{mem.batch_size} | {mem.how} |")
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
                  f"| artifact | {card.metric} | answered in batches of | p50 ms | p90 ms | size | predictions |",
                  "|---|---|---|---|---|---|---|"]
        for label, r in card.runtimes.items():
            lat = r.latency
            lines.append(f"| {label} | {_fmt(r.metrics.get(card.metric))} | {r.answer_batch_size or '—'} | "
                         f"{_fmt(lat and lat.p50_ms, 1)} | {_fmt(lat and lat.p90_ms, 1)} | {_mib(r.size_bytes)} | "
                         f"{r.predictions or '—'} |")
        lines.append("")
    if card.targets:
        lines += ["## Hardware targets", ""]
        for target in card.targets:
            lines += [f"### {target.name} ({target.device}, {target.runtime}): {fit_text(target)}", "",
                      "| check | ok | value | limit | how |", "|---|---|---|---|---|"]
            for c in target.checks:
                ok = "unknown" if c.ok is None else ("yes" if c.ok else "**no**")
                how = ("estimated: " if c.estimated else "measured" if c.ok is not None else "") + \
                      (c.note if c.estimated or c.ok is None else (f" — {c.note}" if c.note else ""))
                lines.append(f"| {c.name} | {ok} | {_fmt(c.value)} {c.unit} | {_fmt(c.limit)} {c.unit} | {how} |")
            lines.append("")
    lines += training_markdown(card.stages)
    lines += lineage_markdown(card.lineage)
    from ..lowbit.plan import markdown_lines

    lines += markdown_lines(card.stages.get("quantize"))
    if card.objectives:
        lines += ["## Objectives", "", "| objective | ok | value | limit | note |", "|---|---|---|---|---|"]
        for o in card.objectives:
            ok = "unknown" if o.ok is None else ("yes" if o.ok else "**no**")
            limit = ("≥ " if o.higher_is_better else "≤ ") + _fmt(o.limit)
            lines.append(f"| {o.name} | {ok} | {_fmt(o.value)} | {limit} | {o.note} |")
        lines.append("")
    if card.data is not None:
        lines += ["## Data cleaning", ""] + [f"- {line}" for line in cleaning_lines(card.data)] + [""]
    if card.skipped_rows:
        lines += ["## Skipped rows", ""] + [f"- {k}: {v}" for k, v in card.skipped_rows.items()] + [""]
    if card.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in card.notes] + [""]
    return "\n".join(lines)
