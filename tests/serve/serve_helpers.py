"""What the serving tests share: a server in a thread, the run's rows as OpenAI messages, raw HTTP calls."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(server: Any) -> Iterator[str]:
    """Serve ``server`` (a :class:`dsvl_adapt.serve.app.Server`) on uvicorn in a thread; yields the base URL."""
    import uvicorn

    from dsvl_adapt.serve.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(30)


def data_url(image: Any, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """transformers-format chat messages (PIL images inline) as OpenAI messages (images as PNG data URLs)."""
    out = []
    for message in messages:
        parts = [{"type": "image_url", "image_url": {"url": data_url(p["image"])}} if p["type"] == "image" else p
                 for p in message["content"]]
        out.append({"role": message["role"], "content": parts})
    return out


def post(url: str, body: bytes | str | dict, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of a raw request; never raises on an HTTP error status."""
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status, head = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, head = error.read(), error.code, dict(error.headers)
    try:
        return status, json.loads(raw), head
    except json.JSONDecodeError:
        return status, {"text": raw.decode(errors="replace")}, head


def scorecard_predictions(run_dir: Path, model_dir: Path) -> list[dict[str, Any]]:
    """The scorecard's predictions for the artifact in ``model_dir`` (what the score stage answered through it)."""
    card = json.loads((run_dir / "stages" / "score" / "scorecard.json").read_text())
    entry = next(v for v in card["runtimes"].values() if Path(v["path"]) == model_dir)
    lines = (run_dir / "stages" / "score" / entry["predictions"]).read_text().splitlines()
    return [json.loads(line) for line in lines]


def answered_records(log_dir: Path, at_least: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The answered requests of a server's log, once it holds ``at_least`` of them (the monitor records a request
    just after its response is sent)."""
    from dsvl_adapt.serve.monitor import read_request_log

    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in read_request_log(log_dir) if r["status"] == 200]
        if len(records) >= at_least or time.monotonic() > deadline:
            return records
        time.sleep(0.02)
