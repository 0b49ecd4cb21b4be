"""The memory a request adds over its loaded model (dsvl_adapt.score.memory), measured in a fresh process whose
peak is reset after loading: what a shorter prefill or a smaller batch saves, apart from the weights."""

from __future__ import annotations

import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak reset (/proc/self/clear_refs) is Linux's")
def test_a_larger_request_adds_more_memory_over_the_same_loaded_model(tiny_run, tmp_path):
    from dsvl_adapt.data.batches import BatchEncoder
    from dsvl_adapt.score.memory import measure_serving_memory
    from dsvl_adapt.score.runners import open_runner
    from dsvl_adapt.serve.model import find_deployment

    deployment = find_deployment(tiny_run)
    runner = open_runner(deployment.model_dir, load_torch=None, threads=1)
    encoder = BatchEncoder(runner.processor, deployment.prompt())
    items = encoder.encode_all(deployment.rows("test", runner.processor.image_processor.size["height"]))
    measured = {}
    for rows in (1, 96):
        batch = encoder.generation_batch([items[i % len(items)] for i in range(rows)])
        measured[rows] = measure_serving_memory(deployment.model_dir, batch, work_dir=tmp_path, max_new_tokens=1,
                                                eos_id=None, pad_id=None, threads=1)
    one, many = measured[1], measured[96]
    for memory in (one, many):
        assert not memory.error
        assert memory.loaded_rss_bytes <= memory.request_peak_rss_bytes <= memory.peak_rss_bytes
    # 96 rows of ~100 tokens through a 256-wide model: 58 MB against 3 MB for one row, measured
    assert many.request_rss_bytes > one.request_rss_bytes + 8 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")
def test_the_serving_process_peak_is_its_own_not_the_parents_at_the_spawn(tiny_run, tmp_path):
    """Linux carries a parent's resident size into a spawned child's ru_maxrss: a scoring process holding the
    teacher made every measured server look that large. The peak must be the child's own (VmHWM)."""
    import numpy as np

    from dsvl_adapt.data.batches import BatchEncoder
    from dsvl_adapt.machine import process_peak_rss_bytes
    from dsvl_adapt.score.memory import measure_serving_memory
    from dsvl_adapt.score.runners import open_runner
    from dsvl_adapt.serve.model import find_deployment

    deployment = find_deployment(tiny_run)
    runner = open_runner(deployment.model_dir, load_torch=None, threads=1)
    encoder = BatchEncoder(runner.processor, deployment.prompt())
    batch = encoder.generation_batch(encoder.encode_all(
        deployment.rows("test", runner.processor.image_processor.size["height"]))[:1])
    held = np.ones(3 * 2**30 // 8)  # this process holds 3 GiB more, touched, while the child runs
    assert process_peak_rss_bytes() > 3 * 2**30
    memory = measure_serving_memory(deployment.model_dir, batch, work_dir=tmp_path, max_new_tokens=1, eos_id=None,
                                    pad_id=None, threads=1)
    del held
    assert not memory.error
    # the child: an interpreter with torch and ONNX Runtime and the tiny model (~0.5 GB here), not 3 GiB
    assert memory.peak_rss_bytes < 1.5 * 2**30
    assert memory.baseline_rss_bytes <= memory.peak_rss_bytes
