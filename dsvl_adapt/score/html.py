"""The scorecard as one self-contained HTML page: inline CSS, plots as base64 PNG, no scripts.

The page holds what ``scorecard.md`` holds (accuracy, speed and size, hardware targets,
objectives, skipped rows, notes) plus the plots, a summary with the verdict, and the
provenance. Every estimated figure is labelled ``estimated`` with how it was made.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from .plots import byte_unit
from .scorecard import Scorecard, _fmt, _mib, ci_text, cleaning_lines, comparison_text, fit_text, verdict_text

CSS = """
:root { --ok: #2e7d4f; --bad: #c62828; --muted: #6b7280; --line: #e5e7eb; --est: #8a5a00; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #111827;
       margin: 0; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 10px;
     border-bottom: 1px solid var(--line); padding-bottom: 4px; } h3 { font-size: 15px; margin: 20px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.verdict { display: inline-block; padding: 6px 14px; border-radius: 6px; font-weight: 700; color: #fff; }
.verdict.ok { background: var(--ok); } .verdict.bad { background: var(--bad); }
.verdict.none { background: var(--muted); }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 10px; margin: 16px 0; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.tile .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.tile .v { font-size: 20px; font-weight: 650; } .tile .d { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.primary td:first-child { font-weight: 700; }
.yes { color: var(--ok); font-weight: 600; } .no { color: var(--bad); font-weight: 700; } .na { color: var(--muted); }
.est { display: inline-block; font-size: 11px; font-weight: 700; color: var(--est); background: #fff4d6;
       border: 1px solid #f0c36d; border-radius: 4px; padding: 0 5px; margin-right: 4px; }
.how { color: var(--muted); font-size: 12px; }
figure { margin: 12px 0 18px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
pre { background: #f6f7f9; padding: 10px; overflow-x: auto; font-size: 12px; }
details summary { cursor: pointer; font-weight: 600; }
.scroll { overflow-x: auto; } .nowrap { white-space: nowrap; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; } .figures figure { flex: 1 1 460px; margin: 6px 0; }
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], row_classes: Iterable[str] = ()) -> str:
    """Cells are HTML already (escape them before)."""
    classes = list(row_classes)
    out = ['<div class="scroll"><table><thead><tr>', *(f"<th>{h}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _td(value: Any, digits: int = 3, num: bool = True) -> str:
    return f'<td class="num">{_e(_fmt(value, digits))}</td>' if num else f"<td>{_e(_fmt(value, digits))}</td>"


def _figure_text(value: Any) -> str:
    """A check's value or limit: integral floats (an opset, a GB limit) without decimals."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _fmt(value)


def _ok(ok: bool | None) -> str:
    if ok is None:
        return '<td class="na">unknown</td>'
    return '<td class="yes">yes</td>' if ok else '<td class="no">no</td>'


def _estimated(how: str | None) -> str:
    return f'<span class="est">estimated</span><span class="how">{_e(how or "method not recorded")}</span>'


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _size(n: int | None, unit: tuple[float, str]) -> str:
    return "—" if n is None else f"{n / unit[0]:.1f} {unit[1]}"


def _change(new: float | None, old: float | None) -> str:
    if new is None or not old:
        return ""
    return "same as teacher" if new == old else f"{new / old - 1:+.0%} vs teacher"


def _summary(card: Scorecard) -> str:
    text = verdict_text(card)
    head, _, detail = text.partition(" (")
    cls = "ok" if card.verdict else "bad" if card.verdict is False else "none"
    verdict = f'<span class="verdict {cls}">{_e(head)}</span>' + \
        (f' <span class="how">({_e(detail)}</span>' if detail else "")
    tiles = []
    student = "student" if "student" in card.accuracy else next(reversed(card.accuracy), None)
    if student is not None:
        teacher = card.accuracy.get("teacher")
        detail = f"teacher {_fmt(teacher)}" if teacher is not None and student != "teacher" else ""
        ci = card.accuracy_ci.get(student)
        detail = "; ".join(filter(None, [ci_text(ci), detail]))
        tiles.append((f"{card.metric} ({student})", _fmt(card.accuracy[student]), detail))
    tiles.append(("retention", _fmt(card.retention), f"student / teacher, {card.metric}"
                  + (f"; {ci_text(card.retention_ci)}" if card.retention_ci else "")))
    lat = card.latency.get("student")
    if lat is not None:
        teacher = card.latency.get("teacher")
        detail = _change(lat.p90_ms, teacher and teacher.p90_ms)
        if not lat.measured:
            detail = ("estimated; " + detail).rstrip("; ")
        tiles.append((f"student p90 ({lat.runtime})", f"{lat.p90_ms:.1f} ms", detail))
    size = card.size.get("student")
    if size is not None:
        teacher_size = card.size.get("teacher")
        tiles.append(("student size on disk", _size(size.bytes, byte_unit(size.bytes)),
                      _change(size.bytes, teacher_size and teacher_size.bytes)))
    if "student" in card.params:
        tiles.append(("student parameters", f"{card.params['student']:,}",
                      _change(card.params["student"], card.params.get("teacher"))))
    if card.targets:
        fits = [t.name for t in card.targets if t.fits]
        tiles.append(("targets fit", f"{len(fits)} / {len(card.targets)}", ", ".join(fits) or "none"))
    body = "".join(f'<div class="tile"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
                   f'<div class="d">{_e(d)}</div></div>' for k, v, d in tiles)
    diagnosis = ""
    if card.teacher_diagnosis is not None:
        d = card.teacher_diagnosis
        diagnosis = ('<div id="teacher-diagnosis"><h2>The teacher did not reach the floor\'s bar</h2>'
                     f"<p>{_e(d.summary)}</p><p>Likely causes:</p><ul>"
                     + "".join(f"<li>{_e(c)}</li>" for c in d.causes) + "</ul><p>What to try:</p><ul>"
                     + "".join(f"<li><code>{_e(r)}</code></li>" if "=" in r.split(" ")[0] else f"<li>{_e(r)}</li>"
                               for r in d.remedies) + "</ul></div>")
    return f'<section id="summary"><p>{verdict}</p><div class="tiles">{body}</div>{diagnosis}</section>'


def _accuracy(card: Scorecard, plots: dict[str, bytes]) -> str:
    models = list(card.accuracy)
    names: list[str] = []
    for values in card.metrics.values():
        names += [n for n in values if n not in names]
    rows, classes = [], []
    def cell(value: float | None, ci: list[float] | None) -> str:
        interval = f' <span class="how">{_e(ci_text(ci))}</span>' if ci else ""
        return f'<td class="num">{_e(_fmt(value))}{interval}</td>'

    for name in names:
        label = f"{_e(name)} (primary)" if name == card.metric else _e(name)
        rows.append([f"<td>{label}</td>", *(cell(card.metrics.get(m, {}).get(name),
                                                  card.accuracy_ci.get(m) if name == card.metric else None)
                                             for m in models)])
        classes.append("primary" if name == card.metric else "")
    if card.general:
        rows.append(["<td>general capability</td>", *(cell(card.general.get(m), card.general_ci.get(m))
                                                      for m in models)])
        classes.append("")
    retention_ci = f" {_e(ci_text(card.retention_ci))}" if card.retention_ci else ""
    out = ['<section id="accuracy"><h2>Accuracy</h2>',
           _table(["metric", *map(_e, models)], rows, classes),
           (f"<p>Retention (student / teacher, {_e(card.metric)}): <strong>{_e(_fmt(card.retention))}</strong>"
            f"{retention_ci}{'' if not card.test_rows else f' ({card.test_rows} test rows)'}</p>")]
    if card.intervals is not None:
        out.append(f'<p class="how">[low, high]: {card.intervals.level:.0%} {_e(card.intervals.method)} '
                   f"({card.intervals.resamples} resamples, seed {card.intervals.seed}).</p>")
    items = [comparison_text(f" ({card.metric})", c) for c in card.comparisons.values()] + \
            [comparison_text(" (general capability)", c) for c in card.general_comparisons.values()]
    if items:
        out.append('<ul class="comparisons">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>")
    if card.constant_answer:
        bar = (f" The teacher and the student must each reach {card.floor.bar:.3f} (floor + {card.floor.margin:g} x "
               "the way to a perfect score).") if card.floor is not None else ""
        out.append(f'<p class="how">Floor: answering every row with the test split\'s most common answer scores '
                   f"{_e(card.metric)} {_e(_fmt(card.constant_answer.get(card.metric)))}.{_e(bar)}</p>")
    if "accuracy" in plots:
        out.append(_img(plots["accuracy"], "accuracy per model and metric",
                        f"Every metric per model; the primary metric ({_e(card.metric)}) is highlighted."))
    out.append("</section>")
    return "".join(out)


def _speed_size(card: Scorecard, plots: dict[str, bytes]) -> str:
    if not (card.latency or card.size):
        return ""
    models = list(dict.fromkeys([*card.accuracy, *card.latency, *card.size]))
    unit = byte_unit(max((s.bytes for s in card.size.values()), default=None))
    rows = []
    for m in models:
        lat, size = card.latency.get(m), card.size.get(m)
        params = card.params.get(m)
        how = "" if lat is None else ("measured" if lat.measured else _estimated(lat.estimate))
        rows.append([f"<td>{_e(m)}</td>", _td(lat and lat.p50_ms, 1), _td(lat and lat.p90_ms, 1),
                     _td(lat and lat.p99_ms, 1), _td(lat and lat.decode_ms_per_token, 1),
                     f"<td>{_e(lat.runtime) if lat else '—'}</td>", f"<td>{how or '—'}</td>",
                     f'<td class="num">{f"{params:,}" if isinstance(params, int) else "—"}</td>',
                     f'<td class="num">{_e(_size(size and size.bytes, unit))}</td>',
                     f'<td class="num">{_e(_size(size and size.weight_bytes, unit))}</td>'])
    out = ['<section id="speed-size"><h2>Speed and size</h2>',
           _table(["model", "p50 ms", "p90 ms", "p99 ms", "decode ms/token", "runtime", "how", "params",
                   "size on disk", "weights in memory"], rows)]
    some = next(iter(card.latency.values()), None)
    if some is not None:
        out.append(f'<p class="how">Measured on {_e(some.cpu)}, {_e(some.threads)} threads, batch '
                   f"{some.batch_size}, {some.warmup} warm-up + {some.repeats} timed runs (latency = one forward "
                   f"over image + prompt).</p>")
    if card.runtimes:
        rows = [[f"<td>{_e(label)}</td>", _td(r.metrics.get(card.metric)), _td(r.answer_batch_size),
                 _td(r.latency and r.latency.p50_ms, 1),
                 _td(r.latency and r.latency.p90_ms, 1), f'<td class="num">{_e(_size(r.size_bytes, unit))}</td>']
                for label, r in card.runtimes.items()]
        out += ["<h3>The student on each runtime</h3>",
                '<p class="how">Accuracy measured through each artifact itself, not through the PyTorch model '
                "it came from.</p>",
                _table(["artifact", _e(card.metric), "answered in batches of", "p50 ms", "p90 ms", "size"], rows)]
    if card.generation:
        rows = [[f"<td>{_e(m)}</td>", _td(g.ttft_ms, 1), _td(g.tpot_ms, 1), _td(g.tokens_per_s, 1),
                 _td(g.answer_tokens), _td(g.tokens_per_s_64, 1),
                 (f'<td class="num">{g.kv_cache_bytes_per_token:,}</td>' if g.kv_cache_bytes_per_token is not None
                  else "<td>no cache</td>"),
                 f"<td>{_e(g.runtime)}</td>"] for m, g in card.generation.items()]
        some = next(iter(card.generation.values()))
        out += ["<h3>Generation</h3>",
                _table(["model", "time to first token ms", "ms per output token", "tokens/s (answer)",
                        "answer tokens", "tokens/s (64)", "KV cache bytes/token", "runtime"], rows),
                f'<p class="how">One request through each model\'s runtime on {_e(some.cpu)}, {_e(some.threads)} '
                f"threads; medians of {some.repeats} runs after {some.warmup} warm-up. Time to first token = image "
                "encoding + prefill; tokens/s (64) = a fixed 64-token continuation (EOS ignored).</p>"]
    if card.throughput:
        rows = [[f"<td>{_e(t.target)}</td>", f"<td>{_e(t.runtime)}</td>", _td(t.batch_size),
                 _td(t.requests_per_s, 2), _td(t.batch_p50_ms, 1),
                 f"<td>{'measured' if t.measured else '<em>estimated</em>'}: {_e(t.how)}</td>"]
                for t in card.throughput]
        out += ["<h3>Throughput at each target's batch size</h3>",
                _table(["target", "runtime", "batch", "requests/s", "batch p50 ms", "how"], rows)]
    if card.memory:
        rows = [[f"<td>{_e(m)}</td>", f'<td class="num">{_e(_mib(mem.peak_rss_bytes))}</td>',
                 f'<td class="num">{_e(_mib(mem.baseline_rss_bytes))}</td>', f"<td>{_e(mem.runtime)}</td>",
                 _td(mem.batch_size), f'<td class="how">{_e(mem.how)}</td>'] for m, mem in card.memory.items()]
        out += ["<h3>Memory of a process serving each model</h3>",
                _table(["model", "peak RSS", "before the model loads", "runtime", "batch", "how"], rows)]
    if card.peak_rss_bytes:
        out.append(f'<p class="how">Peak resident memory of the scoring process (every model it scored): '
                   f"{_e(_mib(card.peak_rss_bytes))}.</p>")
    if "latency_size" in plots:
        out.append(_img(plots["latency_size"], "latency and size, teacher vs student",
                        "Teacher vs student; hatched bars are estimates."))
    components = [m for m, s in card.size.items() if s.by_component]
    if components:
        names = list(dict.fromkeys(c for m in components for c in card.size[m].by_component))
        unit = byte_unit(max(sum(card.size[m].by_component.values()) for m in components))
        rows = [[f"<td>{_e(m)}</td>",
                 *(f'<td class="num">{_e(_size(card.size[m].by_component.get(c), unit))}</td>' for c in names)]
                for m in components]
        out += ["<h3>Weights per component</h3>", _table(["model", *map(_e, names)], rows)]
    if "size_breakdown" in plots:
        out.append(_img(plots["size_breakdown"], "weight bytes per component",
                        "Weight bytes in memory per component."))
    out.append("</section>")
    return "".join(out)


def _tokens(card: Scorecard, plots: dict[str, bytes]) -> str:
    """Visual tokens (prune.tokens): image tokens, method and time to first token per model, and the plot."""
    if not card.tokens:
        return ""
    rows = [[f"<td>{_e(m)}</td>",
             f"<td>{t.image_tokens} of {t.in_sequence} (mask)</td>" if t.in_sequence else _td(t.image_tokens),
             f"<td>{_e(t.method or '—')}</td>", _td(t.keep),
             _td(t.ttft_ms, 1), f"<td>{_e(t.runtime or '—')}</td>"] for m, t in card.tokens.items()]
    out = ['<section id="tokens"><h2>Visual tokens</h2>',
           _table(["model", "image tokens", "method", "keep", "time to first token ms", "runtime"], rows)]
    if "tokens" in plots:
        out.append(_img(plots["tokens"], "accuracy against time to first token",
                        "Accuracy against time to first token (vision + prefill, one request)."))
    out.append("</section>")
    return "".join(out)


def _training(card: Scorecard, plots: dict[str, bytes]) -> str:
    """Training phases: steps taken of those planned, the last validation figures, why each stopped, and curves."""
    from .training import training_phases

    phases = training_phases(card.stages)
    if not phases:
        return ""
    rows = []
    for phase in phases:
        last = phase.last_evaluation or {}
        rows.append([f"<td>{_e(phase.label)}</td>", f'<td class="num">{_e(phase.steps_text)}</td>',
                     _td(last.get("validation_loss"), 4), _td(last.get("validation_exact_match")),
                     f"<td>{_e(phase.precision)}</td>", f"<td>{_e(phase.why)}</td>"])
    out = ['<section id="training"><h2>Training</h2>',
           _table(["phase", "steps", "validation loss", "validation exact match", "precision", "why it stopped"],
                  rows)]
    if "training" in plots:
        out.append(_img(plots["training"], "training and validation loss and validation exact match by step",
                        "Loss (log scale) and validation exact match by step, per phase."))
    out.append("</section>")
    return "".join(out)


def _targets(card: Scorecard, plots: dict[str, bytes]) -> str:
    if not card.targets:
        return ""
    out = ['<section id="targets"><h2>Hardware targets</h2>']
    if "target_fit" in plots:
        out.append(_img(plots["target_fit"], "fit checks per target",
                        "Each check per target: ok, failed, unchecked; hatched cells are estimated."))
    for target in card.targets:
        cls = "yes" if target.status == "fits" else "no" if target.status == "does not fit" else "na"
        verdict = f'<span class="{cls}">{_e(fit_text(target))}</span>'
        rows = []
        for c in target.checks:
            unit = f" {_e(c.unit)}" if c.unit else ""
            if c.estimated:
                how = _estimated(c.note)
            elif c.ok is None:
                how = f'<span class="how">{_e(c.note)}</span>'
            else:
                how = "measured" + (f' <span class="how">— {_e(c.note)}</span>' if c.note else "")
            rows.append([f"<td>{_e(c.name)}</td>", _ok(c.ok),
                         f'<td class="num nowrap">{_e(_figure_text(c.value))}{unit if c.value is not None else ""}</td>',
                         f'<td class="num nowrap">{_e(_figure_text(c.limit))}{unit if c.limit is not None else ""}</td>',
                         f"<td>{how}</td>"])
        out += [f"<h3>{_e(target.name)} ({_e(target.device)}, {_e(target.runtime)}): {verdict}</h3>",
                _table(["check", "ok", "value", "limit", "how"], rows)]
    out.append("</section>")
    return "".join(out)


def _lineage(card: Scorecard) -> str:
    from .lineage import lineage_html

    return lineage_html(card.lineage)


def _objectives(card: Scorecard) -> str:
    if not card.objectives:
        return ""
    rows = [[f"<td>{_e(o.name)}</td>", _ok(o.ok), _td(o.value),
             f'<td class="num">{"≥" if o.higher_is_better else "≤"} {_e(_fmt(o.limit))}</td>',
             f'<td class="how">{_e(o.note)}</td>'] for o in card.objectives]
    return '<section id="objectives"><h2>Objectives</h2>' + \
        _table(["objective", "ok", "value", "limit", "note"], rows) + "</section>"


def _lists(card: Scorecard) -> str:
    out = []
    if card.data is not None:
        items = "".join(f"<li>{_e(line)}</li>" for line in cleaning_lines(card.data))
        out.append(f'<section id="cleaning"><h2>Data cleaning</h2><ul>{items}</ul></section>')
    if card.skipped_rows:
        items = "".join(f"<li>{_e(k)}: {v}</li>" for k, v in card.skipped_rows.items())
        out.append(f'<section id="skipped"><h2>Skipped rows</h2><ul>{items}</ul></section>')
    if card.notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in card.notes)
        out.append(f'<section id="notes"><h2>Notes</h2><ul>{items}</ul></section>')
    return "".join(out)


def _provenance(card: Scorecard) -> str:
    if not card.provenance and not card.stages:
        return ""
    prov = card.provenance
    facts = [(k, prov[k]) for k in ("run_dir", "git_revision", "seed", "threads", "cpu_count") if k in prov]
    rows = [[f"<td>{_e(k)}</td>", f"<td>{_e(v)}</td>"] for k, v in facts]
    out = ['<section id="provenance"><h2>Provenance</h2>']
    if rows:
        out.append(_table(["field", "value"], rows))
    for key, title in (("versions", "package versions"), ("config", "configuration")):
        if key in prov:
            out.append(f"<details><summary>{title}</summary><pre>"
                       f"{_e(json.dumps(prov[key], indent=2, default=str))}</pre></details>")
    if card.stages:
        out.append(f"<details><summary>figures recorded by each stage</summary><pre>"
                   f"{_e(json.dumps(card.stages, indent=1, default=str))}</pre></details>")
    out.append(f'<p class="how">scorecard schema version {card.schema_version}</p></section>')
    return "".join(out)


def render_html(card: Scorecard) -> str:
    """The whole scorecard as one self-contained HTML document (no external assets, no scripts)."""
    from .plots import scorecard_plots

    plots = scorecard_plots(card)
    subtitle = f"primary metric: {card.metric} ({'higher' if card.higher_is_better else 'lower'} is better)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Scorecard — {_e(card.vertical)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>Scorecard — {_e(card.vertical)}</h1><p class=\"sub\">{_e(subtitle)}</p>",
        _summary(card), _accuracy(card, plots), _speed_size(card, plots), _tokens(card, plots),
        _targets(card, plots), _training(card, plots), _lineage(card), _objectives(card), _lists(card),
        _provenance(card),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_html(card: Scorecard, directory: str | Path) -> Path:
    """Write ``scorecard.html`` in ``directory``; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scorecard.html"
    path.write_text(render_html(card), encoding="utf-8")
    return path
