"""Serving benchmark: the official openai client against `dsvl-adapt serve` on loopback (latency, batching, cache,
burst).

Servers run as `dsvl-adapt serve` subprocesses on 127.0.0.1 over a finished run's deployed student (by default the
finance vertical's): A batches dynamically (max batch 8, no cache), B serves one request at a time (max batch 1, no
cache), C batches with the response cache on and a small queue. Requests are the run's test rows, asked exactly as the
scorecard asked them (system text, image, question). Printed as one JSON object:

* ``latency``: N requests at concurrency 8 on A: errors, end-to-end p50/p90/p99 as the client saw them, and the p90
  against the finance target's 200 ms;
* ``batching``: throughput of A over B, in rotating paired rounds, as a ratio with its 95% interval and the >= 2x
  target (``benchmarks/_stats.py``);
* ``cache``: every row asked once on C (misses), then every row again (hits): per row, miss time / hit time, with its
  interval, against 20x;
  beside it the client's floors (the same client's ``GET /v1/models``, and its ``chat.completions.create`` of the
  same rows on an endpoint that does no work) and the ratio a hit costing only that floor would reach;
  ``cache.http``: the same measure on as many other rows posted as the same JSON with the HTTP library the openai
  client is built on (httpx), without the client's own per-call work;
* ``burst``: 4x C's queue size sent at once: 200s, 429s (each with Retry-After), errors, and a good request after.

Bounded: every phase has a fixed request count and timeouts; the servers are stopped at the end.
``--quick``: a tiny finance run made in --work (finetune=fast), 40 requests, 3 rounds - figures not worth quoting.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stats import paired_ratio, round_orders, target_check  # noqa: E402

from dsvl_adapt.machine import cpu_description  # noqa: E402

QUICK_RUN = ["vertical=finance", "model=reference-tiny", "finetune=fast", "distill=fast", "data.train_size=48",
             "data.validation_size=8", "data.test_size=16", "score.general_size=0", "score.latency_repeats=3",
             "score.latency_warmup=1"]
CONCURRENCY = 8
# the cache phase's answer budget: one no other phase sends, so that its first asks are misses
CACHE_MAX_TOKENS = 31


def log(message: str) -> None:
    print(f"[serving] {message}", file=sys.stderr, flush=True)


def ensure_run(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    run_dir = Path(args.work) / ("finance-tiny" if args.quick else "finance")
    if not (run_dir / "scorecard.json").is_file():
        overrides = QUICK_RUN if args.quick else ["vertical=finance"]
        log(f"making the run {run_dir} ({' '.join(overrides)})")
        subprocess.run([sys.executable, "-m", "dsvl_adapt.cli", "run", *overrides, f"run_dir={run_dir}"], check=True,
                       timeout=3600)
    return run_dir


class LoopbackProcess:
    """An HTTP server in a subprocess on a free loopback port (``argv(port)`` starts it), ready when ``/ready``
    answers 200."""

    def __init__(self, argv: Callable[[int], list[str]]) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(argv(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not become ready in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class ServerProcess(LoopbackProcess):
    """`dsvl-adapt serve` in a subprocess, on a free loopback port."""

    def __init__(self, run_dir: Path, log_dir: Path, *flags: str) -> None:
        super().__init__(lambda port: [sys.executable, "-m", "dsvl_adapt.cli", "serve", str(run_dir), "--port",
                                       str(port), "--log-dir", str(log_dir), *flags])


# A chat-completions endpoint that does no work (FastAPI on uvicorn, as the server; it reads the body and returns a
# fixed completion): what the openai client's create() costs on its own, the floor under any cache hit through it.
NO_WORK_APP = """
import sys
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
app = FastAPI()
ANSWER = {"id": "chatcmpl-floor", "object": "chat.completion", "created": 0, "model": "floor",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "0"}, "finish_reason": "stop",
                       "logprobs": None}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
@app.post("/v1/chat/completions")
async def chat(request: Request):
    await request.body()
    return JSONResponse(ANSWER)
@app.get("/ready")
async def ready():
    return {"ready": True}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


class NoWorkEndpoint(LoopbackProcess):
    """:data:`NO_WORK_APP` in a subprocess, on a free loopback port."""

    def __init__(self) -> None:
        super().__init__(lambda port: [sys.executable, "-c", NO_WORK_APP, str(port)])


def chat_floor(messages: list[list[dict[str, Any]]], rows: range, repeats: int = 2) -> list[float]:
    """Milliseconds per ``chat.completions.create`` of the given rows on :class:`NoWorkEndpoint`, same client settings
    as the cache phase."""
    from openai import OpenAI

    endpoint = NoWorkEndpoint()
    try:
        endpoint.wait_ready(60)
        client = OpenAI(base_url=f"{endpoint.url}/v1", api_key="bench", max_retries=0, timeout=120)
        client.chat.completions.create(model="floor", messages=messages[rows[0]], max_tokens=CACHE_MAX_TOKENS)
        times = []
        for _ in range(repeats):
            for i in rows:
                started = time.perf_counter()
                client.chat.completions.create(model="floor", messages=messages[i], max_tokens=CACHE_MAX_TOKENS)
                times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        endpoint.stop()


def requests_for(run_dir: Path) -> tuple[str, list[list[dict[str, Any]]]]:
    """The served model's name and the run's test rows as OpenAI messages (as the scorecard asked them)."""
    from dsvl_adapt.data.prompting import conversation
    from dsvl_adapt.serve.model import find_deployment

    deployment = find_deployment(run_dir)
    size = json.loads((deployment.model_dir / "preprocessor_config.json").read_text())["size"]["height"] \
        if (deployment.model_dir / "preprocessor_config.json").is_file() else None
    if size is None:
        processor = json.loads((deployment.model_dir / "processor_config.json").read_text())
        size = processor["image_processor"]["size"]["height"]
    prompt = deployment.prompt()
    messages = []
    for row in deployment.rows("test", size):
        parts = []
        for message in conversation(prompt, row):
            content = []
            for part in message["content"]:
                if part["type"] == "image":
                    buffer = io.BytesIO()
                    part["image"].save(buffer, format="PNG")
                    content.append({"type": "image_url", "image_url": {
                        "url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}})
                else:
                    content.append(part)
            parts.append({"role": message["role"], "content": content})
        messages.append(parts)
    return f"dsvl-{deployment.vertical}", messages


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(values, q)), 2)


def run_load(url: str, name: str, messages: list[list[dict[str, Any]]], count: int) -> tuple[list[float], int, float]:
    """``count`` requests at concurrency 8 (rows cycled): per-request ms, errors, wall ms."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=120)
    times: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            client.chat.completions.create(model=name, messages=messages[i % len(messages)])
            with lock:
                times.append((time.perf_counter() - started) * 1000)
        except Exception as exc:  # noqa: BLE001 - counted, and the first few shown
            with lock:
                errors += 1
                if errors <= 3:
                    log(f"error: {exc!r}")

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(count)))
    return times, errors, (time.perf_counter() - started) * 1000


def model_batching(run_dir: Path, rounds: int, seed: int) -> dict[str, Any]:
    """The same comparison without HTTP: 8 test rows as one batch vs one by one through the served model's
    ``generate`` (what batching saves in the model itself, apart from per-request serving overhead), with the
    median split of each configuration's time into prefill (image + prompt) and decode steps, and its answer tokens:
    batching pays where decoding is memory-bound, far less where short answers leave the time in prefill."""
    from dsvl_adapt.data.prompting import conversation
    from dsvl_adapt.runtimes.contract import GenerationSettings
    from dsvl_adapt.serve.model import ServedModel, find_deployment

    deployment = find_deployment(run_dir)
    model = ServedModel(deployment.model_dir)
    prompt = deployment.prompt()
    items = [model.encode(conversation(prompt, row)) for row in deployment.rows("test", model.image_size)[:CONCURRENCY]]
    settings = GenerationSettings(max_new_tokens=deployment.max_answer_tokens() or 16)
    times: dict[str, list[float]] = {"batched": [], "one-at-a-time": []}
    # where each configuration's time goes: prefill (image + prompt), decode steps, answer tokens (per round)
    split: dict[str, dict[str, list[float]]] = {c: {"prefill_ms": [], "decode_ms": [], "answer_tokens": []}
                                                for c in times}
    model.generate(items, [settings] * len(items))  # warm-up
    for order in round_orders(list(times), rounds, seed=seed):
        for config in order:
            started = time.perf_counter()
            if config == "batched":
                calls = [model.generate(items, [settings] * len(items))]
            else:
                calls = [model.generate([item], [settings]) for item in items]
            times[config].append((time.perf_counter() - started) * 1000)
            split[config]["prefill_ms"].append(sum(rows[0].prefill_s for rows in calls) * 1000)
            split[config]["decode_ms"].append(sum(rows[0].decode_s for rows in calls) * 1000)
            split[config]["answer_tokens"].append(sum(len(row.token_ids) for rows in calls for row in rows))
    ratio = paired_ratio(times["one-at-a-time"], times["batched"])
    return {**ratio.to_json(), "rows": len(items), "runtime": model.label,
            "split_median": {c: {k: round(statistics.median(v), 2) for k, v in parts.items()}
                             for c, parts in split.items()},
            "target_check": target_check(ratio.ratio, ratio.low, ratio.high, 2.0)}


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        error.read()
        return error.code, dict(error.headers)
    except (urllib.error.URLError, OSError):
        return 0, {}


def _http_module() -> Any:
    """The HTTP library the openai client is built on: ``httpx``, or its fork ``httpx2`` where that is what the
    installed openai imports."""
    try:
        import httpx
    except ImportError:
        import httpx2 as httpx
    return httpx


def _http_client(url: str) -> Any:
    return _http_module().Client(base_url=url, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", help="a finished run (default: a finance run made in --work)")
    ap.add_argument("--work", default="runs/bench-serving", help="where runs and server logs go")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds of batched vs one-at-a-time")
    ap.add_argument("--round-requests", type=int, default=64)
    ap.add_argument("--cache-rows", type=int, default=20)
    ap.add_argument("--queue", type=int, default=8, help="server C's queue size (the burst is 4x)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a tiny finance run, 40 requests, 3 rounds of 16")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.rounds, args.round_requests, args.cache_rows = 40, 3, 16, 8
    os.environ.setdefault("DSVL_ADAPT_NO_PROGRESS", "1")
    run_dir = ensure_run(args)
    name, messages = requests_for(run_dir)
    logs = Path(args.work) / "logs"
    servers = {"batched": ServerProcess(run_dir, logs / "batched", "--max-batch", "8", "--cache-entries", "0"),
               "one-at-a-time": ServerProcess(run_dir, logs / "single", "--max-batch", "1", "--cache-entries", "0"),
               "cached": ServerProcess(run_dir, logs / "cached", "--max-batch", "8", "--max-queue", str(args.queue))}
    result: dict[str, Any] = {"run_dir": str(run_dir), "model": name, "rows": len(messages),
                              "concurrency": CONCURRENCY, **cpu_description()}
    try:
        for server in servers.values():
            server.wait_ready()
        log("warm-up")
        for server in servers.values():
            run_load(server.url, name, messages, CONCURRENCY)
        log(f"latency: {args.requests} requests at concurrency {CONCURRENCY}")
        times, errors, wall = run_load(servers["batched"].url, name, messages, args.requests)
        p90 = percentile(times, 90) if times else None
        result["latency"] = {"requests": args.requests, "errors": errors, "p50_ms": percentile(times, 50),
                             "p90_ms": p90, "p99_ms": percentile(times, 99),
                             "throughput_rps": round(len(times) / (wall / 1000), 2),
                             "p90_target_ms": 200, "p90_target_met": p90 is not None and p90 <= 200}
        log(f"batching: {args.rounds} rounds of {args.round_requests} requests, rotating order")
        walls: dict[str, list[float]] = {"batched": [], "one-at-a-time": []}
        for order in round_orders(list(walls), args.rounds, seed=args.seed):
            for config in order:
                _, errs, ms = run_load(servers[config].url, name, messages, args.round_requests)
                walls[config].append(ms if not errs else float("nan"))
        ratio = paired_ratio(walls["one-at-a-time"], walls["batched"])
        result["batching"] = {**ratio.to_json(), "target": ">= 2x",
                              "target_check": target_check(ratio.ratio, ratio.low, ratio.high, 2.0),
                              "wall_ms": {k: [round(v, 1) for v in vs] for k, vs in walls.items()}}
        result["batching"]["model_only"] = model_batching(run_dir, args.rounds, args.seed)
        log(f"cache: {args.cache_rows} rows asked once (misses), then again (hits)")
        from openai import OpenAI

        client = OpenAI(base_url=f"{servers['cached'].url}/v1", api_key="bench", max_retries=0, timeout=120)
        miss, hit = [], []
        phase_start = time.time()
        rows = range(min(args.cache_rows, len(messages)))
        # every row once (misses), then every row again (hits): a hit repeats a request answered earlier, not the
        # one answered a millisecond before, whose monitoring (drift tests, after its response) would still be
        # running beside it
        for bucket in (miss, hit):
            for i in rows:
                started = time.perf_counter()
                answer = client.chat.completions.create(model=name, messages=messages[i], max_tokens=CACHE_MAX_TOKENS)
                bucket.append((time.perf_counter() - started) * 1000)
                assert answer.model_extra["dsvl"]["cache_hit"] is (bucket is hit)
        speedup = paired_ratio(miss, hit)
        # what no cache removes: the same client's round trip to an endpoint that does no work (GET /v1/models)
        floor = []
        for _ in range(2 * len(hit)):
            started = time.perf_counter()
            client.models.list()
            floor.append((time.perf_counter() - started) * 1000)
        # the same on other rows, the same JSON posted with the HTTP library under the openai client
        http_rows = range(len(rows), min(2 * len(rows), len(messages)))
        http_miss, http_hit = [], []
        with _http_client(servers["cached"].url) as http:
            for bucket in (http_miss, http_hit):
                for i in http_rows:
                    body = {"model": name, "messages": messages[i], "max_tokens": CACHE_MAX_TOKENS}
                    started = time.perf_counter()
                    response = http.post("/v1/chat/completions", json=body)
                    bucket.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200 and response.json()["dsvl"]["cache_hit"] is (bucket is http_hit)
        http_speedup = paired_ratio(http_miss, http_hit) if http_hit else None
        create_floor = chat_floor(messages, rows)
        from dsvl_adapt.serve.monitor import read_request_log

        time.sleep(1)  # the server logs a request just after answering it
        inside = [r for r in read_request_log(logs / "cached") if r.get("status") == 200 and r["time"] >= phase_start]
        inside_ms = {kind: [r["latency_ms"]["total"] for r in inside if r["cache_hit"] is (kind == "hit")]
                     for kind in ("miss", "hit")}
        result["cache"] = {**speedup.to_json(), "miss_p50_ms": percentile(miss, 50), "hit_p50_ms": percentile(hit, 50),
                           "in_server_p50_ms": {k: percentile(v, 50) if v else None for k, v in inside_ms.items()},
                           "client_floor_p50_ms": percentile(floor, 50),
                           "client_floor_method": "the same openai client's GET /v1/models (no model, no cache)",
                           "ratio_bound_at_floor": round(percentile(miss, 50) / percentile(floor, 50), 1),
                           "client_chat_floor_p50_ms": percentile(create_floor, 50),
                           "client_chat_floor_method": "the same client's chat.completions.create with the same rows "
                                                       "on an endpoint that does no work (FastAPI on uvicorn, the "
                                                       "body read, a fixed answer returned)",
                           "ratio_bound_at_chat_floor": round(percentile(miss, 50) / percentile(create_floor, 50), 1),
                           "target": ">= 20x", "target_check": target_check(speedup.ratio, speedup.low, speedup.high,
                                                                             20.0)}
        if http_speedup is not None:
            result["cache"]["http"] = {
                **http_speedup.to_json(), "rows": len(http_hit), "miss_p50_ms": percentile(http_miss, 50),
                "hit_p50_ms": percentile(http_hit, 50),
                "client": f"{_http_module().__name__} {_http_module().__version__} (the openai client's HTTP library)",
                "target_check": target_check(http_speedup.ratio, http_speedup.low, http_speedup.high, 20.0)}
        log(f"burst: {4 * args.queue} requests at once on a queue of {args.queue}")
        burst = []
        from PIL import Image

        def distinct(i: int) -> dict[str, Any]:
            buffer = io.BytesIO()
            Image.new("RGB", (64, 64), (i * 7 % 256, (i * 13) % 256, 90)).save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            return {"model": name, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Total?"}]}]}

        bodies = [distinct(i) for i in range(4 * args.queue)]
        with ThreadPoolExecutor(4 * args.queue) as pool:
            burst = list(pool.map(lambda b: post(servers["cached"].url, b), bodies))
        codes = [code for code, _ in burst]
        result["burst"] = {"sent": len(burst), "answered": codes.count(200), "refused_429": codes.count(429),
                           "retry_after_on_every_429": all("retry-after" in {k.lower() for k in h}
                                                           for c, h in burst if c == 429),
                           "other": sorted(c for c in codes if c not in (200, 429)),
                           "alive_after": post(servers["cached"].url, distinct(10_000))[0] == 200,
                           "server_running": servers["cached"].process.poll() is None}
    finally:
        for server in servers.values():
            server.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
