"""`dsvl-adapt serve RUN_DIR` as a user starts it, over a run whose student answers differently from row to row (150
steps of full fine-tuning of reference-tiny, then the default quantize + export): the official openai client gets the
scorecard's prediction for every test row, streamed or not. Slow: the run takes minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRAINED = ["vertical=industrial", "model=reference-tiny", "data.train_size=48", "data.validation_size=8",
           "data.test_size=12", "score.latency_repeats=3", "score.latency_warmup=1", "score.general_size=0",
           "finetune=fast", "distill=fast", "pipeline.stages=[load,finetune,prune.structural,distill,quantize,export,"
           "score]", "finetune.full_when=always", "finetune.full.steps=150", "finetune.full.lr=3e-3",
           "finetune.full.eval_every=1000", "finetune.full.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *TRAINED, f"run_dir={run_dir}"],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_the_cli_server_answers_every_test_row_as_the_scorecard_did(trained_run: Path, tmp_path: Path):
    openai = pytest.importorskip("openai")
    from serve_helpers import free_port, openai_messages, scorecard_predictions

    from dsvl_adapt.data.prompting import conversation
    from dsvl_adapt.serve.model import find_deployment

    deployment = find_deployment(trained_run)
    predictions = scorecard_predictions(trained_run, deployment.model_dir)
    assert len({p["prediction"] for p in predictions}) > 1  # the student answers differently from row to row
    port = free_port()
    env = {**os.environ, "DSVL_TOKEN": "t0ken"}
    server = subprocess.Popen([sys.executable, "-m", "dsvl_adapt.cli", "serve", str(trained_run), "--port", str(port),
                               "--token-env", "DSVL_TOKEN", "--log-dir", str(tmp_path / "log")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "not ready in time"
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="t0ken", max_retries=0)
        rows = deployment.rows("test", 32)
        prompt = deployment.prompt()
        for row, expected in zip(rows, predictions):
            assert row.id == expected["id"]
            messages = openai_messages(conversation(prompt, row))
            answer = client.chat.completions.create(model="dsvl-industrial", messages=messages)
            assert answer.choices[0].message.content == expected["prediction"], row.id
            streamed = client.chat.completions.create(model="dsvl-industrial", messages=messages, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            assert text == expected["prediction"], row.id
    finally:
        server.terminate()
        server.wait(30)
