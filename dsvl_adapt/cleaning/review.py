"""Level 3: a self-contained HTML review queue (no server, no network): the suspicious rows, most suspicious
first, each with its picture, question, given answer, suggested answer and signals; a person marks keep, fix
(with the new answer) or drop, and exports the decisions as JSONL for ``clean.decisions=FILE``."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.loading import Split

if TYPE_CHECKING:  # pragma: no cover
    from .runner import CleaningReport

THUMBNAIL = 192


def review_items(report: "CleaningReport", splits: dict[str, Split], limit: int) -> list[dict]:
    """The rows to review, most suspicious first (highest score of their findings, then most findings)."""
    by_row: dict[tuple[str, str], list] = {}
    for finding in report.findings:
        by_row.setdefault((finding.split, finding.row_id), []).append(finding)
    rows = {(name, row.id): row for name, split in splits.items() for row in split.rows}
    order = sorted(by_row, key=lambda key: (-max(f.score for f in by_row[key]), -len(by_row[key]), key))
    items = []
    for key in order[:limit]:
        findings = by_row[key]
        row = rows.get(key)
        suggestion = next((f.suggestion for f in sorted(findings, key=lambda f: -f.score) if f.suggestion), None)
        items.append({
            "split": key[0], "id": key[1],
            "image": _data_uri(row.image) if row is not None else None,
            "question": row.question if row is not None else "",
            "answer": row.answer if row is not None else "",
            "suggestion": suggestion,
            "proposed": report.actions.get(key[0], {}).get(key[1], "flag"),
            "score": round(max(f.score for f in findings), 3),
            "signals": [{"reason": f.reason, "level": f.level, "score": round(f.score, 3), "detail": f.detail}
                        for f in sorted(findings, key=lambda f: -f.score)],
        })
    return items


def _data_uri(image) -> str:
    copy = image.copy()
    copy.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_review_page(report: "CleaningReport", splits: dict[str, Split], path: Path, *, limit: int = 300) -> Path:
    items = review_items(report, splits, limit)
    payload = json.dumps(items).replace("</", "<\\/")
    figures = report.figures()
    title = f"Review queue: {report.vertical} ({len(items)} of {figures['rows_flagged']} flagged rows)"
    path.write_text(PAGE.replace("__TITLE__", html.escape(title)).replace("__ITEMS__", payload), encoding="utf-8")
    return path


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.row{display:flex;gap:1em;border:1px solid #ccc;border-radius:6px;padding:.8em;margin:.6em 0}
.row img{width:192px;height:auto;image-rendering:pixelated;border:1px solid #eee}
.row.decided{background:#f3f8f3}
.meta{flex:1}.signals{font-size:.9em;color:#555}.signals li{margin:.2em 0}
.given{font-weight:600}.suggested{color:#05a}
.controls label{margin-right:1em}
#bar{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}
</style></head><body>
<h1>__TITLE__</h1>
<div id="bar"><button id="export">Export decisions (JSONL)</button>
<span id="count">0 decisions</span> &middot; rows in order of suspicion; unmarked rows are left as the clean stage
proposes. Apply the file with <code>clean.decisions=FILE</code>.</div>
<div id="queue"></div>
<script id="items" type="application/json">__ITEMS__</script>
<script>
const items = JSON.parse(document.getElementById("items").textContent);
const decisions = {};
const queue = document.getElementById("queue");
function esc(s){const d=document.createElement("div");d.textContent=s==null?"":String(s);return d.innerHTML;}
items.forEach((item, index) => {
  const key = item.split + "\\u0000" + item.id;
  const row = document.createElement("div");
  row.className = "row"; row.dataset.split = item.split; row.dataset.id = item.id;
  const signals = item.signals.map(s => `<li><b>${esc(s.reason)}</b> (level ${s.level}, ${s.score}): ${esc(s.detail)}</li>`).join("");
  row.innerHTML = `${item.image ? `<img alt="row ${esc(item.id)}" src="${item.image}">` : "<div>(no image: unreadable)</div>"}
    <div class="meta"><div>#${index + 1} &middot; ${esc(item.split)} &middot; id <code>${esc(item.id)}</code> &middot;
    suspicion ${item.score} &middot; proposed: ${esc(item.proposed)}</div>
    <div>Q: ${esc(item.question)}</div><div class="given">given: ${esc(item.answer)}</div>
    <div class="suggested">suggested: ${esc(item.suggestion || "—")}</div>
    <ul class="signals">${signals}</ul>
    <div class="controls">
      <label><input type="radio" name="d${index}" value="keep"> keep</label>
      <label><input type="radio" name="d${index}" value="fix"> fix →</label>
      <input type="text" class="answer" value="${esc(item.suggestion || item.answer)}" size="24">
      <label><input type="radio" name="d${index}" value="drop"> drop</label>
    </div></div>`;
  const update = () => {
    const chosen = row.querySelector("input[type=radio]:checked");
    if (!chosen) return;
    const record = {split: item.split, id: item.id, decision: chosen.value};
    if (chosen.value === "fix") record.answer = row.querySelector("input.answer").value.trim();
    decisions[key] = record;
    row.classList.add("decided");
    document.getElementById("count").textContent = Object.keys(decisions).length + " decisions";
  };
  row.querySelectorAll("input").forEach(input => input.addEventListener("change", update));
  row.querySelector("input.answer").addEventListener("input", update);
  queue.appendChild(row);
});
document.getElementById("export").addEventListener("click", () => {
  const bad = Object.values(decisions).filter(d => d.decision === "fix" && !d.answer);
  if (bad.length) { alert("a 'fix' needs the new answer (row " + bad[0].id + ")"); return; }
  const text = Object.values(decisions).map(d => JSON.stringify(d)).join("\\n") + (Object.keys(decisions).length ? "\\n" : "");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "application/jsonl"}));
  link.download = "decisions.jsonl";
  document.body.appendChild(link); link.click(); link.remove();
});
</script></body></html>
"""
