"""The server as two Ray Serve replicas on a local Ray instance (slow: Ray starts in tens of seconds)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_local_replicas_answer_through_rays_proxy(tiny_run: Path, tmp_path: Path):
    ray = pytest.importorskip("ray", reason='pip install "dsvl-adapt[serve-ray]"')
    openai = pytest.importorskip("openai")
    from PIL import Image
    from ray import serve
    from serve_helpers import data_url

    from dsvl_adapt.serve.monitor import read_request_log
    from dsvl_adapt.serve.ray import DEPLOYMENT, deployment

    port = _port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(tiny_run, replicas=2, num_cpus=0.5, threads=1, log_dir=tmp_path), route_prefix="/")
        status = serve.status().applications["default"].deployments[DEPLOYMENT]
        assert status.replica_states.get("RUNNING") == 2
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=2)
        name = client.models.list().data[0].id
        for i in range(24):
            image = Image.new("RGB", (32, 32), (i * 10, 90, 90))
            answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": "defect?"}]}])
            assert answer.choices[0].message.role == "assistant"
        logs = sorted(tmp_path.glob("replica-*"))
        assert len(logs) == 2
        served = [len([r for r in read_request_log(d) if r["status"] == 200]) for d in logs]
        assert sum(served) == 24 and all(n > 0 for n in served), served  # both replicas answered
    finally:
        serve.shutdown()
        ray.shutdown()
