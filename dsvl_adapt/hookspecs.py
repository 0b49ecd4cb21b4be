"""The plugin contract of dsvl-adapt.

Every extension point is a pluggy hook whose name starts with ``dsvl_adapt_``. The core's own
stages, metrics and datasets are registered through these same hooks (see
:mod:`dsvl_adapt.builtins`), so a third-party plugin has exactly the power the core has.

Most hooks follow the *register-callback* pattern (as in simonw/llm): the hook receives a
``register`` function and calls it once per thing it supplies. The registry rejects
duplicates and invalid objects with a message naming the plugin.

A plugin is a module with functions decorated by :data:`dsvl_adapt.hookimpl`, exposed
through the ``dsvl_adapt`` entry-point group::

    [project.entry-points.dsvl_adapt]
    legal = "dsvl_adapt_legal"

Plugins should import torch and other heavy libraries lazily (inside functions), so that
``dsvl-adapt plugins`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only
    from .compress.tokens.contract import TokenReducer
    from .engine import RunContext, Stage, StageResult
    from .runtimes.contract import RuntimeBackend
    from .schemas import DataCheck, DatasetSpec, HardwareTarget, MetricSpec, PromptTemplate, Vertical

hookspec = pluggy.HookspecMarker("dsvl_adapt")


@hookspec
def dsvl_adapt_register_verticals(register: Callable[["Vertical"], None]) -> None:
    """Register industry verticals.

    Called once when the plugin manager first builds its registry. Call
    ``register(Vertical(...))`` for each vertical the plugin supplies. A
    :class:`~dsvl_adapt.schemas.Vertical` names its dataset, prompt, metrics (the first
    is primary), hardware targets and objectives; those are registered by the hooks below,
    by this plugin or another.

    Example::

        @hookimpl
        def dsvl_adapt_register_verticals(register):
            register(Vertical(name="legal", description="Contract review", dataset="legal-docs",
                              prompt="legal-qa", metrics=["accuracy"], targets=["cpu-server"]))
    """


@hookspec
def dsvl_adapt_register_datasets(register: Callable[["DatasetSpec"], None]) -> None:
    """Register datasets.

    ``register(DatasetSpec(name=..., load=factory))`` where ``factory(request)`` takes a
    :class:`~dsvl_adapt.schemas.DatasetRequest` (split, size, seed, image size, optional
    user ``source`` directory) and returns an iterable of row dicts with keys ``image``
    (a PIL image or a path), ``question``, ``answer`` and optionally ``id`` and ``meta``.
    Rows are validated by the core as they load; use
    :func:`dsvl_adapt.data.jsonl.read_jsonl_split` to read a user's JSONL + image folder.

    Example::

        @hookimpl
        def dsvl_adapt_register_datasets(register):
            register(DatasetSpec(name="legal-docs", load=lambda req: generate(req.split, req.size)))
    """


@hookspec
def dsvl_adapt_register_prompts(register: Callable[["PromptTemplate"], None]) -> None:
    """Register prompt templates.

    ``register(PromptTemplate(name=..., system=..., user="{question}", answer_format=...))``.
    The ``user`` template is filled with the row's fields (``question`` and any key of
    ``meta``); an unknown field is an error when the template is checked.
    """


@hookspec
def dsvl_adapt_register_metrics(register: Callable[["MetricSpec"], None]) -> None:
    """Register metrics.

    ``register(MetricSpec(name=..., compute=fn, higher_is_better=True))`` where
    ``fn(predictions: list[str], references: list[str], rows: list[Row]) -> float`` returns a
    value in ``[lower, upper]`` (``[0, 1]`` unless given). Predictions are generated answers,
    stripped; references are the rows' answers.
    """


@hookspec
def dsvl_adapt_register_hardware_targets(register: Callable[["HardwareTarget"], None]) -> None:
    """Register hardware targets (device, runtime, memory budget, dtypes, objectives).

    ``register(HardwareTarget(name="edge-npu", device="npu", runtime="onnxruntime", ...))``.
    ``runtime`` names a backend registered through :func:`dsvl_adapt_register_runtimes` (the
    core's: ``torch``, ``onnxruntime``, ``openvino``). The scorecard checks the exported model
    against every target of the vertical.
    """


@hookspec
def dsvl_adapt_register_stages(register: Callable[["Stage"], None]) -> None:
    """Register pipeline stages.

    ``register(stage)`` where ``stage`` satisfies :class:`~dsvl_adapt.engine.Stage`: a
    ``name`` (used in ``pipeline.stages``), a ``description`` and ``run(context) ->
    StageResult``. The core's stages (``load``, ``finetune``, ``score`` …) come through this
    hook too.
    """


@hookspec
def dsvl_adapt_register_runtimes(register: Callable[["RuntimeBackend"], None]) -> None:
    """Register runtime backends (inference engines: an NPU SDK, TensorRT, ExecuTorch ...).

    ``register(backend)`` where ``backend`` satisfies
    :class:`~dsvl_adapt.runtimes.contract.RuntimeBackend`: a ``name`` (what a
    :class:`~dsvl_adapt.schemas.HardwareTarget` names as its ``runtime``), a ``description``, and
    ``available()``, ``capabilities()``, ``prepare(request)`` (export + optional quantization of a
    checkpoint directory into a deployable artifact), ``load(directory, threads=...)`` (a
    :class:`~dsvl_adapt.runtimes.contract.GenerativeModel`), ``owns(directory)`` and
    ``inventory(directory)``. The ``quantize`` and ``export`` stages and the scorecard reach a
    backend only through this interface; the core's PyTorch, ONNX Runtime and OpenVINO backends come
    through this hook too. Constructing a backend must be cheap: import the engine inside its methods.
    ``docs/plugins/runtimes.md`` walks through a complete backend.

    Example::

        @hookimpl
        def dsvl_adapt_register_runtimes(register):
            register(AcmeNpuBackend())   # name = "acme-npu"; a target then says runtime="acme-npu"
    """


@hookspec
def dsvl_adapt_register_token_reducers(register: Callable[["TokenReducer"], None]) -> None:
    """Register visual-token reduction methods for ``prune.tokens`` (docs/tokens.md).

    ``register(reducer)`` where ``reducer`` satisfies
    :class:`dsvl_adapt.compress.tokens.contract.TokenReducer`: a ``name`` (what ``prune.tokens.method``
    selects), a ``description``, ``deploys`` (``"graphs"``: the exported graphs take K image tokens;
    ``"torch"``: PyTorch only), ``image_tokens(source_tokens, keep) -> K``, ``apply(model, processor, K)``
    (reduces the model in place and sets the processor's ``num_image_tokens``) and ``restore(model, budget)``
    (re-installs on a loaded model what its config cannot express); optionally ``masks = True`` when all N image
    tokens stay in the sequence and an attention mask lets the text read K. The built-ins (``select``,
    ``resolution``, ``vision-merge``, ``window``, ``text-guided``) come through this hook too.
    """


@hookspec
def dsvl_adapt_register_data_checks(register: Callable[["DataCheck"], None]) -> None:
    """Register data-cleaning checks (``dsvl-adapt clean``, the ``clean`` stage; docs/cleaning.md).

    ``register(DataCheck(name=..., level=1, run=fn, verticals=["legal"]))`` where ``fn(data)``
    yields :class:`~dsvl_adapt.cleaning.findings.Finding` objects for suspicious rows. The core's
    integrity, duplicate, leakage and label-error checks come through this hook too.
    """


@hookspec
def dsvl_adapt_config_search_path() -> str | list[str] | None:
    """Return Hydra search-path entries holding this plugin's config groups.

    Usually ``"pkg://dsvl_adapt_<vertical>.conf"``; the package then ships
    ``conf/vertical/<vertical>.yaml`` so that ``vertical=<vertical>`` composes.
    """


@hookspec
def dsvl_adapt_before_stage(stage: "Stage", context: "RunContext") -> None:
    """Observe a stage about to run (logging, experiment trackers). Must not mutate the model."""


@hookspec
def dsvl_adapt_after_stage(stage: "Stage", context: "RunContext", result: "StageResult") -> None:
    """Observe a stage that finished; ``result`` holds its outputs and figures."""


HOOK_NAMES: tuple[str, ...] = tuple(name for name in dir() if name.startswith("dsvl_adapt_"))

__all__ = ["hookspec", "HOOK_NAMES", *HOOK_NAMES]
