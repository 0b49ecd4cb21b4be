"""Configuration: Hydra composes it, pydantic validates it.

The primary config and its groups live in ``conf/`` (shipped inside the wheel as
``dsvl_adapt/conf``). Plugins add their own groups (``vertical/<name>.yaml``) through
:func:`~dsvl_adapt.hookspecs.dsvl_adapt_config_search_path`. The composed config is checked
against :class:`RunConfig` before any work starts: an unknown key or a value out of range
fails at once with the field's dotted path and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .compress.configs import StructuralPruneConfig, TokenPruneConfig, WeightPruneConfig
from .continual.settings import UpdateSection
from .errors import ConfigError
from .quantization import QuantizeConfig

CONF_DIR_CANDIDATES = (
    Path(__file__).parent / "conf",  # installed wheel
    Path(__file__).parent.parent / "conf",  # source checkout / editable install
)


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment, NaN and inf are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class VerticalSection(Section):
    name: str = Field(description="an installed vertical (see `dsvl-adapt plugins`)")
    target: str | None = Field(None, description="hardware target used for runtime choices; default: the vertical's first")


class ModelSection(Section):
    preset: str | None = Field("reference-small", description="a reference preset built in code, or null with `path`")
    path: Path | None = Field(None, description="a local Hugging Face DeepSeek-VL checkpoint directory")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the weights during the run; auto = the checkpoint's own on a GPU; on the CPU "
                            "float32, or bfloat16 for a bfloat16 checkpoint when the pipeline trains nothing. "
                            "Export and quantization always get float32"
    )
    trust_remote_code: bool = Field(False, description="never needed for DeepSeek-VL; enabling it warns")
    allow_pickle: bool = Field(False, description="allow loading *.bin/*.pt pickled weights (unsafe)")
    tokenizer_vocab_size: int = Field(1024, ge=300, le=1_000_000, description="vocab of the offline-trained tokenizer")
    pretrain_general: bool = Field(
        False, description="reference presets first learn the core general set (colours, shapes, counts, left/right), "
                          "once per machine, then taken from a cache (docs/general-ability.md); ignored for `path`"
    )
    pretrain: "GeneralPretrainSection" = Field(
        default_factory=lambda: GeneralPretrainSection(steps=120, lr=5e-4),  # conf/model/*.yaml set it per preset
        description="the general pretraining phase of a reference preset (model.pretrain_general)",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        from .models.presets import PRESETS

        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose one of: {', '.join(PRESETS)}")
        return value

    @field_validator("path")
    @classmethod
    def _checkpoint_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "config.json").is_file():
            what = "does not exist" if not value.exists() else "holds no config.json"
            raise ValueError(f"{value} {what}; give a local Hugging Face DeepSeek-VL checkpoint directory")
        if value is not None:
            from .models.checkpoint_files import architecture_problem

            problem = architecture_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSection":
        if (self.preset is None) == (self.path is None):
            raise ValueError("set exactly one of model.preset (a reference preset) or model.path (a checkpoint dir); "
                             "for your own checkpoint use: model=local model.path=DIR")
        return self

    @model_validator(mode="after")
    def _readable_weights(self) -> "ModelSection":
        """model.path holds weights that can be read safely (pickles only with allow_pickle)."""
        if self.path is not None and not (self.path / "quantization.json").is_file():
            from .errors import ModelLoadError
            from .models.checkpoint_files import weight_files

            try:
                weight_files(self.path, self.allow_pickle)
            except ModelLoadError as exc:
                raise ValueError(str(exc)) from None
        return self


class DataSection(Section):
    """Where the rows come from and how many (see docs/data.md)."""

    source: Path | None = Field(
        None, description="your data folder: train / validation (or val, valid, dev) / test .jsonl; null = generated"
    )
    train_size: int = Field(800, ge=1, description="rows generated, or a seeded sample of data.source's train split "
                                                   "(all of its rows when it holds fewer)")
    validation_size: int = Field(64, ge=1, description="as train_size, for the validation split")
    test_size: int = Field(100, ge=1, description="as train_size, for the test split")
    on_bad_row: Literal["fail", "skip"] = Field("fail", description="what to do with an unusable row")
    max_image_pixels: int = Field(50_000_000, ge=1, description="larger images are refused (decompression bombs)")
    allow_outside: list[Path] = Field(
        default_factory=list, description="folders outside data.source that its images may lie in (through symbolic "
                                          "links or paths); any other image outside data.source is refused"
    )
    max_overlap: int = Field(0, ge=0, description="test rows identical to a train row (same image, same question) "
                                                  "allowed; more refuse the run")

    @field_validator("source")
    @classmethod
    def _data_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            what = "is not a directory" if value.exists() else "does not exist"
            raise ValueError(f"{value} {what}; give a folder holding train.jsonl, validation.jsonl (or val.jsonl, "
                             "valid.jsonl, dev.jsonl) and test.jsonl, or null for the vertical's generated data")
        return value

    @field_validator("allow_outside")
    @classmethod
    def _allowed_dirs(cls, value: list[Path]) -> list[Path]:
        missing = [str(path) for path in value if not path.is_dir()]
        if missing:
            raise ValueError(f"{', '.join(missing)}: not an existing folder; list folders that images may lie in")
        return value


class PipelineSection(Section):
    stages: list[str] = Field(min_length=1, description="stage names in run order (see `dsvl-adapt plugins`)")


class TrainSchedule(Section):
    """One training phase: shared by the full fine-tune, LoRA and distillation."""

    steps: int = Field(ge=0, description="optimizer steps; 0 skips the phase")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(gt=0, le=1.0, description="peak learning rate")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1, description="evaluate on the validation split every N steps")
    patience: int | None = Field(None, ge=1, description="early stopping after N evaluations without improvement")
    stop_at_exact_match: float | None = Field(
        None, gt=0, le=1,
        description="stop the phase at the first evaluation whose validation exact match (the share of validation "
                    "rows greedy decoding answers word for word) reaches this value: accuracy has saturated, and the "
                    "steps left would buy loss, not answers (0.98 leaves one row in 64); null trains every step")
    checkpoint_every: int = Field(50, ge=1, description="save a resumable checkpoint every N steps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32", description="auto = bf16 autocast where measured >= 1.15x faster than fp32 on this machine's CPU "
                            "(bf16 on GPUs that have it, else fp16 with loss scaling); each phase decides its own"
    )


class GeneralPretrainSection(TrainSchedule):
    """The general pretraining of a reference preset: a full-parameter phase on the core general set."""

    rows: int = Field(768, ge=1, description="rows of the general set's train split it learns from")
    validation_rows: int = Field(64, ge=1, description="rows of the general validation split (loss and accuracy)")


def _replay_share(what: str) -> Any:
    return Field(0.0, ge=0, lt=1, description=f"share of general-set rows (0 = none, below 1) mixed into {what}'s "
                                              "training rows to keep general ability (docs/general-ability.md)")


class LoraSection(Section):
    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str = Field(
        r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
        description="regex over full module paths (LM and vision tower share names like q_proj)",
    )
    train: TrainSchedule

    @field_validator("target_modules")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class FinetuneSection(Section):
    full: TrainSchedule = Field(description="full-parameter phase, for models that start from random weights")
    full_when: Literal["auto", "always", "never"] = Field(
        "auto", description="auto = only for reference presets (random weights)"
    )
    lora: LoraSection
    replay_general: float = _replay_share("each fine-tune phase")


class PruneSection(Section):
    structural: StructuralPruneConfig = Field(default_factory=StructuralPruneConfig)
    weights: WeightPruneConfig = Field(default_factory=WeightPruneConfig)
    tokens: TokenPruneConfig = Field(default_factory=TokenPruneConfig)
    calibration_batch_size: int = Field(4, ge=1, description="rows per calibration batch (from the train split)")


class DistillSection(Section):
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the KL term (loss scaled by T^2)")
    kl_weight: float = Field(1.0, ge=0, description="weight of KL(teacher || student) on answer-token logits")
    ce_weight: float = Field(0.5, ge=0, description="weight of cross-entropy on the labels")
    hidden_weight: float = Field(0.0, ge=0, description="weight of the hidden-state MSE through learned projections")
    layer_map: dict[int, int] | None = Field(
        None, description="student layer -> teacher layer for the hidden loss; null = spread evenly"
    )
    train: TrainSchedule
    replay_general: float = _replay_share("distillation")

    @model_validator(mode="after")
    def _some_loss(self) -> "DistillSection":
        if self.kl_weight == self.ce_weight == self.hidden_weight == 0:
            raise ValueError("distill: kl_weight, ce_weight and hidden_weight are all 0; nothing would be learnt")
        return self


class QuantizeSection(QuantizeConfig):
    """The quantize stage: a QuantizeConfig plus how the backend is chosen."""

    follow_target: bool = Field(
        True, description="quantize for the target's runtime backend when one of that name is registered, "
                          "instead of `backend`"
    )
    inference_precision: Literal["f32", "bf16"] = Field(
        "f32", description="OpenVINO inference precision, pinned at load (the CPU plugin's own default is bf16 "
                           "wherever the CPU has it); recorded in openvino.json and the runtime's label"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_inference_precision(cls, data: Any) -> Any:
        """``quantize.precision=f32|bf16`` (its meaning before ``precision`` named the weight precision) still
        sets the OpenVINO inference precision."""
        if isinstance(data, dict) and data.get("precision") in ("f32", "bf16"):
            data = dict(data)
            data["inference_precision"] = data.pop("precision")
        return data


class ExportSection(Section):
    graphs: Literal["auto", "full", "split"] = Field(
        "auto", description="split = vision+aligner and LM on inputs_embeds (no NonZero/ScatterND); auto = split "
                            "when the target's op list lacks an op the full graph needs, or when quantize makes "
                            "the token-embedding table int8 (quantize.embedding)"
    )
    opset: int | None = Field(None, ge=13, le=23, description="null = the exporter's default (dynamo: 20)")


class ScoreSection(Section):
    batch_size: int = Field(16, ge=1, description="test rows per generate call of a PyTorch model (base, teacher, a "
                                                  "PyTorch student)")
    runtime_batch_size: int = Field(
        1, ge=1, description="test rows per generate call through an exported runtime (the deployed student): 1 "
                             "answers each row alone, as `dsvl-adapt serve` answers a lone request. A dynamic-int8 "
                             "artifact quantizes activations with one scale per call, so its answer to a row can "
                             "depend on the rows batched with it (docs/serving.md)")
    general_size: int = Field(
        32, ge=0, description="rows of the general-capability check (colours, shapes, counts, left/right); 0 = off"
    )
    latency_warmup: int = Field(2, ge=0)
    latency_repeats: int = Field(10, ge=1)
    threads: int | None = Field(None, ge=1, description="CPU threads for latency; null = torch default")
    measure_memory: bool = Field(
        True, description="measure the peak resident memory of a fresh process serving each timed model (teacher, "
                          "student; a few seconds each); false = the memory fit check is an estimate")
    models: list[Literal["base", "teacher", "student"]] = Field(default_factory=lambda: ["base", "teacher", "student"])


class CleanClipSection(Section):
    """The optional image-text similarity signal of the clean stage (docs/cleaning.md)."""

    path: Path | None = Field(None, description="a local CLIP-style checkpoint (transformers or open_clip folder); "
                                                "null = no similarity signal; nothing is downloaded")
    threshold: float = Field(0.7, ge=0, le=2.5, description="rows whose image-text similarity (CLIPScore: "
                                                           "2.5 x max(cosine, 0)) is below it are flagged")

    @field_validator("path")
    @classmethod
    def _local_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a local folder; give a CLIP checkpoint directory, or null")
        return value


class CleanSection(Section):
    """The ``clean`` stage and ``dsvl-adapt clean`` (docs/cleaning.md)."""

    decisions: Path | None = Field(None, description="a review decisions file (JSONL: split, id, decision keep/fix/"
                                                     "drop, answer) applied whenever the data loads")
    label_issues: Literal["flag", "drop", "fix"] = Field(
        "flag", description="what the stage does with likely label errors: flag (the review page), drop them, or "
                            "fix them with the suggested answer")
    label_issue_min_score: float = Field(
        0.0, ge=0, le=1, description="report a likely label error only when its suspicion score (1 - the given "
                                     "answer's out-of-sample probability) reaches this: higher flags fewer rows, "
                                     "more of them truly wrong (the review page's order; docs/cleaning.md)")
    folds: int = Field(5, ge=2, le=20, description="folds of the cross-fitted cheap model (level 2)")
    level2: bool = Field(True, description="run the model-based checks (label errors, image-question mismatch)")
    near_duplicate_distance: int = Field(4, ge=0, le=64, description="perceptual-hash bits two images may differ "
                                                                     "by and count as the same picture")
    min_image_side: int = Field(8, ge=1, description="images with a shorter side are flagged as absurd sizes")
    max_aspect_ratio: float = Field(8.0, ge=1, description="images longer than this times their width (or wider) "
                                                           "are flagged")
    blank_std: float = Field(2.0, ge=0, description="images whose grey-level standard deviation is below it are "
                                                    "blank or near-constant")
    review_rows: int = Field(300, ge=1, description="most suspicious rows shown on the review page")
    skip_checks: list[str] = Field(default_factory=list, description="registered data checks not to run")
    clip: CleanClipSection = Field(default_factory=CleanClipSection)

    @field_validator("decisions")
    @classmethod
    def _decisions_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist; give the decisions JSONL the review page exported, or null")
        return value


class RunConfig(Section):
    """The whole validated run configuration."""

    vertical: VerticalSection
    model: ModelSection
    data: DataSection
    pipeline: PipelineSection
    finetune: FinetuneSection
    prune: PruneSection = Field(default_factory=PruneSection)
    distill: DistillSection
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    export: ExportSection = Field(default_factory=ExportSection)
    score: ScoreSection
    clean: CleanSection = Field(default_factory=CleanSection)
    seed: int = Field(0, ge=0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    run_dir: Path | None = Field(None, description="where the run writes; the same dir resumes")
    cache_dir: Path | None = Field(
        None, description="share completed stages between runs with the same inputs (sweeps); null = off"
    )
    update: UpdateSection | None = Field(
        None, description="set by `dsvl-adapt update`: the run this one updates and how (docs/continual.md)")

    @model_validator(mode="after")
    def _token_budget_deploys(self) -> "RunConfig":
        """A token-reduction method that runs in PyTorch only cannot reach the exported graphs."""
        tokens = self.prune.tokens
        if not tokens.enabled:
            return self
        from .plugins import get_registry

        reducer = get_registry().token_reducers.get(tokens.method)
        exporting = [s for s in self.pipeline.stages if s in ("quantize", "export")]
        if reducer.deploys == "torch" and exporting:
            kept = ",".join(s for s in self.pipeline.stages if s not in exporting)
            raise ValueError(f"prune.tokens.method={tokens.method} runs in PyTorch only (an attention mask over all "
                             f"the image tokens, which the exported graphs and their KV cache cannot carry), but the "
                             f"pipeline has {' and '.join(exporting)}: score the PyTorch student with "
                             f"pipeline.stages=[{kept}], or use a method that deploys with K tokens "
                             "(select, resolution, vision-merge)")
        return self


def conf_dir() -> Path:
    for candidate in CONF_DIR_CANDIDATES:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError("dsvl-adapt's config folder is missing from the installation; reinstall the package")


def validate(raw: dict[str, Any]) -> RunConfig:
    """Validate a plain config dict; errors name every bad field by its dotted path."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def known_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the run config (for 'did you mean' hints)."""
    model = model or RunConfig
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += known_keys(annotation, f"{prefix}{name}.")
    return keys


def unknown_key_message(path: str) -> str:
    import difflib

    close = difflib.get_close_matches(path, known_keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; check its spelling"
    return f"{path}: unknown key{hint} (`dsvl-adapt validate --show` prints every key)"


def format_validation_error(exc: ValidationError) -> str:
    lines = [f"invalid configuration ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append("  " + unknown_key_message(path))
            continue
        shown = err.get("input")
        value = "" if isinstance(shown, dict) else f" (got {shown!r})"
        lines.append(f"  {path}: {err['msg']}{value}")
    return "\n".join(lines)


def search_path_override(extra_entries: list[str]) -> list[str]:
    """The ``hydra.searchpath`` override that adds plugin config directories."""
    if not extra_entries:
        return []
    return ["hydra.searchpath=[" + ",".join(extra_entries) + "]"]


def compose(overrides: list[str] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """Compose the config with Hydra (plugins' search path included) and validate it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .plugins import get_registry

    registry = get_registry()
    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose("config", overrides=overrides + search_path_override(registry.config_search_path))
    except MissingConfigException as exc:
        raise ConfigError(_missing_config_message(exc, registry)) from None
    except (HydraException, OmegaConfBaseException) as exc:
        match = re.search(r"Could not override '([^']+)'", str(exc))
        if match:
            raise ConfigError(unknown_key_message(match.group(1))) from None
        raise ConfigError(f"could not compose the configuration: {exc}") from None
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    return validate(raw), raw


def _missing_config_message(exc: Exception, registry: Any) -> str:
    text = str(exc)
    match = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if match and match.group(1) == "vertical":
        name = match.group(2)
        hint = ""
        if name in ("industrial", "medical", "ecommerce", "finance"):
            hint = f'\nInstall it with: pip install "dsvl-adapt[{name}]"'
        return (f"unknown vertical {name!r}; installed verticals: {', '.join(registry.verticals.names()) or 'none'}"
                f"{hint}")
    if match:
        group, name = match.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"no config {name!r} in group {group!r}; available: {', '.join(options) or 'none'}"
    return text.splitlines()[0]
