"""Throughput at each target's batch size: measured for a CPU target whose runtime ran the student here,
a labelled roofline estimate otherwise, and the fit check reads the same figure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dsvl_adapt.schemas import HardwareTarget
from dsvl_adapt.score.hardware import check_target, estimate_throughput


@pytest.fixture(scope="module")
def ecommerce_run(tmp_path_factory):
    """ecommerce declares cpu-batch (ONNX Runtime, batch 8, >= 20 req/s) and a100-serving (GPU, batch 32)."""
    run_dir = tmp_path_factory.mktemp("throughput")
    args = ["vertical=ecommerce", "vertical.target=cpu-batch", "model=reference-tiny", "finetune=fast",
            "pipeline.stages=[load,finetune,quantize,export,score]", "data.train_size=16", "data.validation_size=8",
            "data.test_size=12", "score.latency_repeats=3", "score.latency_warmup=1", "score.general_size=0",
            "score.models=[student]", f"run_dir={run_dir}"]
    done = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_cpu_target_throughput_is_measured_at_its_batch_size(ecommerce_run):
    card = json.loads((ecommerce_run / "scorecard.json").read_text())
    cpu = next(t for t in card["throughput"] if t["target"] == "cpu-batch")
    assert cpu["measured"] is True and cpu["batch_size"] == 8 and cpu["runtime"] == "onnxruntime"
    assert cpu["requests_per_s"] == pytest.approx(8 / cpu["batch_p50_ms"] * 1000, rel=1e-3)
    assert "onnxruntime" in cpu["how"] and "batch of 8" in cpu["how"]
    fit = next(t for t in card["targets"] if t["name"] == "cpu-batch")
    check = next(c for c in fit["checks"] if c["name"] == "throughput")
    assert check["estimated"] is False and check["value"] == cpu["requests_per_s"] and check["limit"] == 20


def test_gpu_target_throughput_is_an_estimate_that_says_how(ecommerce_run):
    card = json.loads((ecommerce_run / "scorecard.json").read_text())
    gpu = next(t for t in card["throughput"] if t["target"] == "a100-serving")
    assert gpu["measured"] is False and gpu["batch_size"] == 32 and gpu["how"].startswith("roofline: ")
    check = next(c for c in next(t for t in card["targets"] if t["name"] == "a100-serving")["checks"]
                 if c["name"] == "throughput")
    assert check["estimated"] is True and "roofline" in check["note"]
    md = (ecommerce_run / "scorecard.md").read_text()
    assert "## Throughput at each target's batch size" in md and "| cpu-batch | onnxruntime | 8 |" in md
    assert "Throughput at each target" in (ecommerce_run / "scorecard.html").read_text()


def _target(**kw):
    base = dict(name="npu", device="npu", runtime="onnxruntime", memory_gb=2, dtypes=["int8"],
                peak_tops={"int8": 4.0}, memory_bandwidth_gbps=8.0, batch_size=4, throughput_rps=100)
    return HardwareTarget(**{**base, **kw})


def test_roofline_throughput_scales_compute_with_the_batch_and_reads_weights_once():
    # compute: 2 x 4 x 1e9 MACs / 4 TOPS = 2 ms; memory: 8e6 B / 8 GB/s = 1 ms -> 2 ms per batch of 4
    t = estimate_throughput(_target(), macs=1_000_000_000, weight_bytes=8_000_000, dtype="int8")
    assert t.batch_p50_ms == pytest.approx(2.0) and t.requests_per_s == pytest.approx(2000.0)
    assert t.measured is False and "x 4" in t.how
    # memory-bound: weights dominate, so a batch costs what one request does
    t = estimate_throughput(_target(batch_size=2), macs=1_000, weight_bytes=80_000_000, dtype="int8")
    assert t.batch_p50_ms == pytest.approx(10.0) and t.requests_per_s == pytest.approx(200.0)


def test_throughput_check_without_a_figure_is_unknown_not_passed():
    from transformers import DeepseekVLConfig

    fit = check_target(_target(), model_dtype="int8", weight_bytes=1, config=DeepseekVLConfig(), macs=0,
                       measured={}, inventory=None, throughput=None)
    check = next(c for c in fit.checks if c.name == "throughput")
    assert check.ok is None and check.note == "not measured"
    slow = estimate_throughput(_target(), macs=10**12, weight_bytes=1, dtype="int8")  # 2 s per batch of 4
    fit = check_target(_target(), model_dtype="int8", weight_bytes=1, config=DeepseekVLConfig(), macs=10**12,
                       measured={}, inventory=None, throughput=slow)
    check = next(c for c in fit.checks if c.name == "throughput")
    assert check.ok is False and check.estimated and not fit.fits


def test_generation_figures_are_measured_through_the_students_runtime(ecommerce_run):
    card = json.loads((ecommerce_run / "scorecard.json").read_text())
    gen = card["generation"]["student"]
    assert gen["runtime"].startswith("onnxruntime") and gen["batch_size"] == 1
    assert 0 < gen["ttft_ms"] and 0 < gen["tpot_ms"] and gen["tokens_per_s_64"] > 0
    assert 1 <= gen["answer_tokens"] <= gen["max_answer_tokens"]
    artifact = next(r for r in card["runtimes"].values() if r["runtime"] == "onnxruntime")["path"]
    export = json.loads((ecommerce_run / artifact / "export.json").read_text())  # an absolute path stays as it is
    if export["mode"] == "split":  # the cache holds fp32 keys and values for every layer, per position
        kv = export["kv_cache"]
        per_token = 2 * 4 * sum(h * d for h, d in zip(kv["kv_heads"], kv["head_dims"]))
        assert gen["kv_cache"] is True and gen["kv_cache_bytes_per_token"] == per_token
    else:
        assert gen["kv_cache"] is False and gen["kv_cache_bytes_per_token"] is None
    assert "no KV cache" not in card["latency"]["student"]["runtime"] or export["mode"] == "full"
    assert "## Generation" in (ecommerce_run / "scorecard.md").read_text()
    assert "time to first token ms" in (ecommerce_run / "scorecard.html").read_text()
