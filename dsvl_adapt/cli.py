"""The ``dsvl-adapt`` command line: a thin layer over the API and Hydra."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import DsvlAdaptError

EPILOG = """\
examples:
  dsvl-adapt run vertical=industrial                         # reference model, about 7 min on 2 AMD EPYC cores
  dsvl-adapt run vertical=medical model=local model.path=/models/deepseek-vl-1.3b-chat
  dsvl-adapt run model=reference-tiny finetune=fast run_dir=runs/smoke   # same run_dir resumes
  dsvl-adapt run -m finetune.lora.r=8,16                     # Hydra multirun sweep
  dsvl-adapt validate finetune.lora.r=8                      # check a config in seconds
  dsvl-adapt update runs/x data.source=new_rows/             # a new version (runs/x-v2), runs/x kept
  dsvl-adapt clean vertical=ecommerce data.source=/data/shop # report + review page; the data is not changed
  dsvl-adapt plugins --json
  dsvl-adapt serve runs/smoke --port 8000                    # OpenAI-compatible server over the deployed model
  dsvl-adapt monitor runs/smoke/serve                        # HTML report of what the server saw
"""

OVERRIDES_HELP = ("Hydra overrides, key=value (e.g. vertical=industrial model=reference-tiny "
                  "finetune.lora.r=8 run_dir=runs/x); groups: vertical, model, data, pipeline, finetune, score")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except DsvlAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
            raise
        print(f"error: cannot write {exc.filename or 'the run folder'}: {exc.strerror}; "
              "choose a run_dir (and cache_dir) you can write to, with room to spare", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsvl-adapt",
        description="Adapt DeepSeek-VL models to an industry vertical (3-2-1: compress, inject knowledge, score).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline and write a scorecard",
                         description="Run (or resume) the pipeline. Re-running with the same run_dir skips "
                                     "complete stages and resumes training from its last checkpoint.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun: sweep over comma lists")
    run.add_argument("--fail-on-objectives", action="store_true",
                     help="exit with status 3 when the scorecard's objectives are not met (or one could not "
                          "be checked)")
    run.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    run.set_defaults(handler=_cmd_run)

    validate = sub.add_parser("validate", help="compose and validate a configuration, nothing else")
    validate.add_argument("--show", action="store_true", help="print the composed configuration")
    validate.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
    validate.set_defaults(handler=_cmd_validate)

    clean = sub.add_parser("clean", help="check the data (integrity, duplicates, leakage, label errors) and write "
                                         "a report, a cleaned view and a review page",
                           description="Run the data checks on the rows a run would use (generated, or "
                                       "data.source=DIR): integrity, duplicates, leakage, the vertical's own checks "
                                       "(level 1), likely label errors and image-question mismatches (level 2). "
                                       "Writes clean_report.json, cleaned_view.json and review.html (level 3: mark "
                                       "keep / fix / drop, export decisions.jsonl, apply it with "
                                       "clean.decisions=FILE). The data files are never changed. "
                                       "See docs/cleaning.md.")
    clean.add_argument("--out", metavar="DIR", default=None,
                       help="where the outputs go (default: clean/<vertical>-<time>, a new folder)")
    clean.add_argument("overrides", nargs="*", help=OVERRIDES_HELP + "; clean.* settings (docs/cleaning.md)")
    clean.set_defaults(handler=_cmd_clean)

    plugins = sub.add_parser("plugins", help="list installed plugins, their versions and hooks")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(handler=_cmd_plugins)

    targets = sub.add_parser("targets", help="list hardware targets of installed verticals, each with its runtime "
                                             "backend and whether it is available here")
    targets.add_argument("--json", action="store_true", help="machine-readable output")
    targets.add_argument("--runtimes", action="store_true",
                         help="with --json: an object with the targets and the registered runtime backends")
    targets.set_defaults(handler=_cmd_targets)

    report = sub.add_parser("report", help="compare runs (a sweep folder): table, Pareto front, best feasible run",
                            description="Read every scorecard under the given folders (e.g. a Hydra multirun "
                                        "folder) and write report.html with the Pareto fronts of the primary "
                                        "metric against p90 latency and against size; runs meeting the "
                                        "vertical's objectives are marked. Exit status 3 when none is feasible.")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="run or sweep folders")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument("--out", metavar="DIR", help="where report.html goes (default: the folder given)")
    report.set_defaults(handler=_cmd_report)

    update = sub.add_parser("update", help="update a finished run with new rows: a new version, its parent kept",
                            description="Start from RUN_DIR's teacher and student, learn the rows of "
                                        "data.source=NEW_DIR with update.strategy (naive | replay | replay+lwf | "
                                        "replay+ewc), re-distill and re-quantize the student (its pruned structure "
                                        "kept unless update.reprune=true) and score it against its parent on the old "
                                        "test split, the new test rows and the general set. Writes a new run folder "
                                        "(default: RUN_DIR-v2 beside it; run_dir=PATH to choose); RUN_DIR is never "
                                        "written to. See docs/continual.md.")
    update.add_argument("run_dir", metavar="RUN_DIR", help="a finished run (or an earlier update)")
    update.add_argument("--fail-on-objectives", action="store_true",
                        help="exit with status 3 when the objectives (forgetting_update included) are not met")
    update.add_argument("overrides", nargs="*", help="data.source=NEW_DIR (required), update.strategy=replay, "
                                                     "update.replay.size=256, run_dir=PATH, finetune.lora.train.steps=N …")
    update.set_defaults(handler=_cmd_update)

    rescore = sub.add_parser("rescore", help="score a version's deployed artifact on other test data (rollback)",
                             description="Score RUN_DIR's deployed artifact (quantized student, through its runtime) "
                                         "on the test split of data.source=DIR (e.g. the latest increment), with "
                                         "its interval and the general set; writes rescore.json under "
                                         "RUN_DIR/rescores/ (or --out). Nothing else of the run is changed.")
    rescore.add_argument("run_dir", metavar="RUN_DIR", help="a finished run or update")
    rescore.add_argument("--out", metavar="DIR", help="where rescore.json goes")
    rescore.add_argument("--json", action="store_true", help="print the result as JSON")
    rescore.add_argument("overrides", nargs="*", help="data.source=DIR, data.test_size=N, score.*")
    rescore.set_defaults(handler=_cmd_rescore)

    new_plugin = sub.add_parser("new-plugin", help="scaffold a new vertical plugin package",
                                description="Write a complete plugin package (hooks, dataset, prompt, metric, "
                                            "hardware target, Hydra config, tests with a tiny sample data folder, "
                                            "README) into DIR/dsvl-adapt-NAME. --data generator (default): an "
                                            "example data generator, plus your folder via data.source; --data "
                                            "files: no generator, the vertical reads your labelled folder from "
                                            "data.source. Then: pip install it, and `dsvl-adapt run vertical=NAME`. "
                                            "See docs/plugins/tutorial.md and docs/plugins/file-only.md.")
    new_plugin.add_argument("name", help="the vertical's name: lowercase words joined by hyphens, e.g. legal-docs")
    new_plugin.add_argument("--dir", default=".", metavar="DIR",
                            help="the parent folder: the plugin is written to DIR/dsvl-adapt-NAME "
                                 "(default: the current folder)")
    new_plugin.add_argument("--data", default="generator", choices=["generator", "files"],
                            help="generator: example data made in code (replace it with yours); files: your own "
                                 "labelled folder only, read from data.source (default: generator)")
    new_plugin.set_defaults(handler=_cmd_new_plugin)

    check = sub.add_parser("check-plugin", help="validate everything a plugin supplies (the conformance kit)",
                           description="Check what each plugin registers the way a run will use it: rows of every "
                                       "split, prompt fields, metric range and direction (a constant metric is "
                                       "refused), hardware targets, stages, `vertical=NAME` composing. Each "
                                       "problem names its hook and field; exit status 1 on problems. "
                                       "See docs/plugins/testing.md.")
    check.add_argument("names", nargs="+", metavar="NAME", help="entry-point or module names")
    check.add_argument("--data", metavar="DIR", default=None,
                       help="a sample data folder in the data.source layout (train.jsonl, validation.jsonl, "
                            "test.jsonl and their images): also load every split from it, as data.source=DIR will")
    check.set_defaults(handler=_cmd_check_plugin)

    schema = sub.add_parser("schema", help="print the JSON Schema of the scorecard or the run config")
    schema.add_argument("which", choices=["scorecard", "config"])
    schema.set_defaults(handler=_cmd_schema)

    from .serve.cli import add_commands  # serve | monitor (their heavy imports happen when they run)

    add_commands(sub)
    return parser


# -- commands ------------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    from .config import compose, search_path_override
    from .manifest import check_run_dir
    from .plugins import get_registry

    overrides = list(args.overrides)
    if not args.multirun:
        config, raw = compose(overrides)  # fail fast, with field names, before Hydra or torch start
        if config.run_dir is not None:
            # before Hydra writes .hydra/ into it: a refused run leaves the folder (and its record) as it was
            check_run_dir(config.run_dir, raw)
        overrides += [f"hydra.run.dir={o.split('=', 1)[1]}" for o in overrides if o.startswith("run_dir=")]
    outcome: dict[str, Any] = {}
    _hydra_main(overrides + search_path_override(get_registry().config_search_path), args.multirun, outcome)
    if "error" in outcome and not args.multirun:
        print(f"error: {outcome['error']}", file=sys.stderr)
        return 2
    card = outcome.get("scorecard")
    if card is not None:
        _print_summary(card, outcome["run_dir"])
        if args.fail_on_objectives and card.objectives and card.verdict is not True:
            print("objectives not met or not checked (see scorecard.md)", file=sys.stderr)
            return 3
    return 0


def _hydra_main(overrides: list[str], multirun: bool, outcome: dict[str, Any]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from .api import execute
    from .config import conf_dir, validate

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)
    def job(cfg: DictConfig) -> Any:
        """One run, or one trial of a multirun: returns the trial's objective values (for sweepers such as
        Optuna; see dsvl_adapt.sweep), worst values when it fails (its failure.json says why)."""
        raw = OmegaConf.to_container(cfg, resolve=True)
        settings = raw.pop("sweep", None) or {}  # sweep presets' own settings, not part of the run config
        hydra_cfg = HydraConfig.get()
        run_dir = Path(cfg.run_dir or hydra_cfg.runtime.output_dir)
        directions = None
        if multirun:
            from .sweep import objective_names, sweeper_directions

            directions = sweeper_directions(hydra_cfg, len(objective_names(settings)))  # bad settings stop the sweep
        try:
            config = validate(raw)  # type: ignore[arg-type]
            context = execute(config, raw, run_dir)  # type: ignore[arg-type]
        except Exception as exc:
            if not (multirun or isinstance(exc, DsvlAdaptError)):
                raise
            run_dir.mkdir(parents=True, exist_ok=True)
            failure = {"error": str(exc), "type": type(exc).__name__}
            if not isinstance(exc, DsvlAdaptError):
                import traceback

                failure["traceback"] = traceback.format_exc()
            (run_dir / "failure.json").write_text(json.dumps(failure))
            outcome["error"] = str(exc)
            if not multirun:
                return None
            print(f"trial failed: {exc}", file=sys.stderr)
        else:
            from .score.scorecard import load_scorecard

            if (context.run_dir / "scorecard.json").is_file():
                outcome["scorecard"] = load_scorecard(context.run_dir)
            outcome["run_dir"] = context.run_dir
            if not multirun:
                return None
        from .sweep import trial_objectives

        return trial_objectives(run_dir, settings, directions, overrides=list(hydra_cfg.overrides.task),
                                job_num=hydra_cfg.job.get("num"))

    saved = sys.argv
    sys.argv = ["dsvl-adapt", *(["--multirun"] if multirun else []), *overrides]
    try:
        job()
    finally:
        sys.argv = saved


def _print_summary(card: Any, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{card.vertical}: {card.metric} (retention {card.retention})")
    table.add_column("model")
    table.add_column(card.metric, justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("size MiB", justify="right")
    for name, value in card.accuracy.items():
        latency = card.latency.get(name)
        size = card.size.get(name)
        ci = card.accuracy_ci.get(name)
        table.add_row(name, f"{value:.3f}", f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "—",
                      f"{latency.p50_ms:.1f}" if latency else "—", f"{size.bytes / 2**20:.1f}" if size else "—")
    console = Console(stderr=True)
    console.print(table)
    from .score.scorecard import verdict_text

    if card.floor is not None:
        console.print(f"floor: a constant answer scores {card.floor.constant_answer:.3f}; the teacher and the student "
                      f"must each reach {card.floor.bar:.3f}", highlight=False)
    if card.objectives:
        colour = "green" if card.verdict else "red" if card.verdict is False else "yellow"
        console.print(f"[{colour}]{verdict_text(card)}[/]", highlight=False)
    if card.teacher_diagnosis is not None:
        diagnosis = card.teacher_diagnosis
        console.print(f"[red]{diagnosis.summary}[/]", highlight=False)
        console.print("likely causes: " + "; ".join(diagnosis.causes), highlight=False)
        for remedy in diagnosis.remedies:
            console.print(f"  try: {remedy}", highlight=False)
    console.print(f"scorecard: {run_dir / 'scorecard.md'}")


def _cmd_update(args: argparse.Namespace) -> int:
    from .continual.update import update
    from .progress import quiet_libraries

    quiet_libraries()
    card = update(args.run_dir, args.overrides)
    lineage = card.lineage
    run_dir = Path(card.provenance.get("run_dir", "."))
    _print_summary(card, run_dir)
    if lineage is not None:
        for name, score in lineage.scores.items():
            print(f"{name}: parent {score.parent:.3f} -> update {score.update:.3f} ({score.change:+.3f} "
                  f"[{score.change_ci[0]:+.3f}, {score.change_ci[1]:+.3f}], {score.rows} rows)", file=sys.stderr)
    if args.fail_on_objectives and card.objectives and card.verdict is not True:
        print("objectives not met or not checked (see scorecard.md)", file=sys.stderr)
        return 3
    return 0


def _cmd_rescore(args: argparse.Namespace) -> int:
    from .continual.update import rescore
    from .progress import quiet_libraries

    quiet_libraries()
    result = rescore(args.run_dir, args.overrides, out=args.out)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        low, high = result["accuracy_ci"]
        general = f", general {result['general']:.3f}" if result["general"] is not None else ""
        print(f"v{result['version']} {result['run_dir']} ({result['runtime']}): {result['metric']} "
              f"{result['accuracy']:.3f} [{low:.3f}, {high:.3f}] on {result['test_rows']} test rows of "
              f"{result['data_source']}{general}\nwritten: {result['written']}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .api import validate

    config = validate(args.overrides)
    if args.show:
        print(config.model_dump_json(indent=2))
    else:
        print(f"configuration is valid: vertical={config.vertical.name}, model="
              f"{config.model.preset or config.model.path}, stages={' -> '.join(config.pipeline.stages)}")
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    from .cleaning.stage import clean_dataset

    clean_dataset(list(args.overrides), Path(args.out) if args.out else None,
                  log=lambda message: print(message, file=sys.stderr))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_manager

    infos = get_manager().plugins()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    for info in infos:
        version = f" {info.version}" if info.version else ""
        print(f"{info.name}{version} ({info.source})")
        for hook in info.hooks:
            print(f"    {hook}")
        for error in info.errors:
            print(f"    ERROR: {error}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from .plugins import get_registry

    registry = get_registry()
    backends = {}
    for backend in registry.runtimes:
        reason = backend.available()
        backends[backend.name] = {"name": backend.name, "plugin": registry.runtimes.owner(backend.name),
                                  "description": backend.description, "available": reason is None, "reason": reason}
    rows = []
    for t in registry.targets:
        backend = backends.get(t.runtime)
        reason = backend["reason"] if backend else (f"no installed backend provides {t.runtime!r} (its figures are "
                                                    "estimated; docs/plugins/runtimes.md)")
        rows.append(t.model_dump() | {"plugin": registry.targets.owner(t.name),
                                      "backend": t.runtime if backend else None,
                                      "backend_available": reason is None, "backend_reason": reason})
    if args.json:
        print(json.dumps({"targets": rows, "runtimes": list(backends.values())} if args.runtimes else rows,
                         indent=2, default=str))
        return 0
    for row in rows:
        objective = f", p90 <= {row['latency_p90_ms']} ms" if row["latency_p90_ms"] else ""
        state = "available" if row["backend_available"] else f"not available: {row['backend_reason']}"
        print(f"{row['name']}: {row['device']} / {row['runtime']} ({state}), {row['memory_gb']} GB, "
              f"{'/'.join(row['dtypes'])}{objective}  [{row['plugin']}]")
    print("runtime backends:")
    for backend in backends.values():
        state = "available" if backend["available"] else f"not available: {backend['reason']}"
        print(f"  {backend['name']}: {backend['description']} ({state})  [{backend['plugin']}]")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .score.report import report_main

    return report_main(args.dirs, args.json, args.out)


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import SAMPLE_FOLDER, create_plugin, names_for

    path = create_plugin(args.name, Path(args.dir), data=args.data)
    vertical = names_for(args.name)["name"]
    source = f" data.source={path / SAMPLE_FOLDER}" if args.data == "files" else ""
    print(f"created {path}\nnext:\n  pip install -e {path}\n  dsvl-adapt plugins\n"
          f"  dsvl-adapt check-plugin {vertical} --data {path / SAMPLE_FOLDER}\n"
          f"  dsvl-adapt run vertical={vertical}{source} model=reference-tiny finetune=fast distill=fast\n"
          f"  python -m pytest {path}/tests")
    return 0


def _cmd_check_plugin(args: argparse.Namespace) -> int:
    from .testing import check_plugin

    status = 0
    for name in args.names:
        report = check_plugin(name, data_source=args.data)
        print(f"{name}: {'ok' if report.ok else f'{len(report.problems)} problem(s)'}")
        for problem in report.problems:
            print(f"  - {problem}")
        status = status or (0 if report.ok else 1)
    return status


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.which == "scorecard":
        from .score.scorecard import Scorecard as model
    else:
        from .config import RunConfig as model
    print(json.dumps(model.model_json_schema(), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
