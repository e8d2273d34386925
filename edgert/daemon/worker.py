"""One model's serving worker: a bounded queue in front of one inference thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgert.daemon.ledger import LedgerKey, RequestLedger, Waiter
from edgert.daemon.stats import ModelStats
from edgert.errors import EdgertError
from edgert.protocol import ErrorCode, error_reply, ok_reply
from edgert.runtime import LoadedModel

__all__ = ["Job", "ModelWorker"]

log = logging.getLogger("edgert.daemon")

PublishFn = Callable[[Waiter, bytes], None]


@dataclass
class Job:
    """A request taken from the broker, waiting for its model."""

    id: str | None
    key: LedgerKey | None
    waiter: Waiter
    feeds: Mapping[str, np.ndarray]
    received: float  # time.monotonic() at receipt
    deadline: float | None  # monotonic
    compact: bool


class ModelWorker:
    """Runs one model's requests in order, one inference at a time, and publishes the replies."""

    def __init__(
        self,
        loaded: LoadedModel,
        ledger: RequestLedger,
        publish: PublishFn,
        stats: ModelStats,
        queue_size: int,
    ) -> None:
        self.loaded = loaded
        self.name = loaded.config.name
        self.version = loaded.config.version
        self._ledger = ledger
        self._publish = publish
        self.stats = stats
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name=f"model-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers ``busy``)."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            return False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued has been answered; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.loaded.close()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._serve(job)
            except Exception:  # a bug must not stop this model's worker
                log.exception("%s: serving a request failed", self.name)
            finally:
                self._queue.task_done()

    def _serve(self, job: Job) -> None:
        start = time.monotonic()
        if job.deadline is not None and start > job.deadline:
            self._answer(
                job,
                error_reply(job.id, ErrorCode.EXPIRED, "deadline passed in queue"),
                cache=False,
                code=ErrorCode.EXPIRED,
            )
            return
        try:
            # Decoding validated the request against the specs: no second pass per request.
            outputs = self.loaded.infer(job.feeds, check=False)
        except EdgertError as exc:
            code = ErrorCode.BAD_INPUT if exc.code == "bad_input" else ErrorCode.INTERNAL
            self._answer(job, error_reply(job.id, code, exc.message), cache=True, code=code)
            return
        done = time.monotonic()
        latency = {
            "queue": round((start - job.received) * 1000, 3),
            "infer": round((done - start) * 1000, 3),
            "total": round((done - job.received) * 1000, 3),
        }
        reply = ok_reply(
            job.id, self.name, self.version, outputs, None, latency, compact=job.compact
        )
        self.stats.record_ok(done - job.received, done - start)
        self._answer(job, reply, cache=True, code=None)

    def _answer(self, job: Job, reply: bytes, *, cache: bool, code: ErrorCode | None) -> None:
        if code is not None:
            self.stats.record_error(code.value)
        for waiter in self._ledger.finish(job.key, job.waiter, reply, cache):
            self._publish(waiter, reply)
