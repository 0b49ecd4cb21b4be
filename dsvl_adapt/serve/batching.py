"""Dynamic batching with cost-graded priorities and a bounded queue.

Requests wait in one bounded queue. The inference thread takes the most urgent request, then waits up to
``max_wait_s`` (from that request's arrival) for more, and runs up to ``max_batch`` of them as one left-padded batch.
Urgency is the request's priority class (cheap requests first: graded by image size, prompt and answer length) less
the time it has waited divided by ``aging_s``, so an expensive request is delayed, never starved. A full queue refuses
new requests at once (:class:`QueueFull`, sent as 429 with ``Retry-After``) instead of letting latency grow without
bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

#: Priority classes, cheapest first.
PRIORITIES = ("interactive", "standard", "bulk")


@dataclass(frozen=True)
class CostGrade:
    """A request's estimated cost (relative units of work) and its priority class."""

    cost: float
    priority: int

    @property
    def name(self) -> str:
        return PRIORITIES[self.priority]


def grade_cost(*, pixels: int, prompt_tokens: int, max_new_tokens: int, image_tokens: int = 0,
               thresholds: tuple[float, float] = (4.0, 16.0)) -> CostGrade:
    """Cost = decoding the image (its pixels, before resizing) + the prompt + the answer budget.

    Units: one unit ~ 64 prompt tokens ~ 8 answer tokens ~ one 512x512 image. Without a KV cache each answer token
    re-reads the prompt, so the answer budget weighs more than its length alone."""
    cost = pixels / 262_144 + (prompt_tokens + image_tokens) / 64 + max_new_tokens / 8
    priority = 0 if cost <= thresholds[0] else 1 if cost <= thresholds[1] else 2
    return CostGrade(cost=round(cost, 3), priority=priority)


class QueueFull(Exception):
    """The queue holds ``depth`` requests already; retry after ``retry_after_s``."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(f"the server's queue is full ({depth} requests waiting); retry after {retry_after_s} s")
        self.depth = depth
        self.retry_after_s = retry_after_s


@dataclass
class Job:
    """One queued request: its payload for the batch runner, its grade, and the future its handler awaits."""

    payload: Any
    grade: CostGrade
    enqueued: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    started: float | None = None  # when its batch began running
    batch_size: int = 0


class Scheduler:
    """Runs ``run_batch(jobs)`` on one inference thread over batches drawn from a bounded priority queue.

    ``run_batch`` must set each job's future (result or exception); if it raises, every job of the batch gets the
    exception."""

    def __init__(self, run_batch: Callable[[list[Job]], None], *, max_batch: int = 8, max_wait_s: float = 0.01,
                 max_queue: int = 64, aging_s: float = 1.0) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.aging_s = aging_s
        self._jobs: list[Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._batch_seconds = 0.0  # moving average of a batch's run time, for Retry-After
        self.batches_run = 0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="dsvl-serve-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        return len(self._jobs)

    # -- submitting --------------------------------------------------------------------
    def retry_after(self) -> int:
        """Seconds until the queue has likely drained a batch's worth of room (at least 1)."""
        batches = math.ceil((len(self._jobs) + 1) / self.max_batch)
        return max(1, math.ceil(batches * max(self._batch_seconds, 0.05)))

    def submit(self, job: Job) -> Future:
        with self._cond:
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(len(self._jobs), self.retry_after())
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    # -- the inference thread ----------------------------------------------------------
    def _urgency(self, job: Job, now: float) -> float:
        return job.grade.priority - (now - job.enqueued) / self.aging_s

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = min(self._jobs, key=lambda j: self._urgency(j, time.monotonic()))
            deadline = first.enqueued + self.max_wait_s
            while len(self._jobs) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            now = time.monotonic()
            chosen = sorted(self._jobs, key=lambda j: self._urgency(j, now))[: self.max_batch]
            if first not in chosen:  # the job that opened the batch always runs in it
                chosen[-1] = first
            for job in chosen:
                self._jobs.remove(job)
            return chosen

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            started = time.monotonic()
            for job in jobs:
                job.started, job.batch_size = started, len(jobs)
            try:
                self.run_batch(jobs)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests, the thread lives on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            elapsed = time.monotonic() - started
            self._batch_seconds = elapsed if not self.batches_run else 0.8 * self._batch_seconds + 0.2 * elapsed
            self.batches_run += 1

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every job still queued (at shutdown), so that no handler waits forever."""
        with self._cond:
            for job in self._jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            self._jobs.clear()


__all__ = ["CostGrade", "Job", "PRIORITIES", "QueueFull", "Scheduler", "grade_cost"]
