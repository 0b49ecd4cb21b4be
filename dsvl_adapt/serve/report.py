"""``dsvl-adapt monitor LOG_DIR``: the request log as one self-contained HTML page.

Latency percentiles over time (per window of requests), confidence over time and its distribution, the drift
statistics against the training reference, flagged answers, and the hard cases with their images. Plots are drawn
like the scorecard's (:mod:`dsvl_adapt.score.plots`: Agg canvas, no pyplot) and the page uses the scorecard's styles
(:mod:`dsvl_adapt.score.html`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DsvlAdaptError
from ..score.html import CSS, _e, _img, _table
from ..score.plots import _figure, _png
from .drift import STATISTICS
from .monitor import HARD_CASES, REQUEST_LOG, read_request_log

REPORT_FILE = "monitor.html"


def _windows(records: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [records[i: i + size] for i in range(0, len(records), size)] if records else []


def latency_plot(answered: list[dict[str, Any]]) -> bytes | None:
    """p50/p90/p99 of end-to-end latency (and p50 of queue, prefill, decode) per window of requests over time."""
    if not answered:
        return None
    size = max(5, len(answered) // 20)
    figure = _figure(7.5, 3.4)
    ax = figure.add_subplot(1, 1, 1)
    times = [np.mean([r["time"] for r in w]) - answered[0]["time"] for w in _windows(answered, size)]
    for q, style in ((50, "-"), (90, "--"), (99, ":")):
        values = [np.percentile([r["latency_ms"]["total"] for r in w], q) for w in _windows(answered, size)]
        ax.plot(times, values, style, color="#3b6ea5", marker="o", ms=3, label=f"total p{q}")
    for phase, color in (("queue", "#9aa5b1"), ("prefill", "#e07b39"), ("decode", "#4caf7d")):
        values = [np.percentile([r["latency_ms"][phase] for r in w], 50) for w in _windows(answered, size)]
        ax.plot(times, values, "-", color=color, lw=1, label=f"{phase} p50")
    ax.set_xlabel(f"seconds since the first request (windows of {size} requests)")
    ax.set_ylabel("ms")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(fontsize=8, ncols=2)
    ax.grid(alpha=0.3)
    return _png(figure)


def confidence_plot(answered: list[dict[str, Any]]) -> bytes | None:
    known = [(r["time"] - answered[0]["time"], r["confidence"]["mean_logprob"]) for r in answered
             if r.get("confidence", {}).get("known") and not r.get("cache_hit")]
    if not known:
        return None
    figure = _figure(7.5, 3.0)
    left, right = figure.subplots(1, 2, width_ratios=[2, 1])
    xs, ys = zip(*known)
    left.scatter(xs, ys, s=8, color="#3b6ea5")
    left.set_xlabel("seconds since the first request")
    left.set_ylabel("mean token log-probability")
    left.grid(alpha=0.3)
    right.hist(ys, bins=20, color="#3b6ea5")
    right.set_xlabel("mean token log-probability")
    right.set_ylabel("requests")
    return _png(figure)


def drift_plot(answered: list[dict[str, Any]], reference: dict[str, Any] | None) -> bytes | None:
    observed = [r for r in answered if r.get("drift")]
    if not observed:
        return None
    figure = _figure(7.5, 3.4)
    left, right = figure.subplots(1, 2)
    index = np.arange(len(observed))
    brightness = [r["drift"]["statistics"]["brightness"] for r in observed]
    left.plot(index, brightness, ".", color="#3b6ea5", label="served image")
    if reference is not None:
        ref = np.asarray(reference["statistics"])[:, STATISTICS.index("brightness")]
        left.axhspan(np.percentile(ref, 2.5), np.percentile(ref, 97.5), color="#4caf7d", alpha=0.2,
                     label="training images, 95% range")
    flagged = [i for i, r in enumerate(observed) if r["drift"]["drifted"]]
    if flagged:
        left.plot(flagged, [brightness[i] for i in flagged], "x", color="#e05252", label="drift flagged")
    left.set_xlabel("request")
    left.set_ylabel("brightness")
    left.legend(fontsize=8)
    ratios = [r["drift"]["distance_ratio"] for r in observed]
    right.plot(index, ratios, ".", color="#e07b39")
    right.axhline(1.0, color="#e05252", lw=1, label="95% of training images lie within")
    right.set_xlabel("request")
    right.set_ylabel("distance to nearest training image (ratio)")
    right.legend(fontsize=8)
    return _png(figure)


def _percentile(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.1f}" if values else "—"


def render_report(log_dir: Path) -> str:
    records = read_request_log(log_dir)
    if not records:
        raise DsvlAdaptError(f"{log_dir} holds no request log ({REQUEST_LOG}); give the --log-dir of a "
                             "`dsvl-adapt serve` (default RUN_DIR/serve) after it answered requests")
    answered = [r for r in records if r.get("status") == 200]
    refused = [r for r in records if r.get("status") != 200]
    server = json.loads((log_dir / "server.json").read_text()) if (log_dir / "server.json").is_file() else {}
    reference_file = log_dir / "drift-reference.json"
    reference = json.loads(reference_file.read_text()) if reference_file.is_file() else None
    totals = [r["latency_ms"]["total"] for r in answered]
    misses = [r for r in answered if not r["cache_hit"]]
    known = [r["confidence"]["mean_logprob"] for r in misses if r["confidence"]["known"]]
    last_drift = next((r["drift"] for r in reversed(answered) if r.get("drift")), None)
    drift_text = ("unknown (no training reference)" if last_drift is None else
                  {True: "drift", False: "none", None: "unknown"}[last_drift["drifted"]] + f" — {last_drift['reason']}")
    tiles = [("requests answered", str(len(answered)), f"{len(refused)} refused"),
             ("latency p50 / p90 / p99", f"{_percentile(totals, 50)} / {_percentile(totals, 90)} / "
                                        f"{_percentile(totals, 99)} ms", "end to end, in the server"),
             ("cache hits", f"{len(answered) - len(misses)}", f"of {len(answered)}"),
             ("confidence", f"{np.mean(known):.3f}" if known else "unknown",
              "mean token log-probability" if known else "the runtime gave no logits"),
             ("input drift", drift_text.split(" — ")[0], drift_text.split(" — ")[1] if " — " in drift_text else ""),
             ("hard cases", str(sum(r["hard_case"] for r in answered)), f"in {HARD_CASES}/")]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Monitor — {_e(server.get('name', log_dir.name))}</title><style>{CSS}</style></head><body><main>",
           f"<h1>Monitor — {_e(server.get('name', log_dir.name))}</h1>",
           f"<p class=\"sub\">{_e(server.get('runtime', ''))} · {_e(server.get('directory', ''))} · drift reference: "
           f"{_e(server.get('drift_reference') or 'none')}</p>",
           '<div class="tiles">' + "".join(f'<div class="tile"><div class="k">{_e(k)}</div><div class="v">{_e(v)}'
                                           f'</div><div class="d">{_e(d)}</div></div>' for k, v, d in tiles)
           + "</div>"]
    out.append("<h2>Latency</h2>")
    plot = latency_plot(answered)
    if plot:
        out.append(_img(plot, "latency over time", "End-to-end latency percentiles per window of requests, and the "
                                                     "median queue, prefill and decode time."))
    phases = ("queue", "prefill", "decode", "total")
    out.append(_table(["phase", "p50 ms", "p90 ms", "p99 ms"],
                      [[f"<td>{p}</td>", *(f'<td class="num">{_percentile([r["latency_ms"][p] for r in misses], q)}'
                                            f"</td>" for q in (50, 90, 99))] for p in phases]))
    out.append("<h2>Confidence</h2>")
    plot = confidence_plot(answered)
    out.append(_img(plot, "confidence", "Mean token log-probability of each answer (cache misses).") if plot else
               '<p class="na">unknown: no answer carried log-probabilities</p>')
    flags = {f: sum(r["flags"][f] for r in misses) for f in ("empty", "over_long", "repetitive")}
    out.append(_table(["flag", "answers"], [[f"<td>{_e(k)}</td>", f'<td class="num">{v}</td>']
                                            for k, v in flags.items()]))
    out.append("<h2>Input drift</h2>")
    plot = drift_plot(answered, reference)
    out.append(_img(plot, "drift", "Brightness of each served image against the training images' range, and its "
                                   "distance to the nearest training image.") if plot else
               '<p class="na">unknown: the server had no training reference</p>')
    out.append(f"<p>{_e(drift_text)}</p>")
    out.append(_hard_cases(log_dir))
    if refused:
        counts: dict[str, int] = {}
        for r in refused:
            counts[f"{r['status']} {r.get('error')}"] = counts.get(f"{r['status']} {r.get('error')}", 0) + 1
        out.append("<h2>Refused requests</h2>" + _table(["status", "requests"], [
            [f"<td>{_e(k)}</td>", f'<td class="num">{v}</td>'] for k, v in sorted(counts.items())]))
    out.append("</main></body></html>")
    return "\n".join(out)


def _hard_cases(log_dir: Path, limit: int = 50) -> str:
    listing = log_dir / HARD_CASES / "train.jsonl"
    if not listing.is_file():
        return "<h2>Hard cases</h2><p class=\"na\">none</p>"
    rows = [json.loads(line) for line in listing.read_text().splitlines() if line.strip()]
    cells = []
    for row in rows[-limit:]:
        image = log_dir / HARD_CASES / row["image"]
        data = base64.b64encode(image.read_bytes()).decode() if image.is_file() else ""
        thumb = f'<img alt="" width="64" src="data:image/png;base64,{data}">' if data else "—"
        lp = row["meta"].get("mean_logprob")
        cells.append([f"<td>{thumb}</td>", f"<td>{_e(row['question'])}</td>", f"<td>{_e(row['answer'])}</td>",
                      f"<td>{_e(', '.join(row['meta']['reasons']))}</td>",
                      f'<td class="num">{"unknown" if lp is None else f"{lp:.3f}"}</td>'])
    return (f"<h2>Hard cases</h2><p>{len(rows)} written to <code>{_e(listing.parent)}</code> (a data.source folder: "
            f"train.jsonl + images/); the last {min(limit, len(rows))}:</p>"
            + _table(["image", "question", "answer", "why", "confidence"], cells))


def write_report(log_dir: Path, out: Path | None = None) -> Path:
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise DsvlAdaptError(f"{log_dir} is not a folder: give the --log-dir of `dsvl-adapt serve` "
                             "(default RUN_DIR/serve)")
    path = out or log_dir / REPORT_FILE
    path.write_text(render_report(log_dir), encoding="utf-8")
    return path


__all__ = ["render_report", "write_report"]
