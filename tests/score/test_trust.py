"""Figures a user can trust, through real runs: intervals, serving memory, throughput that agrees with latency,
no stale paths, one predictions file per model, a teacher at the floor diagnosed, and unknown never a pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _card(run_dir: Path) -> dict:
    return json.loads((run_dir / "scorecard.json").read_text())


def test_every_accuracy_has_an_interval_and_comparisons_say_whether_they_are_noise(tiny_run):
    card = _card(tiny_run)
    assert card["schema_version"] == 2
    assert card["intervals"]["resamples"] == 1000 and card["intervals"]["level"] == 0.95
    assert set(card["accuracy_ci"]) == set(card["accuracy"])
    for model, (low, high) in card["accuracy_ci"].items():
        assert 0.0 <= low <= card["accuracy"][model] <= high <= 1.0
    for key, (before, after) in {"teacher_vs_base": ("base", "teacher"),
                                 "student_vs_teacher": ("teacher", "student")}.items():
        comparison = card["comparisons"][key]
        assert comparison["difference"] == pytest.approx(card["accuracy"][after] - card["accuracy"][before], abs=1e-6)
        low, high = comparison["ci"]
        assert low <= comparison["difference"] <= high
        assert comparison["within_noise"] == (low <= 0 <= high)
    assert set(card["general_ci"]) == set(card["general"]) and set(card["general_comparisons"]) == {
        "teacher_vs_base", "student_vs_teacher"}
    for comparison in card["general_comparisons"].values():
        assert comparison["forgetting"] == (comparison["ci"][1] < 0)
    markdown = (tiny_run / "scorecard.md").read_text()
    assert "95% percentile bootstrap over test rows" in markdown and "student - teacher (accuracy):" in markdown
    assert "[low, high]" in (tiny_run / "scorecard.html").read_text()


def test_the_verdict_checks_floors_and_forgetting(tiny_run):
    card = _card(tiny_run)
    names = [o["name"] for o in card["objectives"]]
    assert names == ["teacher_floor", "student_floor", "min_retention", "forgetting_finetune",
                     "forgetting_compression"]
    floor = card["floor"]
    assert floor["constant_answer"] == card["constant_answer"]["accuracy"]
    assert floor["bar"] == pytest.approx(floor["constant_answer"] + 0.5 * (1 - floor["constant_answer"]), abs=1e-6)
    teacher = next(o for o in card["objectives"] if o["name"] == "teacher_floor")
    assert teacher["ok"] == (card["accuracy"]["teacher"] >= floor["bar"] and
                             card["accuracy"]["teacher"] > floor["constant_answer"])
    if any(o["ok"] is False for o in card["objectives"]):
        assert card["verdict"] is False


def test_memory_is_the_measured_peak_of_a_process_serving_each_model(tiny_run):
    card = _card(tiny_run)
    for model in ("teacher", "student"):
        memory = card["memory"][model]
        assert memory["peak_rss_bytes"] >= memory["baseline_rss_bytes"] > 50 * 2**20  # an interpreter with torch
        assert memory["batch_size"] == 1 and "fresh process" in memory["how"]
    assert card["memory"]["student"]["runtime"] == card["runtimes"]["onnxruntime-int8"]["runtime"]
    cpu_box = next(t for t in card["targets"] if t["name"] == "cpu-box")  # ONNX Runtime on a CPU: ran here
    check = next(c for c in cpu_box["checks"] if c["name"] == "memory")
    assert check["value"] * 1e9 >= card["memory"]["student"]["peak_rss_bytes"] - 1e5
    assert "peak RSS" in check["note"] and "measured" in check["note"]
    npu = next(t for t in card["targets"] if t["name"] == "edge-npu")  # not run here: an estimate, labelled
    estimate = next(c for c in npu["checks"] if c["name"] == "memory")
    assert estimate["estimated"] is True and "activations" in estimate["note"] and "KV cache" in estimate["note"]


def test_throughput_at_batch_one_is_the_latency_measurement(tiny_run):
    card = _card(tiny_run)
    student = card["latency"]["student"]
    cpu_box = next(t for t in card["throughput"] if t["target"] == "cpu-box")
    assert cpu_box["measured"] and cpu_box["batch_size"] == student["batch_size"] == 1
    assert cpu_box["batch_p50_ms"] == pytest.approx(student["p50_ms"], abs=1e-3)
    assert "the latency measurement itself" in cpu_box["how"]
    openvino = next(t for t in card["throughput"] if t["target"] == "cpu-box-openvino")  # OpenVINO did not run
    assert openvino["measured"] is False and "did not serve this model here" in openvino["how"]
    assert openvino["batch_p50_ms"] == pytest.approx(student["p50_ms"], abs=1e-3)  # ONNX Runtime's, as a stand-in
    fit = next(t for t in card["targets"] if t["name"] == "cpu-box-openvino")
    latency = next(c for c in fit["checks"] if c["name"] == "latency_p90")
    assert latency["estimated"] and latency["value"] == pytest.approx(student["p90_ms"], abs=1e-3)
    npu = next(t for t in card["throughput"] if t["target"] == "edge-npu")
    if npu["requests_per_s"] >= 10 * 1000.0 / student["p50_ms"]:
        assert "NOTE:" in npu["how"]


def test_no_stale_partial_paths_and_one_predictions_file_per_model(tiny_run):
    text = (tiny_run / "scorecard.json").read_text()
    assert ".partial" not in text
    card = json.loads(text)
    quantize = card["stages"]["quantize"]
    assert Path(quantize["directory"]).is_dir() and Path(quantize["export"]["directory"]).is_dir()
    score_dir = tiny_run / "stages" / "score"
    files = sorted(p.name for p in score_dir.glob("predictions-*.jsonl"))
    assert "predictions-student-student.jsonl" not in files
    assert files == sorted(["predictions-base.jsonl", "predictions-teacher.jsonl", "predictions-student.jsonl",
                            "predictions-student-torch-fp32.jsonl"])
    assert {r["predictions"] for r in card["runtimes"].values()} == {"predictions-student.jsonl",
                                                                     "predictions-student-torch-fp32.jsonl"}


@pytest.fixture(scope="module")
def floor_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One step of each fine-tune phase, teacher only: a teacher at the floor, no export (opset unknown)."""
    run_dir = tmp_path_factory.mktemp("floor-teacher")
    args = ["vertical=industrial", "model=reference-tiny", "finetune=fast", "pipeline=teacher",
            "finetune.full.steps=1", "finetune.lora.train.steps=1", "data.train_size=16", "data.validation_size=8",
            "data.test_size=16", "score.general_size=8", "score.latency_repeats=3", "score.latency_warmup=1",
            f"run_dir={run_dir}"]
    done = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *args, "--fail-on-objectives"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode in (0, 3), done.stderr[-3000:]
    return run_dir, done


def test_a_teacher_at_the_floor_is_never_objectives_met_and_is_diagnosed(floor_teacher):
    run_dir, done = floor_teacher
    card = _card(run_dir)
    assert card["accuracy"]["teacher"] < card["floor"]["bar"]
    assert card["verdict"] is not True and done.returncode == 3  # --fail-on-objectives
    assert "objectives met" not in (run_dir / "scorecard.md").read_text()
    diagnosis = card["teacher_diagnosis"]
    assert diagnosis is not None and any("finetune.full.steps" in r for r in diagnosis["remedies"])
    assert any("finetune.lora.train.steps" in r for r in diagnosis["remedies"])
    assert "The teacher" in done.stderr and "finetune.full.steps" in done.stderr  # the console says so too
    assert "The teacher" in (run_dir / "scorecard.html").read_text()


def test_without_an_export_the_targets_fit_is_unknown_and_latency_is_not_a_roofline_below_the_measurement(
        floor_teacher):
    run_dir, _ = floor_teacher
    card = _card(run_dir)
    cpu_box = next(t for t in card["targets"] if t["name"] == "cpu-box")
    assert cpu_box["fits"] is False and cpu_box["status"] in ("unknown", "does not fit")
    assert "opset" in cpu_box["unknown"]
    latency = next(c for c in cpu_box["checks"] if c["name"] == "latency_p90")
    measured = card["latency"]["student"]["p90_ms"]  # through PyTorch on this CPU
    assert latency["estimated"] is True and latency["value"] == pytest.approx(measured, abs=1e-3)
    assert "did not serve this model here" in latency["note"]
    memory = next(c for c in cpu_box["checks"] if c["name"] == "memory")  # the process serving it here, a stand-in
    assert memory["estimated"] is True and "did not serve this model here" in memory["note"]
    assert memory["value"] * 1e9 >= card["memory"]["student"]["peak_rss_bytes"] - 1e5
    npu = next(t for t in card["targets"] if t["name"] == "edge-npu")
    roofline = next(c for c in npu["checks"] if c["name"] == "latency_p90")
    assert roofline["estimated"] and roofline["note"].startswith("roofline")
    if roofline["value"] * 10 <= measured:
        assert "below the p90" in roofline["note"]
    assert "fit unknown" in (run_dir / "scorecard.md").read_text()


def test_the_deployed_students_answers_are_each_rows_lone_answer(tiny_run):
    """score.runtime_batch_size=1: the scorecard's answers through the deployed runtime are what it answers each
    row alone (a dynamic-int8 artifact's answer can depend on the rows batched with it); PyTorch models answer in
    batches of score.batch_size. Checked by answering every test row alone again through the same artifact."""
    from dsvl_adapt.data.batches import BatchEncoder
    from dsvl_adapt.score.runners import open_runner
    from dsvl_adapt.serve.model import find_deployment

    card = json.loads((tiny_run / "scorecard.json").read_text())
    assert card["runtimes"]["onnxruntime-int8"]["answer_batch_size"] == 1
    assert card["runtimes"]["torch-fp32"]["answer_batch_size"] == 16
    assert "| answered in batches of |" in (tiny_run / "scorecard.md").read_text()
    deployment = find_deployment(tiny_run)
    runner = open_runner(deployment.model_dir, load_torch=None, threads=1)
    encoder = BatchEncoder(runner.processor, deployment.prompt())
    rows = deployment.rows("test", runner.processor.image_processor.size["height"])
    alone = [runner.answers(encoder, [item], batch_size=1, max_new_tokens=deployment.max_answer_tokens(),
                            label="alone")[0] for item in encoder.encode_all(rows)]
    lines = (tiny_run / "stages" / "score" / card["runtimes"]["onnxruntime-int8"]["predictions"]).read_text()
    assert [json.loads(line)["prediction"] for line in lines.splitlines()] == alone
