"""Training precision: ``auto`` decides from a measurement on this machine; each phase may run in its own precision."""

from __future__ import annotations

import json

import pytest
import torch

import dsvl_adapt
from dsvl_adapt.inject import precision as precision_module
from dsvl_adapt.inject.precision import BF16_MIN_SPEEDUP, choose_precision, time_forward_backward

CPU = torch.device("cpu")


def test_phases_of_one_process_run_in_different_precisions(tiny_overrides, tmp_path, monkeypatch):
    """The full phase on ``auto`` and LoRA pinned to bf16 in one process (accelerate's process-wide mixed precision
    refused this: "AcceleratorState has already been initialized"); each records what it ran in and why.

    The CPU gate is opened so that ``auto`` measures on every host (on a CPU without native bf16, emulated bf16 is
    timed): the stage times its own model on its own batches and follows the rule on what it measured."""
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision_module, "_DECISIONS", {})
    dsvl_adapt.run([*tiny_overrides, "pipeline.stages=[load,finetune]", "finetune.full.steps=4",
                    "finetune.lora.train.steps=3", "finetune.full.precision=auto",
                    "finetune.lora.train.precision=bf16"], run_dir=tmp_path / "run")
    figures = json.loads((tmp_path / "run" / "stages" / "finetune" / "stage.json").read_text())["figures"]
    full, lora = figures["full"], figures["lora"]
    assert lora["precision"] == "bf16"
    assert lora["precision_choice"]["requested"] == "bf16" and lora["precision_choice"]["reason"] == \
        "set in the configuration"
    choice = full["precision_choice"]
    assert choice["requested"] == "auto" and full["precision"] == choice["chosen"]
    assert choice["reason"].startswith("measured on this CPU") and choice["fp32_ms"] > 0 and choice["bf16_ms"] > 0
    assert choice["chosen"] == ("bf16" if choice["fp32_ms"] / choice["bf16_ms"] >= BF16_MIN_SPEEDUP else "fp32")
    steps = [entry for entry in full["history"] + lora["history"] if "loss" in entry]  # (step 0: evaluation only)
    assert steps and all(entry["loss"] == entry["loss"] for entry in steps)  # no NaN


def test_auto_picks_bf16_only_when_measured_clearly_faster_and_measures_once_per_key(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision_module, "_DECISIONS", {})
    calls = []

    def measure(fp32_ms: float, bf16_ms: float):
        def run() -> tuple[float, float]:
            calls.append((fp32_ms, bf16_ms))
            return fp32_ms, bf16_ms
        return run

    faster = choose_precision("auto", CPU, key="a", measure=measure(100.0, 80.0))
    assert faster.chosen == "bf16" and faster.bf16_speedup == 1.25 and faster.as_dict()["bf16_speedup"] == 1.25
    slower = choose_precision("auto", CPU, key="b", measure=measure(58.0, 81.0))  # the Intel Xeon of issue 14
    assert slower.chosen == "fp32" and slower.bf16_speedup == pytest.approx(0.716, abs=1e-3)
    marginal = choose_precision("auto", CPU, key="c", measure=measure(100.0, 95.0))
    assert marginal.chosen == "fp32"  # 1.05x is within noise: not worth bf16's rounding
    assert choose_precision("auto", CPU, key="a", measure=measure(1.0, 9.0)) is faster  # cached for this process
    assert len(calls) == 3
    assert choose_precision("fp32", CPU, key="z", measure=measure(100.0, 10.0)).chosen == "fp32"
    assert len(calls) == 3  # a precision set in the configuration is never measured


def test_a_cpu_without_native_bf16_runs_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    choice = choose_precision("auto", CPU, key="x", measure=lambda: pytest.fail("measured"))
    assert choice.chosen == "fp32" and "no native bf16" in choice.reason


def test_the_measurement_leaves_no_gradient_and_no_trace_in_the_random_generators():
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 1))
    inputs = torch.randn(16, 32)

    def run_once(precision: str) -> None:
        with precision_module.autocast(precision, CPU):
            loss = model(inputs).float().pow(2).mean()
        loss.backward()
        for p in model.parameters():
            p.grad = None

    before = torch.get_rng_state()
    fp32_ms, bf16_ms = time_forward_backward(run_once)
    assert fp32_ms > 0 and bf16_ms > 0
    assert torch.equal(torch.get_rng_state(), before)  # dropout's draws during training are unchanged
    assert all(p.grad is None for p in model.parameters())
