"""``dsvl-adapt update`` and ``dsvl-adapt rescore``: a finished run updated with new rows, and a version re-scored.

An update composes its configuration from the parent's recorded one (``manifest.json``), the user's overrides
(``data.source=NEW_DIR`` at least) and an ``update`` section naming the parent and its manifest hash; every
check it can make (the parent finished, the new folder readable, each new answer producible by the model) is
made before its first stage. It writes a new run folder and never writes into the parent's.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import RunConfig, validate
from ..errors import ConfigError, DataError
from .lineage import ParentRun, check_child_dir, next_version_dir, read_parent

#: stages of the parent replaced or dropped in the update's pipeline
REPLACED = {"load": None, "finetune": None, "distill": "update.distill", "update.parent": None,
            "update.finetune": None, "update.distill": "update.distill", "update.score": None}
PRUNE_STAGES = ("prune.structural", "prune.weights")


def update_stages(parent_stages: Sequence[str], *, reprune: bool) -> list[str]:
    """The update's pipeline: the parent's, with load and finetune replaced by ``update.parent`` and
    ``update.finetune``, the prune stages dropped (the parent's pruned student is kept) unless ``reprune``, distill
    by ``update.distill``, and ``update.score`` after ``score``."""
    stages = ["update.parent", "update.finetune"]
    for name in parent_stages:
        if name in REPLACED:
            replacement = REPLACED[name]
            if replacement == "update.distill" and reprune:  # the parent may itself be an update, without them
                stages += [stage for stage in PRUNE_STAGES if stage not in stages]
            if replacement and replacement not in stages:
                stages.append(replacement)
        elif not name.startswith("prune.") or (reprune and name not in stages):
            stages.append(name)
    if "score" not in stages:
        stages.append("score")
    return [*stages, "update.score"]


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides as a nested dict (values parsed as YAML, as on Hydra's command line)."""
    from omegaconf import OmegaConf

    bad = [item for item in overrides if "=" not in item or item.startswith(("+", "~"))]
    if bad:
        raise ConfigError(f"overrides must be key=value (e.g. data.source=NEW_DIR update.strategy=replay); got "
                          f"{', '.join(map(repr, bad))}")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=True)
    except Exception as exc:  # omegaconf's grammar errors
        raise ConfigError(f"could not read the overrides {list(overrides)}: {exc}") from None
    assert isinstance(parsed, dict)
    return parsed


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def compose_update(parent: ParentRun, overrides: Sequence[str]) -> tuple[RunConfig, dict[str, Any]]:
    """The update's validated config and its raw dict (as the manifest records it)."""
    extra = parse_overrides(overrides)
    source = (extra.get("data") or {}).get("source")
    if not source:
        raise ConfigError("data.source: give the folder of new rows (data.source=NEW_DIR, with train.jsonl, "
                          "validation.jsonl and test.jsonl); an update learns from new data")
    extra["data"]["source"] = str(Path(source).absolute())
    if extra.get("run_dir"):
        extra["run_dir"] = str(Path(extra["run_dir"]).absolute())
    user_update = extra.pop("update", {}) or {}
    for key in ("parent", "parent_manifest_sha256", "version"):
        if key in user_update:
            raise ConfigError(f"update.{key} is set by `dsvl-adapt update` from RUN_DIR; leave it out")
    raw = _merge(parent.config, extra)
    raw["update"] = _merge({"parent": str(parent.run_dir), "parent_manifest_sha256": parent.manifest_sha256,
                            "version": parent.version + 1}, user_update)
    raw["run_dir"] = raw.get("run_dir") if extra.get("run_dir") else str(next_version_dir(parent))
    reprune = bool(raw["update"].get("reprune", False))
    if "pipeline" in extra:
        raise ConfigError("pipeline.stages: an update's stages follow from its parent's; set update.reprune=true to "
                          "prune the new teacher again")
    raw["pipeline"] = {**raw["pipeline"], "stages": update_stages(parent.stages, reprune=reprune)}
    config = validate(raw)
    return config, raw


def check_answers(config: RunConfig, parent: ParentRun, registry: Any) -> None:
    """Every new answer must be one the model can produce: at most the vertical's ``max_answer_tokens`` tokens of the
    parent's tokenizer, on one line. Raises :class:`DataError` naming the rows (before any stage)."""
    from transformers import AutoTokenizer

    from ..data.loading import load_configured_split

    vertical = registry.vertical(config.vertical.name)
    tokenizer = AutoTokenizer.from_pretrained(str(parent.artifacts["teacher"]))
    problems = []
    for split in ("train", "validation", "test"):
        loaded = load_configured_split(config, registry, split, 32)
        for row, source in zip(loaded.rows, loaded.sources):
            tokens = len(tokenizer(" " + row.answer, add_special_tokens=False)["input_ids"])
            if "\n" in row.answer or tokens > vertical.max_answer_tokens:
                why = "spans several lines" if "\n" in row.answer else (
                    f"is {tokens} tokens long, above the {vertical.max_answer_tokens} the {vertical.name} vertical "
                    "generates")
                problems.append(f"{source}: answer {row.answer[:60]!r} {why}")
    if problems:
        listed = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise DataError(f"data.source={config.data.source}: {len(problems)} answer(s) outside the {vertical.name} "
                        f"vertical's format, which the model could never produce: {listed}. Shorten them to the "
                        f"vertical's answer format ({vertical.name}: see its prompt's answer_format)")


def prepare_update(run_dir: str | Path, overrides: Sequence[str] = ()) -> tuple[RunConfig, dict[str, Any], ParentRun]:
    """Every check an update makes before its first stage; returns its config, raw config and parent."""
    from ..engine import check_pipeline
    from ..manifest import check_run_dir
    from ..plugins import get_manager
    from ..preflight import preflight

    parent = read_parent(run_dir)
    config, raw = compose_update(parent, overrides)
    assert config.run_dir is not None
    check_child_dir(parent, config.run_dir)
    check_run_dir(config.run_dir, raw)
    manager = get_manager()
    check_pipeline(config, manager)
    preflight(config, manager.registry, log=lambda message: print(message, file=sys.stderr))
    check_answers(config, parent, manager.registry)
    return config, raw, parent


def update(run_dir: str | Path, overrides: Sequence[str] = (), new_run_dir: str | Path | None = None) -> Any:
    """Update the finished run ``run_dir`` with new rows: ``update("runs/a", ["data.source=new/"])``.

    Writes a new run folder (default: ``<run_dir>-v2`` beside it; ``new_run_dir`` or ``run_dir=`` in the
    overrides to choose) and returns its scorecard, whose ``lineage`` compares it with its parent. Running it
    again with the same arguments resumes the update.
    """
    from ..api import execute
    from ..score.scorecard import load_scorecard

    overrides = list(overrides)
    if new_run_dir is not None:
        overrides.append(f"run_dir={Path(new_run_dir)}")
    config, raw, _ = prepare_update(run_dir, overrides)
    assert config.run_dir is not None
    context = execute(config, raw, config.run_dir)
    return load_scorecard(context.run_dir / "scorecard.json")


def score_version(run_dir: str | Path, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Any]:
    """A version's deployed artifact on the test split of ``data.source`` (``data.*`` / ``score.*`` overrides):
    the summary :func:`rescore` writes, and the answers it came from (:class:`~.scoring.Answered`, for paired
    comparisons across versions)."""
    from ..engine import RunContext
    from ..plugins import get_manager
    from ..preflight import preflight
    from ..score.intervals import bootstrap_interval, metric_on_rows, resample_indices
    from .scoring import answer_general, answer_rows, open_version

    version = read_parent(run_dir)
    extra = parse_overrides(overrides)
    unknown = set(extra) - {"data", "score"}
    if unknown:
        raise ConfigError(f"rescore takes data.* and score.* overrides only; got {', '.join(sorted(unknown))}")
    if (extra.get("data") or {}).get("source"):
        extra["data"]["source"] = str(Path(extra["data"]["source"]).absolute())
    raw = _merge(version.config, extra)
    config = validate(raw)
    manager = get_manager()
    checked = preflight(config, manager.registry, log=lambda message: print(message, file=sys.stderr))
    digest = checked.data.digest if checked.data is not None else "generated"
    artifact = version.artifacts.get("deploy") or version.artifacts["student"]
    context = RunContext(config, raw, version.run_dir, manager)
    runner = open_version(context, artifact)
    rows = context.split("test", runner.processor.image_processor.size["height"]).rows
    answered = answer_rows(context, runner, rows, "rescore")
    primary = manager.registry.metrics.get(context.vertical.metrics[0])
    draws = resample_indices(len(rows), seed=config.seed)
    ci = bootstrap_interval(metric_on_rows(primary.compute, answered.answers, answered.references, rows), draws)
    general = answer_general(context, runner, "rescore general")
    result = {"run_dir": str(version.run_dir), "version": version.version, "artifact": str(artifact),
              "runtime": runner.label, "data_source": str(config.data.source), "data_fingerprint": digest,
              "test_rows": len(rows), "metric": primary.name, "accuracy": answered.value, "accuracy_ci": list(ci),
              "metrics": answered.metrics, "general": general.value if general is not None else None}
    return result, answered


def rescore(run_dir: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None) -> dict[str, Any]:
    """Score a version's deployed artifact on the test split of other data (``data.source=DIR``), e.g. the latest
    increment's, to choose the version to roll back to. Writes ``rescore.json`` to ``out`` (default:
    ``<run_dir>/rescores/<data fingerprint>/``; nothing else of the run is touched) and returns it."""
    result, _ = score_version(run_dir, overrides)
    target = Path(out) if out is not None else Path(result["run_dir"]) / "rescores" / result["data_fingerprint"]
    target.mkdir(parents=True, exist_ok=True)
    (target / "rescore.json").write_text(json.dumps(result, indent=2))
    result["written"] = str(target / "rescore.json")
    return result
