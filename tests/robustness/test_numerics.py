"""Numerically safe training: NaN and inf are refused in the configuration, and a non-finite loss stops the stage
with its cause, before the stage is recorded as complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel

import dsvl_adapt
from dsvl_adapt import hookimpl
from dsvl_adapt.api import validate
from dsvl_adapt.config import RunConfig
from dsvl_adapt.errors import ConfigError, StageError


def float_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Dotted paths of every float field of the run configuration (``float`` or ``float | None``)."""
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += float_fields(annotation, f"{prefix}{name}.")
        elif annotation is float or float in getattr(annotation, "__args__", ()):
            paths.append(prefix + name)
    return paths


def test_every_float_field_refuses_inf_and_nan():
    fields = float_fields()
    assert {"distill.temperature", "finetune.full.lr", "distill.train.max_grad_norm",
            "prune.weights.sparsity", "prune.structural.lm_mlp_ratio"} <= set(fields)
    for index, path in enumerate(fields):
        value = ("inf", "nan", "-inf")[index % 3]  # each field one of the three: composing takes a while
        with pytest.raises(ConfigError, match=rf"{path.replace('.', '[.]')}: Input should be a finite number"):
            validate(["vertical=industrial", f"{path}={value}"])


def test_validate_on_the_command_line_refuses_an_infinite_temperature():
    result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "validate", "vertical=industrial",
                             "distill.temperature=inf"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "distill.temperature: Input should be a finite number (got inf)" in result.stderr


@pytest.fixture(scope="module")
def warm_cache(tiny_overrides, tmp_path_factory) -> Path:
    """A stage cache holding load and finetune of the tiny pipeline, so the tests below only run distill."""
    cache = tmp_path_factory.mktemp("cache")
    dsvl_adapt.run([*tiny_overrides, "pipeline.stages=[load,finetune]", f"cache_dir={cache}"],
                   run_dir=tmp_path_factory.mktemp("warm"))
    return cache


def test_a_loss_that_overflows_stops_distill_with_its_cause(tiny_overrides, warm_cache, tmp_path):
    """A temperature that passes validation but overflows the logits: NaN at the first step, a message, no record."""
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *tiny_overrides,
                             "pipeline.stages=[load,finetune,distill]", f"cache_dir={warm_cache}",
                             "distill.temperature=1e-45", f"run_dir={run_dir}"],
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, DSVL_ADAPT_NO_PROGRESS="1"))
    assert result.returncode != 0
    error = result.stderr[result.stderr.index("error: "):]
    assert "stage 'distill': distill [distill.train], step 1 of 6: the training loss is nan" in error
    assert "distill.temperature=1e-45 is tiny" in error
    assert "Traceback" not in result.stderr
    assert (run_dir / "stages" / "finetune" / "stage.json").is_file()
    assert not (run_dir / "stages" / "distill").exists() and (run_dir / "stages" / "distill.partial").is_dir()


class LossPoisoner:
    """Test plugin: from the ``at``-th training forward of the student in ``stage`` on, the model's loss is NaN.

    A forward hook on every module (torch's global hook API) turns the loss of the model's output into NaN,
    as a numerical fault inside the model would, while the real loop, loss and optimizer run unchanged.
    """

    def __init__(self, stage: str, at: int) -> None:
        self.stage, self.at, self.calls = stage, at, 0
        self.handle: Any = None

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        if not (module.training and type(module).__name__.endswith("ForConditionalGeneration")):
            return None
        if getattr(output, "loss", None) is None:
            return None
        self.calls += 1
        if self.calls >= self.at:
            output.loss = output.loss * float("nan")
        return output

    @hookimpl
    def dsvl_adapt_before_stage(self, stage: Any, context: Any) -> None:
        if stage.name == self.stage and self.handle is None:
            self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)


def test_a_nan_loss_mid_phase_stops_the_stage_keeps_its_checkpoint_and_the_rerun_resumes(tiny_overrides, warm_cache,
                                                                                        tmp_path):
    from dsvl_adapt.plugins import get_manager

    args = [*tiny_overrides, "pipeline.stages=[load,finetune,distill]", f"cache_dir={warm_cache}"]
    poisoner = LossPoisoner("distill", at=5)  # distill=fast: 6 steps, a checkpoint at step 3
    manager = get_manager()
    manager.register(poisoner, name="test-loss-poisoner")
    try:
        with pytest.raises(StageError) as caught:
            dsvl_adapt.run(args, run_dir=tmp_path / "run")
    finally:
        manager.unregister("test-loss-poisoner")
        if poisoner.handle is not None:
            poisoner.handle.remove()
    message = str(caught.value)
    assert type(caught.value).__name__ == "NonFiniteTrainingError"
    assert "stage 'distill': distill [distill.train], step 5 of 6: the training loss is nan" in message
    assert "training diverged after 4 update(s): lower distill.train.lr" in message
    assert "its last checkpoint (step 3) is kept" in message
    stages = tmp_path / "run" / "stages"
    assert not (stages / "distill" / "stage.json").exists()
    assert (stages / "distill.partial" / "checkpoints" / "step-3" / "complete.json").is_file()

    dsvl_adapt.run(args, run_dir=tmp_path / "run")  # the fault is gone: the same command resumes and finishes
    figures = json.loads((stages / "distill" / "stage.json").read_text())["figures"]
    assert figures["resumed_from"] == 3 and figures["steps"] == 6


def test_a_damaged_teacher_is_named_before_distillation_starts(tiny_overrides, warm_cache, tmp_path):
    """A teacher checkpoint holding NaN (written by a plugin before distill) is refused with the tensor's name."""
    from safetensors.torch import load_file, save_file

    from dsvl_adapt.plugins import get_manager

    def damage(stage: Any, context: Any) -> None:
        if stage.name == "distill":
            path = context.artifact("teacher") / "model.safetensors"
            tensors = load_file(str(path))
            name = next(k for k in tensors if k.endswith("q_proj.weight"))
            tensors[name][0, 0] = float("nan")
            save_file(tensors, str(path.with_suffix(".tmp")), metadata={"format": "pt"})
            os.replace(path.with_suffix(".tmp"), path)  # a new file: the cache's hard-linked copy stays intact

    plugin = types.SimpleNamespace(dsvl_adapt_before_stage=hookimpl(damage))
    manager = get_manager()
    manager.register(plugin, name="test-teacher-damage")
    run_dir = tmp_path / "run"
    try:
        with pytest.raises(StageError, match=r"stage 'distill': the teacher .* holds NaN or inf values in "
                                             r"'[^']*q_proj\.weight'"):
            dsvl_adapt.run([*tiny_overrides, "pipeline.stages=[load,finetune,distill]", "distill.train.steps=3",
                            f"cache_dir={warm_cache}"], run_dir=run_dir)  # steps=3: not a distill the cache holds
    finally:
        manager.unregister("test-teacher-damage")
    assert not (run_dir / "stages" / "distill").exists()
