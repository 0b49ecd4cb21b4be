"""``lineage.*`` of a scorecard: an update run against its parent (old split, new rows, general set), rendered.

Set by the ``update.score`` stage of a run made by ``dsvl-adapt update`` (docs/continual.md); a run made by
``dsvl-adapt run`` has none. Accuracies are of each version's deployed artifact (the quantized student through
its runtime), on the same rows for both, so the changes are paired.
"""

from __future__ import annotations

import html
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: the evaluation sets of an update's scorecard, in display order, and what each is
SETS = {"old": "old test split (the parent's test data)", "new": "new test rows (this increment's test split)",
        "general": "general-capability set"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetScore(_Model):
    """One evaluation set, the parent and the update side by side."""

    rows: int
    parent: float
    update: float
    parent_ci: list[float] = Field(description="[low, high] 95% bootstrap over the set's rows")
    update_ci: list[float]
    change: float = Field(description="update - parent")
    change_ci: list[float] = Field(description="[low, high] paired bootstrap interval of the change")
    within_noise: bool = Field(description="the change's interval contains 0")


class Lineage(_Model):
    """Where a version comes from and what its update did to the old and the new."""

    version: int = Field(description="1 is a run made by `dsvl-adapt run`; each update adds 1")
    parent: str = Field(description="the parent run folder")
    parent_manifest_sha256: str
    strategy: str
    increment: dict[str, Any] = Field(description="the increment's data: source folder, fingerprint, rows per split")
    chain: list[dict[str, Any]] = Field(default_factory=list, description="every version from the first run to this")
    scores: dict[str, SetScore] = Field(description="old | new | general -> parent vs update")
    accuracy_old: dict[str, float] = Field(description="parent / update accuracy on the old test split")
    accuracy_new: dict[str, float] = Field(description="parent / update accuracy on the new test rows")
    accuracy_general: dict[str, float] = Field(default_factory=dict)
    forgetting: float | None = Field(description="old-split drop, parent - update (positive: forgotten)")
    forgetting_ci: list[float] | None = Field(description="[low, high] of the drop (paired bootstrap)")
    replay: dict[str, Any] = Field(default_factory=dict, description="replay rows used and the buffer kept")
    training_seconds: float | None = Field(None, description="seconds of the update's training stages")
    artifacts: dict[str, str] = Field(default_factory=dict, description="the deployed artifact scored per version")


def _ci(ci: list[float], signed: bool = False) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def lineage_rows(lineage: Lineage) -> list[list[str]]:
    """Table rows: set, rows, parent [ci], update [ci], change [ci]."""
    out = []
    for key, what in SETS.items():
        score = lineage.scores.get(key)
        if score is None:
            continue
        out.append([what, str(score.rows), f"{score.parent:.3f} {_ci(score.parent_ci)}",
                    f"{score.update:.3f} {_ci(score.update_ci)}",
                    f"{score.change:+.3f} {_ci(score.change_ci, True)}"
                    + (" (within noise)" if score.within_noise else "")])
    return out


def chain_text(lineage: Lineage) -> str:
    """``v1 runs/a -> v2 runs/a-v2 (replay) -> ...``."""
    return " → ".join(f"v{item.get('version', '?')} {item['run_dir'].rsplit('/', 1)[-1]}"
                      + (f" ({item['strategy']})" if item.get("strategy") else "")
                      + (" [missing]" if item.get("missing") else "") for item in lineage.chain)


def lineage_markdown(lineage: Lineage | None) -> list[str]:
    """The scorecard.md section (empty without lineage)."""
    if lineage is None:
        return []
    lines = ["## Update against its parent", "",
             f"Version {lineage.version}, strategy `{lineage.strategy}`, parent `{lineage.parent}` "
             f"(manifest sha256 {lineage.parent_manifest_sha256[:12]}…).", "",
             f"Lineage: {chain_text(lineage)}", "",
             "| set | rows | parent | update | change |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in lineage_rows(lineage)]
    if lineage.forgetting is not None and lineage.forgetting_ci:
        lines += ["", f"Forgetting (old-split drop, parent − update): **{lineage.forgetting:+.3f}** "
                      f"{_ci(lineage.forgetting_ci, True)}"]
    lines += ["", "Increment data: " + ", ".join(f"{k}: {v}" for k, v in lineage.increment.items())]
    if lineage.replay:
        lines += ["", "Replay: " + ", ".join(f"{k}: {v}" for k, v in lineage.replay.items())]
    return lines + [""]


def lineage_html(lineage: Lineage | None) -> str:
    """The scorecard.html section (empty without lineage)."""
    if lineage is None:
        return ""
    e = html.escape
    head = "".join(f"<th>{h}</th>" for h in ("set", "rows", "parent", "update", "change"))
    body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in lineage_rows(lineage))
    forgetting = (f"<p>Forgetting (old-split drop, parent − update): <b>{lineage.forgetting:+.3f}</b> "
                  f"{e(_ci(lineage.forgetting_ci, True))}</p>" if lineage.forgetting is not None and
                  lineage.forgetting_ci else "")
    increment = ", ".join(f"{k}: {v}" for k, v in lineage.increment.items())
    return (f'<section id="lineage"><h2>Update against its parent</h2><p>Version {lineage.version}, strategy '
            f"<code>{e(lineage.strategy)}</code>, parent <code>{e(lineage.parent)}</code>.</p>"
            f"<p>Lineage: {e(chain_text(lineage))}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
            f"</table>{forgetting}<p class=\"how\">Increment data: {e(increment)}</p></section>")


def lineage_model_card(lineage: Lineage | None) -> list[str]:
    """The model card's section: the lineage and the data of each increment."""
    if lineage is None:
        return []
    lines = ["## Lineage", "", f"This is version {lineage.version}, updated from `{lineage.parent}` with the "
                               f"`{lineage.strategy}` strategy.", "", "| version | run | strategy | data |",
             "|---|---|---|---|"]
    for item in lineage.chain:
        data = item.get("data_source") or "generated"
        if item.get("data_fingerprint"):
            data += f" ({item['data_fingerprint']})"
        lines.append(f"| {item.get('version', '?')} | `{item['run_dir']}` | {item.get('strategy') or 'first run'} | "
                     f"{data} |")
    lines += ["", "| set | rows | parent | this version | change |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in lineage_rows(lineage)]
    return lines + [""]


def lineage_edges(runs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Parent -> child edges among reported runs: ``runs`` is ``(run folder, scorecard or None)``; a child whose
    parent is not among them still gets its edge (``parent_reported: false``)."""
    from pathlib import Path

    reported = {str(Path(path).resolve()) for path, _ in runs}
    edges = []
    for path, card in runs:
        lineage = getattr(card, "lineage", None)
        if lineage is None:
            continue
        parent = str(Path(lineage.parent).resolve())
        edges.append({"parent": parent, "child": str(Path(path).resolve()), "version": lineage.version,
                      "strategy": lineage.strategy, "parent_reported": parent in reported,
                      "old": lineage.accuracy_old, "new": lineage.accuracy_new, "forgetting": lineage.forgetting,
                      "forgetting_ci": lineage.forgetting_ci,
                      "intervals": {key: {"parent": score.parent_ci, "update": score.update_ci}
                                    for key, score in lineage.scores.items() if key in ("old", "new")}})
    return sorted(edges, key=lambda edge: (edge["version"], edge["child"]))


def edge_text(edge: dict[str, Any]) -> str:
    """``runs/a -> runs/a-v2 (v2, replay): old 0.91 -> 0.90, new 0.40 -> 0.88, forgetting +0.010 [...]``."""
    def pair(values: dict[str, float]) -> str:
        return f"{values['parent']:.3f} -> {values['update']:.3f}" if values else "—"

    ci = edge.get("forgetting_ci")
    forgetting = "—" if edge.get("forgetting") is None else (
        f"{edge['forgetting']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""))
    return (f"{edge['parent']} → {edge['child']} (v{edge['version']}, {edge['strategy']}): old {pair(edge['old'])}, "
            f"new {pair(edge['new'])}, forgetting {forgetting}")
