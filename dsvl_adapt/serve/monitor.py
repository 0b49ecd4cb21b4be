"""The monitor: one JSON line per request (rotating), Prometheus metrics, drift, and the hard-case queue.

Per request it records latency (queue, prefill, decode, end to end), tokens, the process's memory, the answer's
confidence (mean token log-probability; ``null`` when the runtime gives no logits: unknown, never 0), flags for empty,
over-long (stopped by ``max_tokens``) and repetitive answers, and the drift figures of
:mod:`dsvl_adapt.serve.drift`. Low-confidence and anomalous requests are written to ``LOG_DIR/hard-cases`` as a
``data.source`` folder (``train.jsonl`` + ``images/``, image paths relative), with the model's answer as the answer to
review: the data-cleaning review page and ``dsvl-adapt update`` read that layout.
``dsvl-adapt monitor LOG_DIR`` renders the log as an HTML report (:mod:`dsvl_adapt.serve.report`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..machine import current_rss_bytes
from .drift import DriftMonitor, DriftReference

REQUEST_LOG = "requests.jsonl"
HARD_CASES = "hard-cases"
REFERENCE_FILE = "drift-reference.json"


def is_repetitive(token_ids: Sequence[int], *, min_tokens: int = 6, repeats: int = 3) -> bool:
    """True when some 1-4 token sequence repeats ``repeats`` times in a row (``a a a``, ``x y x y x y``)."""
    ids = list(token_ids)
    if len(ids) < min_tokens:
        return False
    for size in range(1, 5):
        for start in range(0, len(ids) - size * repeats + 1):
            gram = ids[start: start + size]
            if all(ids[start + k * size: start + (k + 1) * size] == gram for k in range(1, repeats)):
                return True
    return False


@dataclass(frozen=True)
class MonitorSettings:
    log_dir: Path
    max_log_bytes: int = 16 * 2**20
    log_backups: int = 5
    low_confidence: float = -1.0  # mean token log-probability below this is a hard case
    max_hard_cases: int = 1000
    drift_window: int = 50
    drift_min_requests: int = 20
    drift_alpha: float = 0.01
    drift_test_every: int = 5  # the window tests run every this many requests (the ones between carry the verdict)


class PrometheusMetrics:
    """The server's metrics on their own registry (several apps in one process do not collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
        self.requests = Counter("dsvl_requests", "chat completion requests by outcome", ["status"],
                                registry=self.registry)
        self.latency = Histogram("dsvl_request_latency_seconds", "time per request by phase", ["phase"],
                                 buckets=buckets, registry=self.registry)
        self.tokens = Counter("dsvl_tokens", "tokens processed", ["kind"], registry=self.registry)
        self.batch_size = Histogram("dsvl_batch_size", "requests per model batch",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=self.registry)
        self.queue_depth = Gauge("dsvl_queue_depth", "requests waiting", registry=self.registry)
        self.cache = Counter("dsvl_cache", "response cache lookups", ["result"], registry=self.registry)
        self.confidence = Histogram("dsvl_answer_mean_logprob", "mean token log-probability of answers",
                                    buckets=(-8, -4, -2, -1, -0.5, -0.25, -0.1, -0.01, 0), registry=self.registry)
        self.flags = Counter("dsvl_answer_flags", "answers flagged", ["flag"], registry=self.registry)
        self.drift = Gauge("dsvl_input_drift", "1 when the recent inputs drift from the training data, 0 when not, "
                           "-1 when unknown", registry=self.registry)
        self.drift.set(-1)
        self.hard_cases = Counter("dsvl_hard_cases", "requests written to the hard-case queue",
                                  registry=self.registry)
        self.memory = Gauge("dsvl_resident_memory_bytes", "resident memory of the server process",
                            registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Monitor:
    """Writes the request log and hard cases, runs drift tests, updates Prometheus metrics."""

    def __init__(self, settings: MonitorSettings, *, reference: DriftReference | None = None,
                 metrics: PrometheusMetrics | None = None, model: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.log_dir = Path(settings.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = metrics or PrometheusMetrics()
        self.drift = (DriftMonitor(reference, window=settings.drift_window, min_requests=settings.drift_min_requests,
                                   alpha=settings.drift_alpha, test_every=settings.drift_test_every)
                      if reference is not None else None)
        if reference is not None:
            reference.save(self.log_dir / REFERENCE_FILE)
        self._lock = threading.Lock()
        self._logger = logging.getLogger(f"dsvl_adapt.serve.requests.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        handler = logging.handlers.RotatingFileHandler(self.log_dir / REQUEST_LOG, maxBytes=settings.max_log_bytes,
                                                       backupCount=settings.log_backups, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)
        self._handler = handler
        self.hard_dir = self.log_dir / HARD_CASES
        self.hard_count = len((self.hard_dir / "train.jsonl").read_text().splitlines()) \
            if (self.hard_dir / "train.jsonl").is_file() else 0
        if model:
            (self.log_dir / "server.json").write_text(json.dumps({**model, "started": time.time()}, indent=1))

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()

    def log_refusal(self, status: int, code: str | None, message: str) -> None:
        """A refused request: logged (without its content) and counted."""
        self.metrics.requests.labels(status=str(status)).inc()
        self._write({"time": time.time(), "status": status, "error": code, "message": message[:300]})

    def record(self, *, request_id: str, conversation: Any, answer: str, token_ids: Sequence[int],
               finish_reason: str, mean_logprob: float | None, prompt_tokens: int, queue_s: float, prefill_s: float,
               decode_s: float, total_s: float, batch_size: int, cache_hit: bool, priority: str, cost: float,
               stream: bool) -> dict[str, Any]:
        """Log one answered request; returns the record (also written to the log)."""
        flags = {"empty": not answer.strip(), "over_long": finish_reason == "length",
                 "repetitive": is_repetitive(token_ids)}
        low = mean_logprob is not None and mean_logprob < self.settings.low_confidence
        with self._lock:
            drift = self.drift.observe(conversation.image) if self.drift is not None else None
        reasons = [name for name, on in flags.items() if on] + (["low_confidence"] if low else [])
        if drift is not None and drift.far:
            reasons.append("far_from_training_images")
        record: dict[str, Any] = {
            "time": time.time(), "id": request_id, "status": 200, "cache_hit": cache_hit, "stream": stream,
            "priority": priority, "cost": cost, "batch_size": batch_size,
            "latency_ms": {"queue": round(queue_s * 1000, 3), "prefill": round(prefill_s * 1000, 3),
                           "decode": round(decode_s * 1000, 3), "total": round(total_s * 1000, 3)},
            "tokens": {"prompt": prompt_tokens, "completion": len(token_ids)},
            "rss_bytes": current_rss_bytes(),
            "confidence": {"mean_logprob": None if mean_logprob is None else round(mean_logprob, 5),
                           "known": mean_logprob is not None},
            "flags": flags, "image": {"sha256": conversation.image_sha256, "width": conversation.image.width,
                                      "height": conversation.image.height},
            "drift": None if drift is None else {
                "statistics": drift.statistics, "distance_ratio": drift.distance_ratio, "far": drift.far,
                "window": drift.window, "drifted": drift.drifted, "ks_min_p": drift.ks_min_p,
                "far_share": drift.far_share, "far_p": drift.far_p, "reason": drift.reason, "tested": drift.tested},
            "hard_case": bool(reasons) and not cache_hit, "reasons": reasons, "answer": answer[:500],
        }
        if record["hard_case"]:
            self._hard_case(request_id, conversation, answer, reasons, mean_logprob)
        self._write(record)
        self._count(record, drift)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        self._logger.info(json.dumps(record, default=str))

    def _count(self, record: dict[str, Any], drift: Any) -> None:
        m = self.metrics
        m.requests.labels(status="200").inc()
        m.cache.labels(result="hit" if record["cache_hit"] else "miss").inc()
        for phase, value in record["latency_ms"].items():
            m.latency.labels(phase=phase).observe(value / 1000)
        m.tokens.labels(kind="prompt").inc(record["tokens"]["prompt"])
        m.tokens.labels(kind="completion").inc(record["tokens"]["completion"])
        if not record["cache_hit"]:
            m.batch_size.observe(record["batch_size"])
        if record["confidence"]["known"]:
            m.confidence.observe(record["confidence"]["mean_logprob"])
        for flag, on in record["flags"].items():
            if on:
                m.flags.labels(flag=flag).inc()
        if drift is not None:
            m.drift.set(-1 if drift.drifted is None else int(drift.drifted))
        if record["rss_bytes"]:
            m.memory.set(record["rss_bytes"])

    def _hard_case(self, request_id: str, conversation: Any, answer: str, reasons: list[str],
                   mean_logprob: float | None) -> None:
        with self._lock:
            if self.hard_count >= self.settings.max_hard_cases:
                return
            images = self.hard_dir / "images"
            images.mkdir(parents=True, exist_ok=True)
            name = f"{request_id}.png"
            conversation.image.save(images / name)
            row = {"id": request_id, "image": f"images/{name}", "question": conversation.question or "(no text)",
                   "answer": answer.strip() or "(no answer)",
                   "meta": {"source": "served", "reasons": reasons, "mean_logprob": mean_logprob,
                            "system": conversation.system, "needs_review": True, "time": time.time()}}
            with (self.hard_dir / "train.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            self.hard_count += 1
            self.metrics.hard_cases.inc()


def read_request_log(log_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of the (rotated) request log, oldest first."""
    log_dir = Path(log_dir)
    files = sorted(log_dir.glob(f"{REQUEST_LOG}.*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit()
                   else 0)
    records = []
    for path in [*files, log_dir / REQUEST_LOG]:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


__all__ = ["HARD_CASES", "Monitor", "MonitorSettings", "PrometheusMetrics", "REQUEST_LOG", "current_rss_bytes",
           "is_repetitive", "read_request_log"]
