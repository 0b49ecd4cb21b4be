"""The server over the shared tiny run's deployed artifact (ONNX Runtime int8), through the official openai client
and raw HTTP: the scorecard's answers, streaming, the bad-input catalogue, back-pressure, the cache, the monitor."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='serving needs pip install "dsvl-adapt[serve]"')
openai = pytest.importorskip("openai", reason="the tests call the server with the official openai client")

from PIL import Image, ImageEnhance  # noqa: E402

from dsvl_adapt.data.prompting import conversation  # noqa: E402

from serve_helpers import answered_records, data_url, openai_messages, post, running, scorecard_predictions  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def built(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    from dsvl_adapt.serve import build_server
    from dsvl_adapt.serve.app import ServeOptions

    log_dir = tmp_path_factory.mktemp("serve-log")
    server = build_server(tiny_run, log_dir=log_dir, options=ServeOptions(token=TOKEN, max_wait_ms=5))
    return server, log_dir


@pytest.fixture(scope="module")
def url(built):
    with running(built[0]) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def test_rows(built):
    from dsvl_adapt.serve.model import find_deployment

    server = built[0]
    deployment = find_deployment(_run_dir(server))
    return deployment.rows("test", server.model.image_size), deployment.prompt(), deployment


def _run_dir(server) -> Path:
    return Path(json.loads((server.monitor.log_dir / "server.json").read_text())["run_dir"])


def test_the_openai_client_gets_the_scorecards_prediction_for_each_row(built, client, test_rows):
    server, _ = built
    rows, prompt, deployment = test_rows
    assert server.model.directory == deployment.model_dir  # the deployed artifact, not the PyTorch student
    assert server.model.runtime == "onnxruntime"
    predictions = scorecard_predictions(_run_dir(server), deployment.model_dir)
    for row, expected in list(zip(rows, predictions))[:4]:
        assert row.id == expected["id"]
        answer = client.chat.completions.create(model=server.model.name,
                                                messages=openai_messages(conversation(prompt, row)))
        assert answer.choices[0].message.content == expected["prediction"]
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert answer.usage.prompt_tokens > 0


def test_streaming_sends_the_same_answer_in_server_sent_events(built, client, test_rows):
    rows, prompt, _ = test_rows
    messages = openai_messages(conversation(prompt, rows[5]))
    whole = client.chat.completions.create(model=built[0].model.name, messages=messages, max_tokens=6)
    chunks = list(client.chat.completions.create(model=built[0].model.name, messages=messages, max_tokens=6,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_health_ready_models_and_metrics(url, client, built):
    assert post(f"{url}/health", b"", method="GET")[0] == 200
    status, body, _ = post(f"{url}/ready", b"", method="GET")
    assert status == 200 and body["ready"] is True and body["runtime"].startswith("onnxruntime")
    assert [m.id for m in client.models.list().data] == [built[0].model.name]
    assert post(f"{url}/metrics", b"", method="GET")[0] == 401  # the token guards metrics too
    status, body, headers = post(f"{url}/metrics", b"", {"Authorization": f"Bearer {TOKEN}"}, method="GET")
    assert status == 200 and "dsvl_requests_total" in body["text"] and "dsvl_request_latency_seconds" in body["text"]


def test_a_repeated_request_is_answered_from_the_cache(built, client, test_rows):
    server, _ = built
    rows, prompt, _ = test_rows
    messages = openai_messages(conversation(prompt, rows[7]))
    first = client.chat.completions.create(model=server.model.name, messages=messages)
    hits = server.cache.hits
    again = client.chat.completions.create(model=server.model.name, messages=messages)
    assert server.cache.hits == hits + 1 and again.model_extra["dsvl"]["cache_hit"] is True
    assert again.choices[0].message.content == first.choices[0].message.content
    other = client.chat.completions.create(model=server.model.name, messages=messages, max_tokens=3)
    assert other.model_extra["dsvl"]["cache_hit"] is False  # different settings, different key


def test_a_picture_in_a_large_body_is_decoded_off_the_loop_and_answered_as_the_same_picture_sent_small(built, client,
                                                                                                      test_rows):
    import base64
    import io

    from PIL.PngImagePlugin import PngInfo

    from dsvl_adapt.serve.app import INLINE_DECODE_BYTES

    server, _ = built
    rows, prompt, _ = test_rows
    messages = openai_messages(conversation(prompt, rows[9]))
    padded = PngInfo()
    padded.add_text("padding", "x" * (2 * INLINE_DECODE_BYTES))  # same pixels, a file over the inline limit
    buffer = io.BytesIO()
    rows[9].image.save(buffer, format="PNG", pnginfo=padded)
    large = json.loads(json.dumps(messages))
    for message in large:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] == "image_url":
                part["image_url"]["url"] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert len(json.dumps(large)) > INLINE_DECODE_BYTES > len(json.dumps(messages))
    first = client.chat.completions.create(model=server.model.name, messages=large, max_tokens=5)
    again = client.chat.completions.create(model=server.model.name, messages=messages, max_tokens=5)
    assert first.model_extra["dsvl"]["cache_hit"] is False
    assert again.model_extra["dsvl"]["cache_hit"] is True  # the same pixels: the same key, whichever path decoded
    assert again.choices[0].message.content == first.choices[0].message.content


def test_the_disk_cache_answers_after_a_restart(built, test_rows, tmp_path):
    from dsvl_adapt.serve.app import Server
    from dsvl_adapt.serve.monitor import Monitor, MonitorSettings

    server = built[0]
    rows, prompt, _ = test_rows
    messages = openai_messages(conversation(prompt, rows[3]))
    options = replace(server.options, cache_dir=tmp_path / "cache", token=None)
    hits = []
    for life in range(2):  # a server, then a new one over the same folder
        fresh = Server(server.model, options, Monitor(MonitorSettings(log_dir=tmp_path / f"log{life}")))
        with running(fresh) as base:
            disk = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
            answer = disk.chat.completions.create(model=server.model.name, messages=messages)
            hits.append(answer.model_extra["dsvl"]["cache_hit"])
    assert hits == [False, True]
    assert list((tmp_path / "cache").glob("*/*.json"))


def _good(name: str, image: Image.Image) -> dict:
    return {"model": name, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": "Any defect?"}]}]}


def test_every_bad_input_gets_a_4xx_naming_the_problem_and_the_server_keeps_serving(built, url, tmp_path):
    server, _ = built
    name = server.model.name
    image = Image.new("RGB", (32, 32), (120, 30, 30))
    good = _good(name, image)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = Image.new("RGB", (5000, 4000))
    local = tmp_path / "part.png"
    image.save(local)

    def with_url(u: str) -> dict:
        return {**good, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}},
                                                                  {"type": "text", "text": "?"}]}]}

    cases = [
        ("malformed JSON", b'{"model": "x", "messages": [', auth, 400, "not valid JSON"),
        ("empty body", b"", auth, 400, "empty"),
        ("not an object", b"[1, 2]", auth, 400, "JSON object"),
        ("no token", good, {}, 401, "bearer token"),
        ("wrong token", good, {"Authorization": "Bearer nope"}, 401, "bearer token"),
        ("missing messages", {"model": name}, auth, 400, "messages: required field missing"),
        ("empty messages", {**good, "messages": []}, auth, 400, "messages"),
        ("unknown model", {**good, "model": "gpt-4o"}, auth, 404, "not served here"),
        ("unsupported field", {**good, "tools": [{"type": "function"}]}, auth, 400, "tools: field not supported"),
        ("unknown role", {**good, "messages": [{"role": "robot", "content": "hi"}]}, auth, 400, "role"),
        ("sampling asked", {**good, "temperature": 0.8}, auth, 400, "greedily"),
        ("n > 1", {**good, "n": 3}, auth, 400, "n=3"),
        ("max_tokens too large", {**good, "max_tokens": 100_000}, auth, 400, "max_tokens=100000"),
        ("max_tokens zero", {**good, "max_tokens": 0}, auth, 400, "max_tokens"),
        ("stream not a boolean", {**good, "stream": "yes please"}, auth, 400, "stream"),
        ("no image", {**good, "messages": [{"role": "user", "content": "hello"}]}, auth, 400, "no image"),
        ("two images", {**good, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "image_url", "image_url": {"url": data_url(image)}}]}]}, auth, 400, "image"),
        ("remote URL", with_url("https://example.com/a.png"), auth, 400, "remote image URLs"),
        ("local path not allowed", with_url(str(local)), auth, 403, "--allow-local-images"),
        ("bad base64", with_url("data:image/png;base64,@@@not-base64@@@"), auth, 400, "base64"),
        ("not base64 encoded", with_url("data:image/png,rawbytes"), auth, 400, "not base64"),
        ("a text file as image", with_url("data:text/plain;base64,aGVsbG8="), auth, 400, "not an image"),
        ("bytes that are no image", with_url("data:image/png;base64,aGVsbG8gd29ybGQ="), auth, 400, "not an image"),
        ("too many pixels", with_url(data_url(big)), auth, 413, "pixels"),
        ("image too large", with_url("data:image/png;base64," + "A" * (6 * 2**20)), auth, 413, "above the limit"),
        ("ends with the assistant", {**good, "messages": [*good["messages"], {"role": "assistant",
                                                                               "content": "ok"}]}, auth, 400,
         "must end with the user"),
        ("stop sequences", {**good, "stop": ["\n"]}, auth, 400, "stop"),
        ("past the model's context", {**good, "max_tokens": 4, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "text", "text": " a" * (server.model.context_length + 8)}]}]}, auth, 400,
         f"past the model's context of {server.model.context_length:,} positions"),
    ]
    assert len(cases) >= 15
    for label, body, headers, status, words in cases:
        got, answer, _ = post(f"{url}/v1/chat/completions", body, headers)
        assert got == status, (label, got, answer)
        assert 400 <= got < 500
        assert words.lower() in answer["error"]["message"].lower(), (label, answer)
    got, answer, _ = post(f"{url}/v1/chat/completions", good, auth)
    assert got == 200 and answer["choices"][0]["message"]["role"] == "assistant"


def test_a_burst_beyond_the_queue_gets_429_with_retry_after_and_every_accepted_request_is_answered(built, tmp_path):
    from dsvl_adapt.serve.app import Server
    from dsvl_adapt.serve.monitor import Monitor, MonitorSettings

    server = built[0]
    small = Server(server.model, replace(server.options, max_queue=2, max_batch=8, max_wait_ms=400,
                                         cache_entries=0, token=None), Monitor(MonitorSettings(log_dir=tmp_path)))
    results: list[tuple[int, dict, dict]] = []
    lock = threading.Lock()
    with running(small) as base:
        def call(i: int) -> None:
            image = Image.new("RGB", (32, 32), (i * 20 % 255, 80, 80))
            outcome = post(f"{base}/v1/chat/completions", _good(server.model.name, image))
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4 * small.options.max_queue)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        refused = [r for r in results if r[0] == 429]
        accepted = [r for r in results if r[0] != 429]
        assert len(results) == 8 and refused and accepted
        assert all(r[0] == 200 and r[1]["choices"][0]["message"]["role"] == "assistant" for r in accepted)
        assert all(int(r[2]["retry-after"]) >= 1 and "queue is full" in r[1]["error"]["message"] for r in refused)
        assert post(f"{base}/v1/chat/completions", _good(server.model.name, Image.new("RGB", (32, 32))))[0] == 200


def test_the_monitor_logs_each_request_and_writes_loadable_hard_cases(built, client, test_rows):
    from dsvl_adapt.data.images import open_image
    from dsvl_adapt.data.jsonl import read_jsonl_split

    server, log_dir = built
    rows, prompt, _ = test_rows
    before = len(answered_records(log_dir, 0))
    client.chat.completions.create(model=server.model.name, messages=openai_messages(conversation(prompt, rows[9])))
    records = answered_records(log_dir, before + 1)
    assert len(records) == before + 1
    last = records[-1]
    assert set(last["latency_ms"]) == {"queue", "prefill", "decode", "total"}
    assert last["confidence"]["known"] is True and last["confidence"]["mean_logprob"] < 0
    assert last["rss_bytes"] > 0 and last["tokens"]["prompt"] > 0
    hard = list(read_jsonl_split(log_dir / "hard-cases", "train"))
    flagged = [r for r in records if r["hard_case"]]
    assert len(hard) == len(flagged) > 0  # the tiny model answers nothing: every fresh answer is flagged empty
    for row in hard:
        assert row["question"] and row["answer"] and "_error" not in row
        assert open_image(log_dir / "hard-cases" / row["image"], source=row["_source"]).size == (32, 32)


def test_darkened_images_are_flagged_as_drift_within_50_requests_and_normal_ones_are_not(built, url, test_rows):
    server, log_dir = built
    deployment = test_rows[2]
    rows = deployment.rows("validation", server.model.image_size, size=40)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    count = len(answered_records(log_dir, 0))
    server.monitor.drift.reset()
    for row in rows[:25]:
        assert post(f"{url}/v1/chat/completions", _good(server.model.name, row.image), auth)[0] == 200
    count += 25
    normal = answered_records(log_dir, count)
    assert len(normal) == count and normal[-1]["drift"]["drifted"] is False, normal[-1]["drift"]
    server.monitor.drift.reset()
    flagged_at = None
    for i, row in enumerate(rows[:40] + rows[:10]):
        dark = ImageEnhance.Brightness(row.image).enhance(0.3)
        assert post(f"{url}/v1/chat/completions", _good(server.model.name, dark), auth)[0] == 200
        count += 1
        record = answered_records(log_dir, count)[-1]
        if record["drift"]["drifted"]:
            flagged_at = i + 1
            break
    assert flagged_at is not None and flagged_at <= 50
    assert "brightness" in record["drift"]["reason"] or "far from" in record["drift"]["reason"]


def test_monitor_command_writes_an_html_report(built, tmp_path, capsys):
    from dsvl_adapt.cli import main

    _, log_dir = built
    out = tmp_path / "monitor.html"
    assert main(["monitor", str(log_dir), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert main(["monitor", str(tmp_path / "nowhere")]) == 2  # a clear error, no traceback
    page = out.read_text()
    for section in ("Latency", "Confidence", "Input drift", "Hard cases", "data:image/png;base64"):
        assert section in page
