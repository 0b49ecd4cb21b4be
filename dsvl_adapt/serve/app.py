"""The HTTP application: OpenAI chat completions (streaming and not), ``/health``, ``/ready``, ``/metrics``.

FastAPI on uvicorn (see docs/serving.md for why); this module imports FastAPI, so import it only to serve. Handlers
stay on the event loop only for I/O and small work: rendering the prompt and decoding an image that came in a large
body (or from a local path) run in the thread pool, the model runs on the scheduler's single inference thread
(:mod:`dsvl_adapt.serve.batching`), and answers come back through futures. Every refusal is a 4xx with a message
naming the problem (:class:`~dsvl_adapt.serve.limits.ServeError`); an unexpected fault is a 500 that names no
internals, is logged, and leaves the server serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..runtimes.contract import GenerationSettings
from .batching import Job, QueueFull, Scheduler, grade_cost
from .cache import ResponseCache, cache_key
from .limits import Limits, ServeError
from .model import Encoded, Generation, ServedModel
from .monitor import Monitor
from .protocol import ChatRequest, Conversation, generation_settings, parse_request, to_conversation

log = logging.getLogger("dsvl_adapt.serve")

#: Request bodies up to this size have their image decoded on the event loop; larger ones (and local image paths,
#: whose files may be of any size) in the thread pool, so that one big picture never stalls the other requests.
INLINE_DECODE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """How the server behaves; ``dsvl-adapt serve --help`` lists the same as flags."""

    token: str | None = None  # bearer token required on /v1/* and /metrics when set
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    cache_entries: int = 4096  # 0 disables the memory tier
    cache_bytes: int = 64 * 2**20
    cache_dir: Path | None = None  # the optional disk tier
    cache_disk_bytes: int = 512 * 2**20
    allow_local_images: bool = False
    default_max_tokens: int = 64
    request_timeout_s: float = 300.0
    limits: Limits = field(default_factory=Limits)


@dataclass
class Pending:
    """A request on its way through the scheduler."""

    encoded: Encoded
    settings: GenerationSettings
    stream: _StreamSink | None = None


class _StreamSink:
    """Carries a streaming request's tokens from the inference thread to its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, eos_id: int | None) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.limit = limit
        self.eos_id = eos_id
        self.count = 0
        self.done = False

    def token(self, token_id: int) -> None:  # inference thread
        if self.done or self.count >= self.limit:
            return
        self.count += 1
        self.done = token_id == self.eos_id
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("token", token_id))

    def finish(self, kind: str, value: Any) -> None:  # inference thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))


class Server:
    """The model, scheduler, cache and monitor behind the HTTP routes."""

    def __init__(self, model: ServedModel, options: ServeOptions, monitor: Monitor) -> None:
        self.model = model
        self.options = options
        self.monitor = monitor
        self.cache = ResponseCache(max_entries=options.cache_entries, max_bytes=options.cache_bytes,
                                   disk_dir=options.cache_dir, disk_max_bytes=options.cache_disk_bytes)
        self.scheduler = Scheduler(self.run_batch, max_batch=options.max_batch,
                                   max_wait_s=options.max_wait_ms / 1000, max_queue=options.max_queue)
        self.model_id = f"{model.name}:{model.label}:{model.directory}"
        # the monitor's own thread: a request's record (drift statistics, hard cases, the log) is handed over once
        # its response is sent, so it never holds the connection - the next request on it - or the event loop
        self.recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsvl-monitor")

    # -- the inference thread ----------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> None:
        pending: list[Pending] = [job.payload for job in jobs]
        sinks = [p.stream for p in pending]

        def on_token(step: int, tokens: np.ndarray) -> None:
            for sink, token in zip(sinks, tokens):
                if sink is not None:
                    sink.token(int(token))

        try:
            answers = self.model.generate([p.encoded for p in pending], [p.settings for p in pending],
                                          on_token if any(sinks) else None)
        except Exception as exc:
            for sink in sinks:
                if sink is not None:
                    sink.finish("error", exc)
            raise
        for job, answer, sink in zip(jobs, answers, sinks):
            job.future.set_result(answer)
            if sink is not None:
                sink.finish("done", answer)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, read until it passes ``limit`` bytes (then 413): a body sent without Content-Length
    (chunked) is never buffered whole."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"the request body is above the limit of {limit:,} bytes (stopped reading at "
                                  f"{size:,})", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_response(error: ServeError) -> Any:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(server: Server) -> Any:
    """The FastAPI application over a :class:`Server`."""
    options, model, monitor = server.options, server.model, server.monitor

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        server.scheduler.start()
        try:
            yield
        finally:
            server.scheduler.stop()
            server.scheduler.fail_pending(ServeError(503, "the server is shutting down", kind="server_error"))
            server.recorder.shutdown(wait=True)  # every answered request is in the log before it closes
            monitor.close()

    app = FastAPI(title="dsvl-adapt", description="OpenAI-compatible chat completions over a dsvl-adapt model",
                  lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> Any:
        monitor.log_refusal(exc.status, exc.code, exc.message)
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        return _error_response(ServeError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                          code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        return _error_response(ServeError(400, f"invalid request: {exc.errors()[:3]}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Any:
        log.exception("unexpected error on %s", request.url.path)
        monitor.log_refusal(500, "internal_error", f"{type(exc).__name__}")
        return JSONResponse({"error": {"message": "internal error while answering (logged on the server)",
                                       "type": "server_error", "param": None, "code": "internal_error"}},
                            status_code=500)

    def authorize(request: Request) -> None:
        if options.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), options.token.encode()):
            raise ServeError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' with the "
                                  "token the server was started with", kind="authentication_error",
                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        alive = server.scheduler.alive
        room = server.scheduler.depth < options.max_queue
        body = {"ready": alive and room, "model": model.name, "runtime": model.label,
                "queue_depth": server.scheduler.depth, "max_queue": options.max_queue}
        return JSONResponse(body, status_code=200 if alive and room else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Any:
        authorize(request)
        monitor.metrics.queue_depth.set(server.scheduler.depth)
        payload, content_type = monitor.metrics.exposition()
        return Response(payload, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "dsvl-adapt", "runtime": model.label}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        arrived = time.perf_counter()
        authorize(request)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > options.limits.max_request_bytes:
            raise ServeError(413, f"the request body is {int(length):,} bytes, above the limit of "
                                  f"{options.limits.max_request_bytes:,}", code="request_too_large")
        body = await _read_body(request, options.limits.max_request_bytes)
        chat_request = parse_request(body, options.limits)
        if chat_request.model != model.name:
            raise ServeError(404, f"model {chat_request.model!r} is not served here; this server serves "
                                  f"{model.name!r} (GET /v1/models)", param="model", code="model_not_found")
        if len(body) <= INLINE_DECODE_BYTES and not options.allow_local_images:
            # a small inline picture decodes in well under a millisecond: less than the hop to a worker thread
            conversation = to_conversation(chat_request, options.limits, allow_local_images=False)
        else:
            conversation = await run_in_threadpool(to_conversation, chat_request, options.limits,
                                                   allow_local_images=options.allow_local_images)
        settings = generation_settings(chat_request, default_max_tokens=options.default_max_tokens,
                                       eos_token_id=model.eos_id, pad_token_id=model.encoder.pad_id)
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        key = cache_key(model_id=server.model_id, image_sha256=conversation.image_sha256,
                        prompt=conversation.prompt, settings=settings) if server.cache.enabled else None
        cached = (await _off_loop(server.cache.get, key)) if key else None
        if cached is not None:
            answer = Generation(text=cached["text"], token_ids=cached["token_ids"],
                                finish_reason=cached["finish_reason"], mean_logprob=cached["mean_logprob"],
                                prefill_s=0.0, decode_s=0.0)
            grade = grade_cost(pixels=conversation.pixels, prompt_tokens=cached["prompt_tokens"],
                               max_new_tokens=settings.max_new_tokens)
            figures = dict(queue_s=0.0, batch_size=0, cache_hit=True)
            if chat_request.stream:
                return _stream_cached(request_id, chat_request, answer, cached["prompt_tokens"], conversation,
                                      grade, figures, arrived)
            return _answered(_completion(request_id, answer, cached["prompt_tokens"], True), request_id,
                             conversation, answer, cached["prompt_tokens"], grade, figures, arrived)
        encoded = await run_in_threadpool(_encode, conversation, settings.max_new_tokens)
        grade = grade_cost(pixels=conversation.pixels, prompt_tokens=len(encoded.prompt_ids),
                           max_new_tokens=settings.max_new_tokens)
        sink = (_StreamSink(asyncio.get_running_loop(), settings.max_new_tokens, model.eos_id)
                if chat_request.stream else None)
        job = Job(payload=Pending(encoded, settings, sink), grade=grade)
        try:
            future = server.scheduler.submit(job)
        except QueueFull as full:
            raise ServeError(429, str(full), kind="rate_limit_error", code="queue_full",
                             headers={"Retry-After": str(full.retry_after_s)}) from None
        finally:
            monitor.metrics.queue_depth.set(server.scheduler.depth)
        if sink is not None:
            return StreamingResponse(_stream(request_id, chat_request, job, sink, encoded, conversation, grade, key,
                                             arrived),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(future), options.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(504, f"no answer within {options.request_timeout_s:.0f} s", kind="server_error",
                             code="timeout") from None
        await _off_loop(_remember, key, answer, len(encoded.prompt_ids))
        return _answered(_completion(request_id, answer, len(encoded.prompt_ids), False), request_id, conversation,
                         answer, len(encoded.prompt_ids), grade, _figures(job), arrived)

    def _encode(conversation: Conversation, max_new_tokens: int) -> Encoded:
        try:
            encoded = model.encode(conversation.messages)
        except Exception as exc:  # noqa: BLE001 - the template refused these messages: the client's input
            raise ServeError(400, f"the model's chat template cannot render these messages ({type(exc).__name__}: "
                                  f"{str(exc)[:200]})", param="messages", code="template_error") from None
        if len(encoded.prompt_ids) > options.limits.max_prompt_tokens:
            raise ServeError(400, f"the prompt is {len(encoded.prompt_ids):,} tokens, above the limit of "
                                  f"{options.limits.max_prompt_tokens:,}", param="messages", code="prompt_too_long")
        context = model.context_length
        if context is not None and len(encoded.prompt_ids) + max_new_tokens > context:
            raise ServeError(400, f"the prompt is {len(encoded.prompt_ids):,} tokens and the answer may take "
                                  f"{max_new_tokens:,}, past the model's context of {context:,} positions: shorten "
                                  "the messages or lower max_tokens", param="messages", code="context_length_exceeded")
        return encoded

    async def _off_loop(function: Any, *args: Any) -> Any:
        """Memory-only cache calls run on the loop (microseconds); with the disk tier they go to the thread pool."""
        if server.cache.disk_dir is None:
            return function(*args)
        return await run_in_threadpool(function, *args)

    def _remember(key: str | None, answer: Generation, prompt_tokens: int) -> None:
        if key:
            server.cache.put(key, {"text": answer.text, "token_ids": answer.token_ids, "prompt_tokens": prompt_tokens,
                                   "finish_reason": answer.finish_reason, "mean_logprob": answer.mean_logprob})

    def _figures(job: Job) -> dict[str, Any]:
        return dict(queue_s=(job.started or job.enqueued) - job.enqueued, batch_size=job.batch_size,
                    cache_hit=False)

    def _answered(body: dict[str, Any], request_id: str, conversation: Conversation, answer: Generation,
                  prompt_tokens: int, grade: Any, figures: dict[str, Any], arrived: float) -> Any:
        """The JSON response; the monitor records the request after it is sent (its time is not the client's)."""
        total = time.perf_counter() - arrived
        return JSONResponse(body, background=BackgroundTask(_record, request_id, conversation, answer, prompt_tokens,
                                                            grade, figures, arrived, False, total))

    async def _record(request_id: str, conversation: Conversation, answer: Generation, prompt_tokens: int,
                      grade: Any, figures: dict[str, Any], arrived: float, stream: bool,
                      total: float | None = None) -> None:
        """Hand the request's record to the monitor's thread and return at once (a coroutine, though it awaits
        nothing, so that Starlette's BackgroundTask runs it on the event loop rather than through a threadpool hop)."""
        total = time.perf_counter() - arrived if total is None else total
        future = server.recorder.submit(
            monitor.record, request_id=request_id, conversation=conversation, answer=answer.text,
            token_ids=answer.token_ids, finish_reason=answer.finish_reason, mean_logprob=answer.mean_logprob,
            prompt_tokens=prompt_tokens, prefill_s=answer.prefill_s, decode_s=answer.decode_s, total_s=total,
            priority=grade.name, cost=grade.cost, stream=stream, **figures)
        future.add_done_callback(_report_failure)

    def _report_failure(future: Future) -> None:
        if future.exception() is not None:
            log.error("the monitor could not record a request: %r", future.exception())

    def _completion(request_id: str, answer: Generation, prompt_tokens: int, cache_hit: bool) -> dict[str, Any]:
        return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model.name,
                "system_fingerprint": model.label,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": answer.finish_reason, "logprobs": None}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer.token_ids),
                          "total_tokens": prompt_tokens + len(answer.token_ids)},
                "dsvl": {"mean_logprob": answer.mean_logprob, "cache_hit": cache_hit}}

    def _chunk(request_id: str, delta: dict[str, Any], finish: str | None = None,
               usage: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                                "model": model.name, "system_fingerprint": model.label,
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                             "logprobs": None}] if usage is None else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def _usage(prompt_tokens: int, answer: Generation) -> dict[str, Any]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": len(answer.token_ids),
                "total_tokens": prompt_tokens + len(answer.token_ids)}

    async def _stream(request_id: str, chat_request: ChatRequest, job: Job, sink: _StreamSink, encoded: Encoded,
                      conversation: Conversation, grade: Any, key: str | None, arrived: float) -> AsyncIterator[str]:
        yield _chunk(request_id, {"role": "assistant", "content": ""})
        ids: list[int] = []
        sent = ""
        deadline = time.monotonic() + options.request_timeout_s
        while True:
            try:
                kind, value = await asyncio.wait_for(sink.queue.get(), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                yield f"data: {json.dumps(ServeError(504, 'no answer in time', code='timeout').body())}\n\n"
                return
            if kind == "token":
                ids.append(value)
                visible = model.decode(ids).strip()
                if visible.startswith(sent) and len(visible) > len(sent):
                    yield _chunk(request_id, {"content": visible[len(sent):]})
                    sent = visible
                continue
            if kind == "error":
                log.error("generation failed for a streaming request: %r", value)
                yield f"data: {json.dumps({'error': {'message': 'internal error while answering', 'type': 'server_error', 'code': 'internal_error'}})}\n\n"  # noqa: E501
                return
            answer: Generation = value
            if answer.text.startswith(sent) and len(answer.text) > len(sent):
                yield _chunk(request_id, {"content": answer.text[len(sent):]})
            yield _chunk(request_id, {}, answer.finish_reason)
            if chat_request.stream_options and chat_request.stream_options.include_usage:
                yield _chunk(request_id, {}, usage=_usage(len(encoded.prompt_ids), answer))
            yield "data: [DONE]\n\n"
            await _off_loop(_remember, key, answer, len(encoded.prompt_ids))
            await _record(request_id, conversation, answer, len(encoded.prompt_ids), grade, _figures(job), arrived,
                          True)
            return

    def _stream_cached(request_id: str, chat_request: ChatRequest, answer: Generation, prompt_tokens: int,
                       conversation: Conversation, grade: Any, figures: dict[str, Any], arrived: float) -> Any:
        async def events() -> AsyncIterator[str]:
            yield _chunk(request_id, {"role": "assistant", "content": ""})
            if answer.text:
                yield _chunk(request_id, {"content": answer.text})
            yield _chunk(request_id, {}, answer.finish_reason)
            if chat_request.stream_options and chat_request.stream_options.include_usage:
                yield _chunk(request_id, {}, usage=_usage(prompt_tokens, answer))
            yield "data: [DONE]\n\n"
            await _record(request_id, conversation, answer, prompt_tokens, grade, figures, arrived, True)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


__all__ = ["Server", "ServeOptions", "create_app"]
