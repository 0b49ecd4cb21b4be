"""The server's parts on their own: cost grades and the batcher, the cache tiers, drift, repetition flags."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from dsvl_adapt.runtimes.contract import GenerationSettings
from dsvl_adapt.serve.batching import Job, QueueFull, Scheduler, grade_cost
from dsvl_adapt.serve.cache import ResponseCache, cache_key
from dsvl_adapt.serve.drift import STATISTICS, DriftMonitor, DriftReference, image_statistics
from dsvl_adapt.serve.monitor import is_repetitive


def test_cost_grades_order_requests_by_image_prompt_and_answer_size():
    cheap = grade_cost(pixels=32 * 32, prompt_tokens=60, max_new_tokens=8)
    long_answer = grade_cost(pixels=32 * 32, prompt_tokens=60, max_new_tokens=100)
    huge_image = grade_cost(pixels=4000 * 4000, prompt_tokens=60, max_new_tokens=8)
    assert cheap.name == "interactive" and long_answer.priority > cheap.priority
    assert huge_image.name == "bulk" and huge_image.cost > long_answer.cost > cheap.cost


def test_the_scheduler_batches_waiting_requests_puts_cheap_ones_first_and_refuses_a_full_queue():
    batches: list[list[str]] = []
    release = threading.Event()

    def run(jobs: list[Job]) -> None:
        release.wait(5)
        batches.append([j.payload for j in jobs])
        for job in jobs:
            job.future.set_result(job.payload.upper())

    scheduler = Scheduler(run, max_batch=3, max_wait_s=0.2, max_queue=4, aging_s=100)
    cheap, costly = grade_cost(pixels=1, prompt_tokens=1, max_new_tokens=1), grade_cost(
        pixels=10**8, prompt_tokens=1, max_new_tokens=1)
    futures = [scheduler.submit(Job(payload=name, grade=grade))
               for name, grade in [("b1", costly), ("c1", cheap), ("c2", cheap), ("b2", costly)]]
    with pytest.raises(QueueFull) as full:
        scheduler.submit(Job(payload="late", grade=cheap))
    assert full.value.retry_after_s >= 1 and full.value.depth == 4
    scheduler.start()
    release.set()
    assert [f.result(5) for f in futures] == ["B1", "C1", "C2", "B2"]
    scheduler.stop()
    assert batches[0] == ["c1", "c2", "b1"]  # cheap first; the batch is full at 3
    assert batches[1] == ["b2"]


def test_a_failing_batch_fails_its_requests_and_the_scheduler_keeps_serving():
    calls = []

    def run(jobs: list[Job]) -> None:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("runtime fault")
        for job in jobs:
            job.future.set_result("ok")

    scheduler = Scheduler(run, max_batch=2, max_wait_s=0.0, max_queue=8)
    scheduler.start()
    grade = grade_cost(pixels=1, prompt_tokens=1, max_new_tokens=1)
    first = scheduler.submit(Job(payload=1, grade=grade))
    with pytest.raises(RuntimeError):
        first.result(5)
    assert scheduler.submit(Job(payload=2, grade=grade)).result(5) == "ok"
    scheduler.stop()


def test_the_cache_key_covers_image_prompt_settings_and_model():
    base = dict(model_id="m", image_sha256="a" * 64, prompt=[["user", ["hi"]]],
                settings=GenerationSettings(max_new_tokens=8))
    key = cache_key(**base)
    assert key == cache_key(**dict(base))
    for change in (dict(model_id="n"), dict(image_sha256="b" * 64), dict(prompt=[["user", ["hello"]]]),
                   dict(settings=GenerationSettings(max_new_tokens=9))):
        assert cache_key(**{**base, **change}) != key


def test_the_cache_evicts_least_recently_used_and_its_disk_tier_survives_a_restart(tmp_path):
    cache = ResponseCache(max_entries=2, disk_dir=tmp_path / "c", disk_max_bytes=10_000)
    for name in ("a", "b"):
        cache.put(name * 64, {"text": name})
    assert cache.get("a" * 64) == {"text": "a"}  # a is now the most recent
    cache.put("c" * 64, {"text": "c"})
    assert len(cache) == 2 and "b" * 64 not in cache._memory
    restarted = ResponseCache(max_entries=2, disk_dir=tmp_path / "c")
    assert restarted.get("b" * 64) == {"text": "b"} and restarted.hits == 1
    assert restarted.get("z" * 64) is None and restarted.misses == 1
    small = ResponseCache(max_entries=0, disk_dir=tmp_path / "d", disk_max_bytes=100)
    for i in range(10):
        small.put(f"{i:064d}", {"text": "x" * 30})
    assert sum(p.stat().st_size for p in (tmp_path / "d").glob("*/*.json")) <= 100


def _images(seed: int, count: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def test_drift_is_unknown_until_enough_requests_then_flags_darkened_images_only():
    reference = DriftReference.from_images(_images(0, 40))
    same = DriftMonitor(reference, window=50, min_requests=20)
    results = [same.observe(image) for image in _images(1, 30)]
    assert results[0].drifted is None and "unknown" in results[0].reason
    assert results[-1].drifted is False
    dark = DriftMonitor(reference, window=50, min_requests=20)
    results = [dark.observe(ImageEnhance.Brightness(image).enhance(0.3)) for image in _images(2, 20)]
    assert results[-1].drifted is True and "brightness" in results[-1].reason


def test_the_window_tests_run_every_test_every_requests_and_the_requests_between_carry_the_verdict():
    reference = DriftReference.from_images(_images(0, 40))
    every = DriftMonitor(reference, window=50, min_requests=20, test_every=1)
    sparse = DriftMonitor(reference, window=50, min_requests=20, test_every=5)
    images = _images(1, 20) + [ImageEnhance.Brightness(image).enhance(0.3) for image in _images(2, 30)]
    a = [every.observe(image) for image in images]
    b = [sparse.observe(image) for image in images]
    assert [o.tested for o in b] == [False] * 19 + [i % 5 == 0 for i in range(31)]
    assert all(o.tested for o in a[19:])
    for i in range(19, 50):  # a sparse observation holds the verdict of its last test, which ran on the same window
        last = 19 + (i - 19) // 5 * 5
        assert (b[i].drifted, b[i].ks_min_p, b[i].reason) == (a[last].drifted, a[last].ks_min_p, a[last].reason)
        assert b[i].statistics == a[i].statistics and b[i].distance_ratio == a[i].distance_ratio
    first = next(i for i, o in enumerate(b) if o.drifted)
    assert first - next(i for i, o in enumerate(a) if o.drifted) < 5  # flagged at most 4 requests later
    sparse.reset()
    assert sparse.observe(images[0]).drifted is None
    with pytest.raises(ValueError, match="test_every"):
        DriftMonitor(reference, test_every=0)


def test_the_window_test_is_scipys_ks_test_of_each_statistic_against_the_reference():
    from scipy.stats import ks_2samp

    reference = DriftReference.from_images(_images(0, 40))
    monitor = DriftMonitor(reference, window=50, min_requests=20)
    images = [ImageEnhance.Brightness(image).enhance(0.8) for image in _images(3, 25)]
    observed = [monitor.observe(image) for image in images][-1]
    recent = np.stack([image_statistics(image) for image in images])
    expected = min(ks_2samp(reference.statistics[:, k], recent[:, k]).pvalue for k in range(len(STATISTICS)))
    assert observed.ks_min_p == pytest.approx(round(expected, 6), abs=1e-6)


def test_scipy_is_loaded_with_the_drift_monitor_not_at_a_requests_window_test(monkeypatch):
    """Importing scipy.stats at the first window test held every thread of the server for ~0.6 s mid-request."""
    reference = DriftReference.from_images(_images(0, 40))
    loaded = DriftMonitor(reference, window=50, min_requests=20)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # from here on, importing scipy.stats fails
    assert [loaded.observe(image) for image in _images(1, 20)][-1].drifted is False  # tested with what it loaded
    without = DriftMonitor(reference, window=50, min_requests=20)  # built where SciPy cannot be imported
    last = [without.observe(image) for image in _images(1, 20)][-1]
    assert last.drifted is None and "scipy is not installed" in last.reason  # unknown, never False


def test_a_serving_process_moves_what_is_loaded_out_of_the_collectors_sight():
    import gc

    from dsvl_adapt.serve import settle_heap

    before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_repetitive_answers_are_flagged():
    assert is_repetitive([5, 5, 5, 5, 5, 5])
    assert is_repetitive([1, 2, 3, 4, 3, 4, 3, 4])
    assert not is_repetitive([1, 2, 3, 4, 5, 6, 7])
    assert not is_repetitive([7, 7])  # too short to say


def test_serving_commands_refuse_a_folder_that_is_not_a_run_or_model(tmp_path, capsys):
    pytest.importorskip("fastapi")
    from dsvl_adapt.cli import main

    assert main(["serve", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    started = time.monotonic()
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert time.monotonic() - started < 30


def test_serve_refuses_an_unfinished_run_and_a_broken_manifest_naming_the_fix(tmp_path):
    import json

    from dsvl_adapt.errors import ModelLoadError
    from dsvl_adapt.serve.model import find_deployment

    run = tmp_path / "run"
    (run / "stages" / "load" / "base").mkdir(parents=True)
    (run / "stages" / "load" / "stage.json").write_text(json.dumps(
        {"stage": "load", "paths": "run-relative", "artifacts": {"student": "stages/load/base"}}))
    (run / "manifest.json").write_text(json.dumps({"config": {"pipeline": {"stages": ["load", "finetune"]}}}))
    with pytest.raises(ModelLoadError, match="has not finished: finetune still to run"):
        find_deployment(run)  # the base model the load stage recorded is not served in its place
    for text, kind in (("{", "JSONDecodeError"), ("{}", "KeyError")):
        (run / "manifest.json").write_text(text)
        with pytest.raises(ModelLoadError, match=f"manifest.json is not a run manifest \\({kind}"):
            find_deployment(run)
    with pytest.raises(ModelLoadError, match="does not exist"):
        find_deployment(tmp_path / "missing")


def test_serve_names_a_busy_port_before_loading_the_model(tiny_run, tmp_path, capsys):
    pytest.importorskip("fastapi")
    import socket

    from dsvl_adapt.cli import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        started = time.monotonic()
        assert main(["serve", str(tiny_run), "--port", str(port), "--log-dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert not (tmp_path / "never").exists() and time.monotonic() - started < 30


def test_a_body_without_content_length_is_read_only_up_to_the_limit():
    pytest.importorskip("fastapi")
    import asyncio

    from starlette.requests import Request

    from dsvl_adapt.serve.app import _read_body
    from dsvl_adapt.serve.limits import ServeError

    sent = []

    async def receive() -> dict:
        sent.append(1)
        return {"type": "http.request", "body": b"a" * 1024, "more_body": len(sent) < 100}

    request = Request({"type": "http", "method": "POST", "headers": [(b"transfer-encoding", b"chunked")]}, receive)
    with pytest.raises(ServeError) as refused:
        asyncio.run(_read_body(request, 10 * 1024))
    assert refused.value.status == 413 and "above the limit of 10,240 bytes" in refused.value.message
    assert len(sent) == 11  # it stopped at the chunk that passed the limit, not at the body's end
    sent.clear()
    small = Request({"type": "http", "method": "POST", "headers": []}, receive)
    sent.extend([1] * 97)  # three chunks left
    assert asyncio.run(_read_body(small, 10 * 1024)) == b"a" * 3072


def test_the_request_log_rotates_and_is_read_back_whole_in_order(tmp_path):
    pytest.importorskip("prometheus_client")
    from dsvl_adapt.serve.monitor import Monitor, MonitorSettings, read_request_log

    monitor = Monitor(MonitorSettings(log_dir=tmp_path, max_log_bytes=1500, log_backups=20))
    for i in range(60):
        monitor.log_refusal(400, f"case-{i}", "x" * 40)
    monitor.close()
    assert len(list(tmp_path.glob("requests.jsonl.*"))) >= 2  # rotated
    assert [r["error"] for r in read_request_log(tmp_path)] == [f"case-{i}" for i in range(60)]
