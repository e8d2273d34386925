"""One model's serving worker: a bounded queue, batching, and one inference thread per instance;
fast models run on the network thread while idle."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.daemon import stacking
from edgert.daemon.batcher import BatchPlan
from edgert.daemon.ledger import LedgerKey, RequestLedger, Waiter
from edgert.daemon.stats import ModelStats
from edgert.daemon.streams import StreamStates
from edgert.errors import EdgertError
from edgert.pipeline import Postprocess
from edgert.protocol import ErrorCode, error_code, error_reply, ok_reply
from edgert.runtime import LoadedModel

__all__ = ["Job", "ModelWorker"]

log = logging.getLogger("edgert.daemon")

PublishFn = Callable[[Waiter, bytes], None]
# A model whose runs take less than this is run on the network thread when it is idle: for so
# short a run, handing the request to another thread and waking the network thread to send the
# reply costs more than the inference itself.
INLINE_S = 0.001


@dataclass
class Job:
    """A request taken from the broker, waiting for its model."""

    id: str | int | None  # as the device sent it
    key: LedgerKey | None
    waiter: Waiter
    feeds: Mapping[str, np.ndarray]
    received: float  # time.monotonic() at receipt
    deadline: float | None  # monotonic
    compact: bool
    stream: str | None = None
    reset: bool = False
    transform: Any = None  # how a pre-processed image maps back (for detection boxes)


class ModelWorker:
    """One model's bounded queue, batched by a :class:`BatchPlan`, and one inference thread per
    instance (each instance a runner of its own: one inference at a time per instance)."""

    def __init__(
        self,
        loaded: LoadedModel,
        ledger: RequestLedger,
        publish: PublishFn,
        stats: ModelStats,
        queue_size: int,
        *,
        plan: BatchPlan | None = None,
        max_queue_delay_us: int = 0,
        extra_instances: Sequence[LoadedModel] = (),
        events: Callable[[bytes, str | None, Any], None] | None = None,
        streams: StreamStates | None = None,
        post: Postprocess | None = None,
        stream_rows: int = 1,
    ) -> None:
        self.loaded = loaded
        self.instances = (loaded, *extra_instances)
        self.name = loaded.config.name
        self.version = loaded.config.version
        self.plan = plan or BatchPlan.for_model(loaded.io, loaded.constants, 1)
        self.delay = max_queue_delay_us / 1e6
        self._ledger = ledger
        self._publish = publish
        self._events = events  # every result, also to the events topic (Home Assistant)
        self.streams = streams  # state per stream id, for stateful models
        self.stream_rows = stream_rows  # rows one run of a stateful model may take
        self.post = post  # model.toml [postprocess]: outputs to a small result
        self.stats = stats
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._locks = [threading.Lock() for _ in self.instances]  # one inference per instance
        self._infer_ewma: float | None = None  # seconds per backend run, recent
        # Requests of a fast model that came in one burst of reads, kept to run as one batch
        # (see offer); only the network thread touches them.
        self._pending: list[Job] = []
        self._pending_rows = 0
        self._defers = self.streams is None and self.plan.batches
        self._threads = [
            threading.Thread(
                target=self._run, args=(i,), name=f"model-{self.name}-{i}", daemon=True
            )
            for i in range(len(self.instances))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def offer(self, job: Job, *, defer: bool = False) -> bool:
        """Run ``job`` on the caller's (network) thread when a hand-off would cost more than the
        inference: a fast model (recent runs under ``INLINE_S``), nothing queued or running, the
        first instance idle. Else queue it; False when the queue is full (answer ``busy``).

        ``defer`` (the network thread, reading a burst of messages): a fast model's request is
        kept, to run with the others of the burst as one batch at :meth:`flush`.
        """
        fast = self._infer_ewma is not None and self._infer_ewma < INLINE_S
        if defer and fast and self._defers and self._queue.unfinished_tasks == 0:
            rows = self.plan.rows(job.feeds)
            pending = self._pending
            if pending and (
                not self.plan.fits(pending[0].feeds, job.feeds)
                or self._pending_rows + rows > self.plan.max_batch
            ):
                self.flush()
            self._pending.append(job)
            self._pending_rows += rows
            return True
        if fast and self._queue.unfinished_tasks == 0 and self._locks[0].acquire(blocking=False):
            try:
                self._serve(self.instances[0], [job])
            except Exception:  # a bug must not reach the network thread
                log.exception("%s: serving a request failed", self.name)
            finally:
                self._locks[0].release()
            return True
        return self.submit(job)

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

    def flush(self) -> None:
        """Run the requests :meth:`offer` kept back, as one batch."""
        if not self._pending:
            return
        batch, self._pending, self._pending_rows = self._pending, [], 0
        with self._locks[0]:
            try:
                self._serve(self.instances[0], batch)
            except Exception:  # a bug must not reach the network thread
                log.exception("%s: serving a batch failed", self.name)

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued (or kept back) has been answered; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0 and not self._pending:
                return True
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0 and not self._pending

    def stop(self) -> None:
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        for instance in self.instances:
            instance.close()

    def _run(self, index: int) -> None:
        instance, lock = self.instances[index], self._locks[index]
        carry: Job | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                self._queue.task_done()
                return
            batch = [first]
            try:
                carry = self._gather(batch)
                with lock:
                    self._serve(instance, batch)
            except Exception:  # a bug must not stop this model's worker
                log.exception("%s: serving a batch failed", self.name)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _gather(self, batch: list[Job]) -> Job | None:
        """Add queued jobs that fit to ``batch`` (up to max_batch rows, waiting at most the queue
        delay); the first that does not fit is returned, to start the next batch. Stateful
        models batch requests of different streams (one each: a stream's come in order)."""
        plan = self.plan
        if self.streams is not None:
            return self._gather_streams(batch)
        if not plan.batches:
            return None
        rows = plan.rows(batch[0].feeds)
        # With several instances, one takes its share of a backlog, not all of it: a batch of
        # everything would keep the last of it waiting a whole long run while the other
        # instances go idle. No backlog: it waits the queue delay for more, up to max batch, as
        # one instance does.
        limit = plan.max_batch
        queued = self._queue.qsize()
        if len(self.instances) > 1 and queued:
            share = -(-(queued + rows) // len(self.instances))  # rounded up
            limit = min(limit, max(share, rows))
        flush_at = time.monotonic() + self.delay
        while rows < limit:
            wait = flush_at - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            if job is None:
                self._queue.put(None)  # stop: let this thread (or another) see it after this batch
                self._queue.task_done()
                return None
            job_rows = plan.rows(job.feeds)
            if not plan.fits(batch[0].feeds, job.feeds) or rows + job_rows > limit:
                return job
            batch.append(job)
            rows += job_rows
        return None

    def _gather_streams(self, batch: list[Job]) -> Job | None:
        first = batch[0].feeds
        rows = stacking.row_count(first)
        streams = {batch[0].stream}
        while rows < self.stream_rows:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return None
            if job is None:
                self._queue.put(None)
                self._queue.task_done()
                return None
            job_rows = stacking.row_count(job.feeds)
            fits = stacking.stackable(first, job.feeds, first)
            if not fits or job.stream in streams or rows + job_rows > self.stream_rows:
                return job  # the next batch starts with it: a stream's requests stay in order
            batch.append(job)
            streams.add(job.stream)
            rows += job_rows
        return None

    def _serve(self, instance: LoadedModel, batch: list[Job]) -> None:
        start = time.monotonic()
        live = []
        for job in batch:
            if job.deadline is not None and start > job.deadline:
                expired = error_reply(job.id, ErrorCode.EXPIRED, "deadline passed in queue")
                self._answer(job, expired, code=ErrorCode.EXPIRED.value)
            else:
                live.append(job)
        if not live:
            return
        try:
            outputs = self._infer(instance, live)
        except EdgertError as exc:
            if len(live) > 1:  # one request may spoil a batch: run each alone to find it
                for job in live:
                    self._serve(instance, [job])
                return
            code = error_code(exc)
            self._answer(live[0], error_reply(live[0].id, code, exc.message), code=code.value)
            return
        done = time.monotonic()
        took = done - start
        ewma = self._infer_ewma
        self._infer_ewma = took if ewma is None else 0.8 * ewma + 0.2 * took
        for job, result in zip(live, outputs, strict=True):
            self._reply(job, result, start, done)
        self.stats.record_batch(len(live))

    def _infer(self, instance: LoadedModel, live: list[Job]) -> list[dict[str, np.ndarray]]:
        """One run of ``live``'s requests, stacked; each request's outputs, in order."""
        # Decoding validated each request against the specs: no second pass here.
        if self.streams is None:
            feeds = self.plan.stack([j.feeds for j in live])
            rows = [self.plan.rows(j.feeds) for j in live]
            return self.plan.split(instance.infer(feeds, check=False), rows)
        # Each stream's state in, stacked, and back out.
        plan = self.streams.plan
        fulls = [self.streams.feeds(j.stream, j.reset, j.feeds) for j in live]
        rows = [stacking.row_count(j.feeds) for j in live]
        results = plan.split(instance.infer(plan.stack(fulls), check=False), rows)
        outputs = []
        for job, full, result in zip(live, fulls, results, strict=True):
            self.streams.update(job.stream, full, result)
            outputs.append({k: v for k, v in result.items() if k not in plan.internal_outputs})
        return outputs

    def _reply(self, job: Job, result: dict[str, np.ndarray], start: float, done: float) -> None:
        """Post-process one request's outputs and answer it (and the events hook)."""
        latency = {  # ms; ok_reply rounds them
            "queue": (start - job.received) * 1000,
            "infer": (done - start) * 1000,
            "total": (done - job.received) * 1000,
        }
        try:
            summary = self.post.apply(result, job.transform) if self.post else None
        except EdgertError as exc:
            # The request ran: whatever post-processing its outputs fails on is the model's
            # configuration, not the device's request.
            failed = error_reply(job.id, ErrorCode.INTERNAL, f"post-processing: {exc.message}")
            self._answer(job, failed, code=ErrorCode.INTERNAL.value)
            return
        reply = ok_reply(
            job.id, self.name, self.version, result, summary, latency, compact=job.compact
        )
        self.stats.record_ok(done - job.received, done - start)
        self._answer(job, reply, code=None)
        if self._events is not None:
            self._events(reply, job.stream, summary)

    def _answer(self, job: Job, reply: bytes, *, code: str | None) -> None:
        # Error replies a retry could fix (busy, expired) are not cached.
        cache = code != ErrorCode.EXPIRED.value
        if code is not None:
            self.stats.record_error(code)
        for waiter in self._ledger.finish(job.key, job.waiter, reply, cache):
            self._publish(waiter, reply)
