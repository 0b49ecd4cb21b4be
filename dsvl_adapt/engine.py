"""The engine: runs the configured stages in order, each into its own folder of the run directory.

A stage writes into ``stages/<name>.partial/``; when it returns, its result is written to
``stage.json`` and the folder is renamed to ``stages/<name>/`` in one step, so a half-written
stage is never taken as complete. Running again in the same directory skips complete stages
and lets an interrupted training stage resume from its last checkpoint inside ``.partial``.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .cache import CACHE_MARKER, StageCache, StageKeys
from .config import RunConfig
from .errors import ConfigError, DsvlAdaptError, StageError
from .machine import process_peak_rss_bytes
from .manifest import write_or_check_manifest
from .plugins import PluginManager, load_target
from .preflight import preflight
from .schemas import HardwareTarget, PromptTemplate, Vertical

STAGE_RECORD = "stage.json"


@dataclass
class StageResult:
    """What a stage hands on: named artifacts (paths) and figures for the scorecard."""

    artifacts: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Stage(Protocol):
    """A pipeline step. Register it with ``dsvl_adapt_register_stages``."""

    name: str
    description: str
    # Optional attributes:
    #   distributed = True   runs on every process of a multi-process launch (training stages);
    #                        otherwise only the main process runs it.
    #   config_keys = (...)  the config sections the stage reads (dotted); with ``cache_dir`` set, a
    #                        stage whose inputs match an earlier run's is copied from the cache.
    #                        Without it, the whole config is the key.
    #   cacheable = False    never taken from the cache (e.g. timing measurements).

    def run(self, context: "RunContext") -> StageResult:
        """Do the work, writing only under ``context.work_dir``; return artifacts and figures."""
        ...


class RunContext:
    """What a stage sees: validated config, the vertical's parts, data and earlier artifacts."""

    def __init__(self, config: RunConfig, raw_config: dict[str, Any], run_dir: Path, manager: PluginManager) -> None:
        self.config = config
        self.raw_config = raw_config
        self.run_dir = run_dir
        self.manager = manager
        self.registry = manager.registry
        self.vertical: Vertical = self.registry.vertical(config.vertical.name)
        self.prompt: PromptTemplate = self.registry.prompts.get(self.vertical.prompt)
        self.artifacts: dict[str, Path] = {}
        self.figures: dict[str, dict[str, Any]] = {}
        self.work_dir: Path = run_dir
        self._splits: dict[tuple[str, int], Any] = {}

    # -- data ----------------------------------------------------------------------------
    def split(self, name: str, image_size: int, size: int | None = None) -> Any:
        """Validated rows of a split of the vertical's dataset (cached per image size), with the clean stage's
        cleaned view applied when it ran (docs/cleaning.md)."""
        from .data.loading import load_configured_split

        key = (name, image_size)
        if key not in self._splits:
            self._splits[key] = load_configured_split(self.config, self.registry, name, image_size, size)
        view = self.artifacts.get("clean_view")  # the clean stage's cleaned view, once it has run
        if view is not None:
            from .cleaning.view import cached_view

            return cached_view(view).apply(self._splits[key])
        return self._splits[key]

    def skipped_rows(self) -> dict[str, int]:
        return {name: len(split.skipped) for (name, _), split in self._splits.items() if split.skipped}

    # -- models --------------------------------------------------------------------------
    def artifact(self, name: str) -> Path:
        try:
            return self.artifacts[name]
        except KeyError:
            raise StageError(
                f"no {name!r} artifact yet: a stage that produces it must come earlier in pipeline.stages "
                f"(have: {', '.join(self.artifacts) or 'none'})"
            ) from None

    def load_model(self, name: str) -> tuple[Any, Any]:
        from .models.checkpoint import load_checkpoint

        return load_checkpoint(self.artifact(name), allow_pickle=self.config.model.allow_pickle,
                               trust_remote_code=self.config.model.trust_remote_code)

    def target(self) -> HardwareTarget | None:
        name = self.config.vertical.target or (self.vertical.targets[0] if self.vertical.targets else None)
        return self.registry.targets.get(name) if name else None

    def targets(self) -> list[HardwareTarget]:
        return [self.registry.targets.get(name) for name in self.vertical.targets]


def check_pipeline(config: RunConfig, manager: PluginManager) -> None:
    """Fail before any work if a stage, the vertical or its parts are unknown."""
    registry = manager.registry
    vertical = registry.vertical(config.vertical.name)
    unknown = [s for s in config.pipeline.stages if s not in registry.stages]
    if unknown:
        raise ConfigError(
            f"pipeline.stages: unknown stage(s) {', '.join(map(repr, unknown))}; "
            f"registered: {', '.join(registry.stages.names())}"
        )
    if len(set(config.pipeline.stages)) != len(config.pipeline.stages):
        raise ConfigError("pipeline.stages: a stage is listed twice")
    registry.datasets.get(vertical.dataset)
    registry.prompts.get(vertical.prompt)
    for metric in vertical.metrics:
        registry.metrics.get(metric)
    for target in vertical.targets:
        registry.targets.get(target)
    if config.vertical.target and config.vertical.target not in vertical.targets:
        raise ConfigError(f"vertical.target: {config.vertical.target!r} is not a target of vertical "
                          f"{vertical.name!r}; choose one of: {', '.join(vertical.targets)}")
    check_runtimes(config, registry)


def check_runtimes(config: RunConfig, registry: Any) -> list[str]:
    """The runtime backends the run names, against the registered ones: ``quantize.backend`` must be registered,
    and a target's runtime that is a near miss of a registered name (a typo) is an error; a runtime with no backend
    installed here (``tensorrt`` on a CPU box) is allowed. With a ``quantize`` stage, its mode and bits are checked
    against the backend it will use. Returns a note per target whose runtime has no backend here."""
    registered = registry.runtimes.names()
    listing = ", ".join(registered) or "none"
    if config.quantize.backend not in registry.runtimes:
        raise ConfigError(f"quantize.backend: {config.quantize.backend!r} is not a registered runtime backend; "
                          f"registered: {listing} (a plugin adds one through dsvl_adapt_register_runtimes)")
    notes = []
    vertical = registry.vertical(config.vertical.name)
    for name in vertical.targets:
        target = registry.targets.get(name)
        if target.runtime in registry.runtimes:
            continue
        near = difflib.get_close_matches(target.runtime, registered, n=1, cutoff=0.8)
        if near:
            raise ConfigError(f"hardware target {name!r} (plugin {registry.targets.owner(name)!r}): runtime "
                              f"{target.runtime!r} is not a registered backend; did you mean {near[0]!r}? "
                              f"registered: {listing}")
        notes.append(f"hardware target {name!r} runs on {target.runtime!r}, which no installed backend provides "
                     f"(registered: {listing}): its figures are estimated"
                     + (f", and quantize/export prepare for quantize.backend={config.quantize.backend!r}"
                        if name == (config.vertical.target or vertical.targets[0]) else ""))
    if "quantize" in config.pipeline.stages:
        from .quantization import backend_name, config_for_backend

        chosen = config.vertical.target or (vertical.targets[0] if vertical.targets else None)
        runtime = registry.targets.get(chosen).runtime if chosen else None
        name = backend_name(config.quantize, runtime, registry.runtimes, config.quantize.follow_target)
        config_for_backend(config.quantize, registry.runtimes.get(name))
    return notes


class Processes:
    """The processes of this run: one, or several under ``accelerate launch`` (DDP).

    Stages that declare ``distributed = True`` (the training stages) run on every process; the
    others run on the main process while the rest wait, then read its record.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._state = None
        if self.world_size > 1:
            from accelerate import PartialState

            self._state = PartialState(cpu=device == "cpu")

    @property
    def is_main(self) -> bool:
        return self._state is None or self._state.is_main_process

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()


def on_main_process(action: Any) -> None:
    """Run ``action`` (a save) on the main process only, then let every process continue together."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        action()
    state.wait_for_everyone()


def run_pipeline(config: RunConfig, raw_config: dict[str, Any], run_dir: Path, manager: PluginManager,
                 log: Any = print) -> RunContext:
    """Run (or resume) the pipeline in ``run_dir``; returns the context with every artifact."""
    check_pipeline(config, manager)
    run_dir = Path(run_dir).absolute()  # a relative run_dir names the same folder whatever a library does to cwd
    processes = Processes(config.device)
    checked = preflight(config, manager.registry, log=log if processes.is_main else _silent)
    if processes.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_or_check_manifest(run_dir, config, raw_config, manager, data=checked.data)
        (run_dir / "stages").mkdir(exist_ok=True)
    processes.barrier()
    if not processes.is_main:
        log = _silent
    context = RunContext(config, raw_config, run_dir, manager)
    stages_dir = run_dir / "stages"
    chain = StageKeys(raw_config, data=checked.data)
    cache = StageCache(config.cache_dir, log=log)
    for name in config.pipeline.stages:
        stage = manager.registry.stages.get(name)
        final = stages_dir / name
        record_path = final / STAGE_RECORD
        if record_path.is_file():
            chain.add(stage)
            record = json.loads(record_path.read_text())
            _adopt(context, final, name, record)
            log(f"[{name}] complete, skipped ({record['seconds']:.1f} s when it ran)")
            continue
        partial = stages_dir / f"{name}.partial"
        if processes.is_main:
            if final.exists():  # a folder without its record is not complete
                shutil.rmtree(final)
            partial.mkdir(exist_ok=True)
        processes.barrier()
        context.work_dir = partial
        key = chain.add(stage)
        with cache.claim(stage, key, enabled=processes.is_main) as cached:
            if cached is not None and processes.is_main:
                shutil.rmtree(partial, ignore_errors=True)
                cache.restore(cached, final)
                (final / CACHE_MARKER).write_text(str(cached))
                log(f"[{name}] taken from the cache ({cached})")
            else:
                if processes.is_main or getattr(stage, "distributed", False):
                    log(f"[{name}] {stage.description}")
                    _run_stage(stage, context, processes, manager, log)
                processes.barrier()
                if processes.is_main:
                    cache.store(stage, key, final)
        processes.barrier()
        record = json.loads(record_path.read_text())
        _adopt(context, final, name, record)
        manager.notify("dsvl_adapt_after_stage", stage=stage, context=context,
                       result=StageResult({k: str(v) for k, v in _artifact_paths(context.run_dir, final, record).items()},
                                          record["figures"]))
    return context


def _run_stage(stage: Stage, context: RunContext, processes: Processes, manager: PluginManager, log: Any) -> None:
    name = stage.name
    run_dir = context.run_dir
    manager.notify("dsvl_adapt_before_stage", stage=stage, context=context)
    seed_everything(stage_seed(context.config.seed, name))
    started = time.perf_counter()
    try:
        result = stage.run(context)
    except DsvlAdaptError as exc:
        raise type(exc)(f"stage {name!r}: {exc}\n(what earlier stages produced is kept in {run_dir})") from exc
    except Exception as exc:
        raise StageError(
            f"stage {name!r} failed: {type(exc).__name__}: {exc}\n"
            f"(what earlier stages produced is kept in {run_dir}; run the same command again to resume)"
        ) from exc
    seconds = time.perf_counter() - started
    if processes.is_main:
        final = context.run_dir / "stages" / name
        record = {"stage": name, "paths": RUN_RELATIVE,
                  "artifacts": record_artifacts(result.artifacts, context.work_dir, final, context.run_dir),
                  "figures": _without_partial(result.figures, context.work_dir, final), "seconds": seconds,
                  "process_peak_rss_bytes": process_peak_rss_bytes()}
        (context.work_dir / STAGE_RECORD).write_text(json.dumps(record, indent=2, default=str))
        os.replace(context.work_dir, final)
    log(f"[{name}] done in {seconds:.1f} s")


def stage_seed(seed: int, stage_name: str) -> int:
    """A per-stage seed: a stage's randomness does not depend on which stages ran before it in this process."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(stage_name.encode())) % 2**31


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _silent(message: str) -> None:
    del message


#: ``stage.json``'s ``paths`` value when its artifact paths are relative to the run folder (records without it are
#: from earlier versions, whose relative paths are relative to their stage folder).
RUN_RELATIVE = "run-relative"


def record_artifacts(artifacts: dict[str, str], work_dir: Path, final: Path, run_dir: Path) -> dict[str, str]:
    """Artifact paths as ``stage.json`` stores them: relative to the run folder when they lie inside it, so that a
    run folder moved or copied elsewhere still resumes; absolute otherwise (a file the user keeps elsewhere).

    A stage returns paths relative to its work folder (``"student"``), or absolute ones (an earlier stage's
    artifact it hands on unchanged). Paths inside the ``.partial`` work folder are recorded at the stage's final
    folder, where they are after the rename."""
    recorded = {}
    for key, value in artifacts.items():
        path = Path(value)
        path = (path if path.is_absolute() else work_dir / path).absolute()
        if path.is_relative_to(work_dir):
            path = final / path.relative_to(work_dir)
        recorded[key] = path.relative_to(run_dir).as_posix() if path.is_relative_to(run_dir) else str(path)
    return recorded


def unfinished_stages(run_dir: Path, stages: Sequence[str]) -> list[str]:
    """The stages among ``stages`` with no complete record in ``run_dir`` (a run is finished when there are none)."""
    return [name for name in stages if not (Path(run_dir) / "stages" / name / STAGE_RECORD).is_file()]


def read_stage_artifacts(stage_dir: Path) -> dict[str, Path]:
    """The artifacts a complete stage recorded in ``stage_dir/stage.json``, as paths (for tools that read runs)."""
    stage_dir = Path(stage_dir).absolute()
    record = json.loads((stage_dir / STAGE_RECORD).read_text())
    return _artifact_paths(stage_dir.parent.parent, stage_dir, record)


def _artifact_paths(run_dir: Path, stage_dir: Path, record: dict[str, Any]) -> dict[str, Path]:
    base = run_dir if record.get("paths") == RUN_RELATIVE else stage_dir
    return {key: (Path(value) if Path(value).is_absolute() else base / value)
            for key, value in record["artifacts"].items()}


def _without_partial(figures: dict[str, Any], work_dir: Path, final: Path) -> dict[str, Any]:
    """The figures with every mention of the ``.partial`` work folder replaced by the stage's final folder."""
    text = json.dumps(figures, default=str)
    return json.loads(text.replace(json.dumps(str(work_dir))[1:-1], json.dumps(str(final))[1:-1]))


def _adopt(context: RunContext, stage_dir: Path, name: str, record: dict[str, Any]) -> None:
    context.artifacts.update(_artifact_paths(context.run_dir, stage_dir, record))
    context.figures[name] = record["figures"]


class LazyStage:
    """A stage registered by name whose implementation is imported only when it runs.

    Keeps plugin loading (and ``dsvl-adapt plugins``) free of torch imports::

        register(LazyStage("finetune", "fine-tune -> teacher", "dsvl_adapt.inject.finetune:FinetuneStage"))
    """

    def __init__(self, name: str, description: str, target: str, *, distributed: bool = False,
                 config_keys: tuple[str, ...] | None = None, cacheable: bool = True) -> None:
        self.name = name
        self.description = description
        self.target = target
        self.distributed = distributed
        self.config_keys = config_keys
        self.cacheable = cacheable

    def load(self) -> Stage:
        return load_target(self.target)()

    def run(self, context: RunContext) -> StageResult:
        return self.load().run(context)
