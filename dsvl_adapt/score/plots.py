"""Scorecard plots as PNG bytes.

Matplotlib is imported inside each function and drawn on an Agg canvas attached to a bare
``Figure`` (no pyplot, no global backend switch), so importing this module costs nothing and
plots can be drawn from any thread or process. Each function returns ``None`` when the card
has nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scorecard import Scorecard

MODEL_COLORS = {"base": "#9aa5b1", "teacher": "#3b6ea5", "student": "#e07b39"}
COMPONENT_COLORS = {"vision": "#5b8def", "aligner": "#f2b134", "language_model": "#4caf7d", "other": "#b0b0b0"}
FIT_COLORS = {"ok": "#4caf7d", "failed": "#e05252", "unchecked": "#d5d8dc",
              "ok (estimated)": "#b5e3c6", "failed (estimated)": "#f3b3b3"}
ESTIMATED_HATCH = "//"
DPI = 100


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


#: one colour per series where a plot has more lines than models (matplotlib's tab10, without its grey)
SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def _color(model: str, index: int) -> str:
    fallback = ("#7e57c2", "#26a69a", "#8d6e63", "#ec407a")
    return MODEL_COLORS.get(model, fallback[index % len(fallback)])


def byte_unit(largest: float | None) -> tuple[float, str]:
    """(divisor, name): KiB below 1 MiB, else MiB — one unit per table or plot so values compare."""
    return (2**10, "KiB") if largest is not None and largest < 2**20 else (2**20, "MiB")


# -- one scorecard -----------------------------------------------------------------------------
def accuracy_plot(card: Scorecard) -> bytes | None:
    """Grouped bars: every metric (and general capability) per model; primary metric and retention marked."""
    models = list(card.metrics) or list(card.accuracy)
    if not models:
        return None
    names: list[str] = []
    for values in card.metrics.values():
        names += [n for n in values if n not in names]
    if not names:
        names = [card.metric]
    groups = [(name, {m: card.metrics.get(m, {}).get(name, card.accuracy.get(m) if name == card.metric else None)
                      for m in models}) for name in names]
    if card.general:
        groups.append(("general capability", {m: card.general.get(m) for m in models}))
    figure = _figure(max(6.0, 1.6 * len(groups) + 2.5), 3.8)
    ax = figure.add_subplot()
    width = 0.8 / len(models)
    top = 1.0
    for i, model in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        values = [values.get(model) for _, values in groups]
        heights = [v if v is not None else 0.0 for v in values]
        top = max([top, *heights])
        bars = ax.bar(xs, heights, width * 0.92, label=model, color=_color(model, i))
        for bar, value in zip(bars, values):
            ax.annotate("n/a" if value is None else f"{value:.3f}", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7)
    labels = [f"{name}\n(primary)" if name == card.metric else name for name, _ in groups]
    ax.set_xticks(range(len(groups)), labels)
    for tick, (name, _) in zip(ax.get_xticklabels(), groups):
        if name == card.metric:
            tick.set_fontweight("bold")
    if card.metric in names:
        primary = names.index(card.metric)
        ax.axvspan(primary - 0.45, primary + 0.45, color="#fff3c4", zorder=0)
    ax.set_ylim(0, top * 1.18)
    ax.set_ylabel("score")
    retention = "n/a" if card.retention is None else f"{card.retention:.3f}"
    ax.set_title(f"{card.vertical}: metrics per model — retention (student / teacher, {card.metric}) = "
                 f"{retention}", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, ncols=len(models))
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def latency_size_plot(card: Scorecard) -> bytes | None:
    """Teacher vs student: latency percentiles and size on disk, with the change in percent."""
    models = [m for m in ("teacher", "student") if m in card.latency or m in card.size]
    if not models:
        return None
    figure = _figure(9.0, 3.6)
    lat_ax, size_ax = figure.subplots(1, 2, width_ratios=[2, 1])
    lat_models = [m for m in models if m in card.latency]
    if lat_models:
        quantiles = ("p50_ms", "p90_ms", "p99_ms")
        width = 0.8 / len(lat_models)
        for i, model in enumerate(lat_models):
            lat = card.latency[model]
            xs = [q + (i - (len(lat_models) - 1) / 2) * width for q in range(len(quantiles))]
            label = model if lat.measured else f"{model} (estimated)"
            bars = lat_ax.bar(xs, [getattr(lat, q) for q in quantiles], width * 0.92, label=label,
                              color=_color(model, i), hatch=None if lat.measured else ESTIMATED_HATCH,
                              edgecolor="white" if lat.measured else "black")
            lat_ax.bar_label(bars, fmt="%.1f", fontsize=7)
        lat_ax.set_xticks(range(len(quantiles)), ["p50", "p90", "p99"])
        lat_ax.set_ylabel("ms per forward (image + prompt)")
        runtimes = ", ".join(sorted({card.latency[m].runtime for m in lat_models}))
        title = f"latency ({runtimes})"
        if "teacher" in card.latency and "student" in card.latency and card.latency["teacher"].p90_ms:
            change = card.latency["student"].p90_ms / card.latency["teacher"].p90_ms - 1
            title += f" — student p90 {change:+.0%}"
        lat_ax.set_title(title, fontsize=10)
        lat_ax.legend(fontsize=8)
        lat_ax.margins(y=0.15)
        lat_ax.grid(axis="y", alpha=0.3)
    else:
        lat_ax.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=lat_ax.transAxes)
        lat_ax.set_axis_off()
    size_models = [m for m in models if m in card.size]
    if size_models:
        div, unit = byte_unit(max(card.size[m].bytes for m in size_models))
        values = [card.size[m].bytes / div for m in size_models]
        bars = size_ax.bar(size_models, values, color=[_color(m, i) for i, m in enumerate(size_models)])
        size_ax.bar_label(bars, fmt="%.1f", fontsize=7)
        size_ax.set_ylabel(f"{unit} on disk")
        title = "size on disk"
        if len(size_models) == 2 and card.size["teacher"].bytes:
            title += f" — student {card.size['student'].bytes / card.size['teacher'].bytes - 1:+.0%}"
        size_ax.set_title(title, fontsize=10)
        size_ax.margins(y=0.15)
        size_ax.grid(axis="y", alpha=0.3)
    else:
        size_ax.set_axis_off()
    return _png(figure)


def size_breakdown_plot(card: Scorecard) -> bytes | None:
    """Stacked bars: weight bytes per component (vision, aligner, language_model) per model."""
    models = [m for m, size in card.size.items() if size.by_component]
    if not models:
        return None
    components = [c for c in COMPONENT_COLORS if any(c in card.size[m].by_component for m in models)]
    components += sorted({c for m in models for c in card.size[m].by_component} - set(components))
    figure = _figure(8.0, 0.55 * len(models) + 1.9)
    ax = figure.add_subplot()
    div, unit = byte_unit(max(sum(card.size[m].by_component.values()) for m in models))
    left = [0.0] * len(models)
    for component in components:
        widths = [card.size[m].by_component.get(component, 0) / div for m in models]
        bars = ax.barh(models, widths, left=left, label=component,
                       color=COMPONENT_COLORS.get(component, "#888888"))
        totals = [sum(card.size[m].by_component.values()) / div for m in models]
        labels = [f"{w:.1f}" if total and w / total > 0.08 else "" for w, total in zip(widths, totals)]
        ax.bar_label(bars, labels=labels, label_type="center", fontsize=7, color="white")
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} of weights in memory")
    ax.set_title("weights per component", fontsize=10)
    figure.legend(fontsize=8, ncols=len(components), loc="outside lower center")
    ax.margins(x=0.05)
    return _png(figure)


def fit_state(check: Any) -> str:
    """``ok``, ``failed``, ``unchecked``, or ``ok (estimated)`` / ``failed (estimated)``."""
    if check.ok is None:
        return "unchecked"
    state = "ok" if check.ok else "failed"
    return f"{state} (estimated)" if check.estimated else state


def _cell_value(value: Any, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
        text = text if len(text) <= 14 else text[:13] + "…"
    return f"\n{text}{' ' + unit if unit else ''}"


def target_fit_plot(card: Scorecard) -> bytes | None:
    """A grid: one row per target, one column per check, coloured ok / failed / unchecked / estimated."""
    if not card.targets:
        return None
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch, Rectangle

    columns: list[str] = []
    for target in card.targets:
        columns += [c.name for c in target.checks if c.name not in columns]
    figure = _figure(max(6.0, 1.05 * (len(columns) + 1) + 1.8), 0.55 * len(card.targets) + 1.2)
    ax = figure.add_subplot()
    word = {"ok": "ok", "failed": "FAIL", "unchecked": "unchecked", "ok (estimated)": "ok (est.)",
            "failed (estimated)": "FAIL (est.)"}
    for row, target in enumerate(card.targets):
        checks = {c.name: c for c in target.checks}
        cells: list[tuple[str, str | None]] = [
            (target.status, "ok" if target.fits else "unchecked" if target.status == "unknown" else "failed")]
        for name in columns:
            check = checks.get(name)
            if check is None:
                cells.append(("n/a", None))
                continue
            state = fit_state(check)
            cells.append((word[state] + _cell_value(check.value, check.unit), state))
        for col, (text, state) in enumerate(cells):
            color = FIT_COLORS[state] if state else "#ffffff"
            hatch = ESTIMATED_HATCH if state and "estimated" in state else None
            ax.add_patch(Rectangle((col, row), 1, 1, facecolor=color, edgecolor="white", linewidth=2, hatch=hatch))
            dark = sum(to_rgb(color)) < 1.8
            ax.text(col + 0.5, row + 0.5, text, ha="center", va="center", fontsize=7.5,
                    color="white" if dark else ("#9aa5b1" if state is None else "black"),
                    fontweight="bold" if col == 0 else None,
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1} if hatch else None)
    ax.set_xlim(0, len(columns) + 1)
    ax.set_ylim(len(card.targets), 0)
    ax.set_xticks([c + 0.5 for c in range(len(columns) + 1)], ["verdict", *columns], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([r + 0.5 for r in range(len(card.targets))],
                  [f"{t.name}\n{t.device}, {t.runtime}" for t in card.targets], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    handles = [Patch(facecolor=color, hatch=ESTIMATED_HATCH if "estimated" in state else None, label=state)
               for state, color in FIT_COLORS.items()]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7)
    return _png(figure)


def accuracy_ttft_plot(series: dict[str, list[tuple[float, float, str]]], *, metric: str = "accuracy",
                       title: str = "accuracy against time to first token") -> bytes | None:
    """One line per token-reduction method through its (time to first token ms, accuracy, label) points."""
    series = {name: sorted(points) for name, points in series.items() if points}
    if not series:
        return None
    figure = _figure(6.4, 4.2)
    ax = figure.add_subplot()
    for index, (name, points) in enumerate(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name,
                color=MODEL_COLORS.get(name, SERIES_COLORS[index % len(SERIES_COLORS)]))
        for x, y, label in points:
            ax.annotate(label, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xlabel("time to first token (ms, vision + prefill)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.legend(fontsize=7, loc="best")
    return _png(figure)


def tokens_plot(card: Scorecard) -> bytes | None:
    """The teacher (all image tokens) and the student (K) as accuracy against time to first token."""
    points = {}
    for role, tokens in card.tokens.items():
        if tokens.ttft_ms is not None and role in card.accuracy:
            name = tokens.method or "full"
            points.setdefault(name, []).append((tokens.ttft_ms, card.accuracy[role],
                                                f"{role} ({tokens.image_tokens} tokens)"))
    return accuracy_ttft_plot(points, metric=card.metric) if points else None


def training_plot(card: Scorecard) -> bytes | None:
    """Each training phase side by side: training loss and validation loss (log scale, left axis) and validation
    exact match (right axis) against the step; a phase that took no step shows its one evaluation."""
    from .training import training_phases

    phases = training_phases(card.stages)
    if not phases:
        return None
    figure = _figure(3.2 * len(phases), 2.8)
    axes = figure.subplots(1, len(phases), squeeze=False)[0]
    for ax, phase in zip(axes, phases):
        steps = [(r["step"], r["loss"]) for r in phase.history if "loss" in r]
        evaluations = phase.evaluations
        if steps:
            ax.plot(*zip(*steps), color="#90a4ae", linewidth=0.8, label="training loss")
        if evaluations:
            ax.plot([r["step"] for r in evaluations], [r["validation_loss"] for r in evaluations], "o-",
                    color="#1e88e5", markersize=3, label="validation loss")
        if steps or evaluations:
            ax.set_yscale("log")
        exact = [(r["step"], r["validation_exact_match"]) for r in evaluations if "validation_exact_match" in r]
        right = ax.twinx()
        if exact:
            right.plot(*zip(*exact), "s-", color="#43a047", markersize=3, label="validation exact match")
        right.set_ylim(0, 1.05)
        end = max(phase.planned or 0, phase.steps, 1)  # the budget on the x axis: an early stop shows as such
        ax.set_xlim(-0.03 * end, 1.03 * end)
        if phase.planned is not None and phase.steps < phase.planned:
            ax.axvline(phase.steps, color="#e53935", linestyle="--", linewidth=0.8)
        ax.set_title(f"{phase.label}: {phase.steps_text} steps", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        right.tick_params(labelsize=6)
    axes[0].set_ylabel("loss (log)", fontsize=7)
    right.set_ylabel("exact match", fontsize=7)
    handles = [h for ax in (axes[0], right) for h in ax.get_legend_handles_labels()[0]]
    labels = [label for ax in (axes[0], right) for label in ax.get_legend_handles_labels()[1]]
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=6, frameon=False)
    return _png(figure)


def scorecard_plots(card: Scorecard) -> dict[str, bytes]:
    """Every plot the card has data for, by name: accuracy, latency_size, size_breakdown, target_fit, tokens,
    training."""
    plots = {"accuracy": accuracy_plot(card), "latency_size": latency_size_plot(card),
             "size_breakdown": size_breakdown_plot(card), "target_fit": target_fit_plot(card),
             "tokens": tokens_plot(card), "training": training_plot(card)}
    return {name: png for name, png in plots.items() if png is not None}


# -- many scorecards (a sweep) -----------------------------------------------------------------
@dataclass
class ParetoPoint:
    label: str
    x: float
    y: float
    feasible: bool
    on_front: bool
    best: bool = False


def pareto_plot(points: Sequence[ParetoPoint], *, xlabel: str, ylabel: str, title: str) -> bytes | None:
    """Runs as points (feasible filled, infeasible hollow), the front as a step line, the best starred."""
    if not points:
        return None
    figure = _figure(6.4, 4.4)
    ax = figure.add_subplot()
    front = sorted((p for p in points if p.on_front), key=lambda p: (p.x, p.y))
    if front:
        ax.step([p.x for p in front], [p.y for p in front], where="post", color="#3b6ea5", alpha=0.6,
                linewidth=1.5, label="Pareto front", zorder=1)
    feasible = [p for p in points if p.feasible]
    infeasible = [p for p in points if not p.feasible]
    if feasible:
        ax.scatter([p.x for p in feasible], [p.y for p in feasible], s=60, color="#4caf7d",
                   edgecolor="black", label="feasible (meets objectives)", zorder=3)
    if infeasible:
        ax.scatter([p.x for p in infeasible], [p.y for p in infeasible], s=60, facecolor="none",
                   edgecolor="#e05252", linewidth=1.5, label="infeasible", zorder=3)
    best = [p for p in points if p.best]
    if best:
        ax.scatter([p.x for p in best], [p.y for p in best], s=260, marker="*", color="#f2b134",
                   edgecolor="black", label="best", zorder=4)
    for p in points:
        ax.annotate(p.label, (p.x, p.y), xytext=(5, 4), textcoords="offset points", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.legend(fontsize=7, loc="best")
    return _png(figure)


# -- continual adaptation ------------------------------------------------------------------------
def weekly_accuracy_plot(panels: dict[str, dict[str, list[tuple[float, float, float, float]]]], *,
                         title: str) -> bytes | None:
    """One panel per evaluation set (e.g. new items, base items): accuracy per week for each strategy, its 95%
    interval as a band. ``panels[set][strategy]`` is a list of ``(week, value, low, high)``."""
    if not panels:
        return None
    from matplotlib.ticker import MaxNLocator

    figure = _figure(5.2 * len(panels), 4.0)
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (name, series) in zip(axes, panels.items()):
        for index, (strategy, points) in enumerate(series.items()):
            points = sorted(points)
            weeks = [p[0] for p in points]
            color = _color(strategy, index)
            ax.plot(weeks, [p[1] for p in points], marker="o", color=color, label=strategy)
            ax.fill_between(weeks, [p[2] for p in points], [p[3] for p in points], color=color, alpha=0.15)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("week (0 = before the first increment)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (95% interval)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=7, loc="best")
    figure.suptitle(title, fontsize=10)
    return _png(figure)


def lineage_plot(edges: Sequence[dict[str, Any]]) -> bytes | None:
    """What each update did, from ``dsvl-adapt report``'s lineage edges (:func:`.lineage.lineage_edges`): one panel
    for the old test split (the parent's) and one for the new test rows (the increment's); per update, at its
    version, a hollow marker for the parent and a filled one (with its 95% interval) for the update, joined by a
    line, one colour per strategy."""
    edges = [e for e in edges if e.get("old") or e.get("new")]
    if not edges:
        return None
    strategies = list(dict.fromkeys(e["strategy"] for e in edges))
    versions = sorted({e["version"] for e in edges})
    figure = _figure(10.4, 4.0)
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (key, title) in zip(axes, (("old", "old test split (the parent's)"),
                                       ("new", "new test rows (the increment's)"))):
        for index, strategy in enumerate(strategies):
            color = SERIES_COLORS[index % len(SERIES_COLORS)]
            shift = (index - (len(strategies) - 1) / 2) * 0.12
            labelled = False
            for edge in (e for e in edges if e["strategy"] == strategy and e.get(key)):
                x, values = edge["version"] + shift, edge[key]
                ax.plot([x, x], [values["parent"], values["update"]], color=color, linewidth=1.2, alpha=0.7)
                ax.scatter([x], [values["parent"]], s=36, facecolor="white", edgecolor=color, zorder=3)
                ci = (edge.get("intervals") or {}).get(key, {}).get("update")
                errors = [[values["update"] - ci[0]], [ci[1] - values["update"]]] if ci else None
                ax.errorbar([x], [values["update"]], yerr=errors, fmt="o", color=color, markersize=6, capsize=3,
                            zorder=4, label=None if labelled else strategy)
                labelled = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("version (hollow: its parent, filled: after the update)")
        ax.set_xticks(versions)
        ax.set_xlim(versions[0] - 0.6, versions[-1] + 0.6)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy of the deployed artifact (95% interval)")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=7, loc="best", title="strategy", title_fontsize=7)
    figure.suptitle("What each update did: forgetting on the left, learning on the right", fontsize=10)
    return _png(figure)
