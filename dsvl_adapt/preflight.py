"""Checks made before any stage runs, by ``dsvl-adapt validate`` and by ``run`` alike.

A mistake that would otherwise surface after minutes of training is found in seconds:

- a user's data folder (``data.source``): every row of every split is read and its image opened
  (a broken row in ``test.jsonl`` fails here, naming file and line, not in the score stage), row
  ids are unique per split, and test rows that repeat train rows are counted and, past
  ``data.max_overlap``, refused (:mod:`dsvl_adapt.data.report`);
- ``finetune.lora.target_modules`` matches at least one Linear module, and ``distill.layer_map``
  names layers that exist, checked on the model's skeleton built on the ``meta`` device from the
  preset's or the checkpoint's config (no weights are read).

It returns the data's content fingerprint, which the manifest records and the stage cache keys on.
Generated data is not generated here (minutes for large splits); the load stage checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .config import RunConfig
from .data.fingerprint import DataFingerprint
from .data.loading import load_configured_split
from .data.report import DataReport, data_fingerprint, data_report
from .errors import ConfigError

DEEPSEEK_VL_TYPES = ("deepseek_vl", "deepseek_vl_hybrid")


@dataclass
class Preflight:
    """What the checks found: the data's fingerprint, and the data report when a folder was read."""

    data: DataFingerprint
    report: DataReport | None
    checked: list[str]


def preflight(config: RunConfig, registry: Any, log: Callable[[str], None] = print, *,
              summary: bool = False) -> Preflight:
    """Check the data and the model-dependent settings of ``config``; raise on the first problem.

    Notes a user must see (a split sampled, or smaller than its size) go to ``log``; with
    ``summary``, so does one line saying what was checked (``dsvl-adapt validate`` shows it).
    """
    checked: list[str] = []
    report = None
    hf_config = None
    if config.data.source is not None:
        hf_config = model_config(config)
        image_size = _image_size(hf_config)
        report = data_report(config, registry,
                             lambda name: load_configured_split(config, registry, name, image_size), log)
        fingerprint = report.fingerprint
        used = ", ".join(f"{name} {facts['rows']}"
                         + (f" of {facts['available']}" if facts["rows"] < facts["available"] else "")
                         + f" ({facts['file']})" for name, facts in report.splits.items())
        checked.append(f"data {config.data.source}: rows used {used}; every row read and its image opened; "
                       f"{report.overlap.count} test row(s) repeating a train row")
    else:
        fingerprint = data_fingerprint(config, registry)
    checked += check_model_names(config, hf_config)
    if checked and summary:
        log("checked: " + "; ".join(checked))
    return Preflight(fingerprint, report, checked)


def check_model_names(config: RunConfig, hf_config: Any = None) -> list[str]:
    """``finetune.lora.target_modules`` and ``distill.layer_map`` against the model's own module names."""
    stages = config.pipeline.stages
    lora = "finetune" in stages and config.finetune.lora.train.steps > 0
    layer_map = config.distill.layer_map if "distill" in stages else None
    if not (lora or layer_map):
        return []
    if hf_config is None:
        hf_config = model_config(config)
    checked = []
    if lora:
        pattern = config.finetune.lora.target_modules
        linear = linear_module_names(hf_config)
        matched = [name for name in linear if re.fullmatch(pattern, name)]
        if not matched:
            raise ConfigError(
                f"finetune.lora.target_modules={pattern!r} matches no Linear module of the model "
                f"({_model_label(config)}); it is matched against whole module paths, which here look like: "
                f"{', '.join(_path_shapes(linear))} (N = a layer number)"
            )
        checked.append(f"finetune.lora.target_modules matches {len(matched)} Linear modules")
    if layer_map:
        layers = hf_config.text_config.num_hidden_layers
        bad = [f"{s} -> {t}" for s, t in layer_map.items() if not (0 <= s < layers and 0 <= t < layers)]
        if bad:
            raise ConfigError(
                f"distill.layer_map: {', '.join(bad)} names a layer that does not exist: the model "
                f"({_model_label(config)}) has {layers} language-model layers, numbered 0 to {layers - 1}, in the "
                "teacher and the student alike (pruning keeps every layer); or set distill.layer_map=null to spread "
                "them evenly"
            )
        checked.append(f"distill.layer_map within the {layers} layers")
    return checked


def model_config(config: RunConfig) -> Any:
    """The transformers config of the run's model: the preset's, built in code, or the checkpoint's config.json."""
    model = config.model
    if model.path is None:
        from .models.presets import build_config

        return build_config(model.preset or "", vocab_size=model.tokenizer_vocab_size, image_token_id=0)
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(model.path, local_files_only=True,
                                               trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.path: could not read {model.path / 'config.json'}: {exc}") from None
    kind = getattr(hf_config, "model_type", None)
    if kind not in DEEPSEEK_VL_TYPES:
        raise ConfigError(f"model.path: {model.path} holds a {kind!r} model; dsvl-adapt adapts DeepSeek-VL "
                          f"checkpoints (model_type {' or '.join(map(repr, DEEPSEEK_VL_TYPES))})")
    return hf_config


def linear_module_names(hf_config: Any) -> list[str]:
    """Paths of the Linear modules of the model ``hf_config`` describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(hf_config)
    return [name for name, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear)]


def _path_shapes(names: list[str], limit: int = 12) -> list[str]:
    shapes: dict[str, None] = {}
    for name in names:
        shapes.setdefault(re.sub(r"\.\d+\.", ".N.", name), None)
    listed = list(shapes)
    return listed[:limit] + ([f"… ({len(listed) - limit} more)"] if len(listed) > limit else [])


def _image_size(hf_config: Any) -> int:
    return int(getattr(hf_config.vision_config, "image_size", 0) or 128)


def _model_label(config: RunConfig) -> str:
    return f"preset {config.model.preset}" if config.model.path is None else str(config.model.path)
