"""The runner stage of one model: one inference thread per backend instance, each running the
:class:`~edgert.daemon.scheduler.Batch` es it takes, and every request's :data:`Result` handed
to one callback (the replies stage).

A run: requests past their deadline are answered ``expired`` unrun; the rest are stacked, run
once and split back (a stateful model's streams with their state in and out, via
:class:`~edgert.daemon.streams.StreamStates`). One bad request can fail a whole batch, so a
failed batch is run again request by request to find it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from edgert.daemon import stacking
from edgert.daemon.batcher import BatchPlan
from edgert.daemon.scheduler import Batch, Job
from edgert.daemon.stats import ModelStats
from edgert.daemon.streams import StreamStates
from edgert.errors import EdgertError
from edgert.protocol import ErrorCode, error_code
from edgert.runtime import LoadedModel

__all__ = ["Failure", "Outputs", "Result", "ResultFn", "Runner"]

log = logging.getLogger("edgert.daemon")


class Outputs(msgspec.Struct, frozen=True):
    """A request that ran: its own rows of every output the reply carries."""

    job: Job
    outputs: dict[str, np.ndarray]
    start: float  # monotonic: when its run began
    done: float  # and ended


class Failure(msgspec.Struct, frozen=True):
    """A request that did not run, or whose run failed: the error its reply carries."""

    job: Job
    code: ErrorCode
    message: str


Result = Outputs | Failure
ResultFn = Callable[[Result], None]
TakeFn = Callable[[int], Batch | None]  # the next batch for an instance; None: stop
DoneFn = Callable[[Batch], None]  # a taken batch is answered


class Runner:
    """Runs batches on ``instances`` (one inference at a time on each) and hands each request's
    result to ``deliver``; ``stats`` counts the backend runs.

    Batches come from the threads :meth:`start` begins, one per instance, or from the caller's
    own thread (:meth:`run`, :meth:`try_run`) where the scheduler's policy says so.
    """

    def __init__(
        self,
        instances: Sequence[LoadedModel],
        plan: BatchPlan,
        deliver: ResultFn,
        stats: ModelStats,
        *,
        streams: StreamStates | None = None,
        name: str = "model",
    ) -> None:
        self.instances = tuple(instances)
        self.plan = plan
        self.streams = streams
        self.name = name
        self._deliver = deliver
        self._stats = stats
        self._locks = [threading.Lock() for _ in self.instances]
        self._threads: list[threading.Thread] = []
        self._recent: float | None = None

    @property
    def recent_s(self) -> float | None:
        """Seconds a backend run takes lately (a moving average; None before the first run):
        what the scheduler's inline policy weighs."""
        return self._recent

    def start(self, take: TakeFn, done: DoneFn) -> None:
        """One thread per instance, running what ``take`` gives it until ``take`` gives None,
        telling ``done`` of each batch once its requests are answered."""
        self._threads = [
            threading.Thread(
                target=self._loop, args=(i, take, done), name=f"model-{self.name}-{i}", daemon=True
            )
            for i in range(len(self.instances))
        ]
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        """Wait (each at most ``timeout`` seconds) for the threads, once ``take`` said stop."""
        for thread in self._threads:
            thread.join(timeout=timeout)

    def run(self, batch: Batch) -> None:
        """Run ``batch`` on the caller's thread, once its instance is free."""
        with self._locks[batch.instance]:
            try:
                self._serve(self.instances[batch.instance], batch.jobs)
            except Exception:  # a bug must not reach the caller (the network thread)
                log.exception("%s: serving a batch failed", self.name)

    def try_run(self, batch: Batch) -> bool:
        """Run ``batch`` on the caller's thread if its instance is idle now; False if it is
        busy (nothing ran)."""
        lock = self._locks[batch.instance]
        if not lock.acquire(blocking=False):
            return False
        try:
            self._serve(self.instances[batch.instance], batch.jobs)
        except Exception:  # a bug must not reach the caller (the network thread)
            log.exception("%s: serving a request failed", self.name)
        finally:
            lock.release()
        return True

    def _loop(self, index: int, take: TakeFn, done: DoneFn) -> None:
        while (batch := take(index)) is not None:
            try:
                self.run(batch)
            finally:
                done(batch)

    def _serve(self, instance: LoadedModel, jobs: Sequence[Job]) -> None:
        start = time.monotonic()
        live = []
        for job in jobs:
            if job.deadline is not None and start > job.deadline:
                self._deliver(Failure(job, ErrorCode.EXPIRED, "deadline passed in queue"))
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
            self._deliver(Failure(live[0], error_code(exc), exc.message))
            return
        done = time.monotonic()
        took = done - start
        recent = self._recent
        self._recent = took if recent is None else 0.8 * recent + 0.2 * took
        self._stats.record_batch(len(live))  # before the replies: a requester sees it counted
        for job, result in zip(live, outputs, strict=True):
            self._deliver(Outputs(job, result, start, done))

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
