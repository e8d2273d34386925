"""The scheduler stage of one model: its bounded queue, which queued requests share a run, and
where a request runs (a :class:`Batch` for an instance's thread, or the caller's thread).

Batching and stateful streams gather with one algorithm, told apart by a :class:`Grouping`: rows
and stackability from the model's :class:`~edgert.daemon.batcher.BatchPlan`, or, for streams,
from the request's own inputs (:mod:`edgert.daemon.stacking`), one request per stream a run.
Running a fast model on the caller's thread is the :class:`InlinePolicy`, stated here.
"""

from __future__ import annotations

import enum
import logging
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from edgert.daemon import stacking
from edgert.daemon.batcher import BatchPlan
from edgert.daemon.ledger import LedgerKey, Waiter

__all__ = ["INLINE_S", "Batch", "Grouping", "InlinePolicy", "Job", "Route", "Scheduler"]

log = logging.getLogger("edgert.daemon")

# For a run shorter than this, handing the request to another thread and waking the network
# thread to send the reply costs more than the inference itself.
INLINE_S = 0.001


class Job(msgspec.Struct):
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


class Batch(msgspec.Struct, frozen=True):
    """The scheduler's hand-off: requests one backend run takes together, in order, on
    instance ``instance`` (an index into the model's instances)."""

    jobs: tuple[Job, ...]
    instance: int = 0


@dataclass(frozen=True)
class Grouping:
    """Which queued requests one run may take: up to ``max_rows`` rows of stackable requests,
    a partial batch waiting at most ``delay_s`` for more.

    ``plan`` gives rows and stackability for a batching model; a stateful model has none (its
    carried inputs are not in the request), so the request's own inputs are compared, and
    ``per_stream`` keeps one request per stream in a run: a stream's requests run in order.
    """

    max_rows: int  # 1: each request runs alone
    delay_s: float = 0.0
    plan: BatchPlan | None = None
    per_stream: bool = False

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.delay_s < 0:
            raise ValueError(f"max_rows must be >= 1 and delay_s >= 0, got {self}")

    @classmethod
    def batches(cls, plan: BatchPlan, delay_s: float = 0.0) -> Grouping:
        """A stateless model's: as its batch plan allows."""
        return cls(plan.max_batch, delay_s, plan)

    @classmethod
    def streams(cls, max_rows: int) -> Grouping:
        """A stateful model's: one request per stream, taking only what is queued (no delay:
        each stream's next chunk waits on this run's state anyway)."""
        return cls(max(1, max_rows), per_stream=True)

    def rows(self, feeds: Mapping[str, np.ndarray]) -> int:
        return self.plan.rows(feeds) if self.plan is not None else stacking.row_count(feeds)

    def fits(self, first: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> bool:
        if self.plan is not None:
            return self.plan.fits(first, other)
        return stacking.stackable(first, other, first)


class Route(enum.Enum):
    """Where :meth:`Scheduler.route` sends an offered request."""

    QUEUE = "queue"  # to the queue, for an instance's thread
    INLINE = "inline"  # run on the caller's thread now, if the first instance is idle
    KEEP = "keep"  # kept with the rest of the caller's burst, run as one batch at flush


@dataclass(frozen=True)
class InlinePolicy:
    """When a request runs on the thread that offers it (the network thread) instead of being
    handed to an instance's thread: when the model's recent runs take under ``threshold_s`` and
    nothing is queued or running, since then the hand-off and waking the network thread to send
    the reply would cost more than the run. (The caller still falls back to the queue when the
    first instance is busy.) In a burst of reads such requests are kept and run together.

    The threshold is a parameter rather than measured: a measured thread hand-off swings with
    load, and a threshold that moved would make whether a model runs inline vary run to run.
    """

    threshold_s: float = INLINE_S

    def __post_init__(self) -> None:
        if self.threshold_s < 0:
            raise ValueError(f"threshold_s must be >= 0, got {self.threshold_s}")

    def fast(self, recent_s: float | None) -> bool:
        """Whether runs of ``recent_s`` (None: the model has not run yet) are short enough."""
        return recent_s is not None and recent_s < self.threshold_s

    def route(self, recent_s: float | None, *, idle: bool, burst: bool) -> Route:
        """``idle``: nothing queued or running; ``burst``: the caller is reading a burst of
        messages and the model batches them."""
        if not (idle and self.fast(recent_s)):
            return Route.QUEUE
        return Route.KEEP if burst else Route.INLINE


class Scheduler:
    """One model's bounded queue, gathered into :class:`Batch` es for ``instances`` threads
    (:meth:`take`, :meth:`done`), and the requests the caller's burst kept (:meth:`keep`,
    :meth:`flush`). Thread-safe, but :meth:`keep` and :meth:`flush` belong to one caller (the
    network thread)."""

    def __init__(
        self,
        grouping: Grouping,
        queue_size: int,
        *,
        instances: int = 1,
        policy: InlinePolicy | None = None,
    ) -> None:
        self.grouping = grouping
        self.instances = instances
        self.policy = policy or InlinePolicy()
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        # The job each instance's gather took but could not fit: it starts that one's next batch.
        self._carry: list[Job | None] = [None] * instances
        self._kept: list[Job] = []
        self._kept_rows = 0
        # A burst is kept only to run it as one batch, so only where requests share batches and
        # no stream order is at stake.
        self._bursts = grouping.max_rows > 1 and not grouping.per_stream

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers ``busy``)."""
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            return False

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue (not those taken, carried or kept)."""
        return self._queue.qsize()

    @property
    def settled(self) -> bool:
        """Nothing queued, being run from the queue, or kept."""
        return self._queue.unfinished_tasks == 0 and not self._kept

    def route(self, recent_s: float | None, *, defer: bool) -> Route:
        """Where the policy sends a request offered now, given the model's recent run time;
        ``defer``: the caller is reading a burst."""
        idle = self._queue.unfinished_tasks == 0
        return self.policy.route(recent_s, idle=idle, burst=defer and self._bursts)

    def keep(self, job: Job) -> Batch | None:
        """Keep ``job`` for the burst's batch, and return None; or, when it cannot join what is
        kept (it does not stack, or the rows would pass the batch), return that instead,
        keeping nothing: the caller runs it, then keeps ``job`` again."""
        rows = self.grouping.rows(job.feeds)
        kept = self._kept
        if kept and (
            not self.grouping.fits(kept[0].feeds, job.feeds)
            or self._kept_rows + rows > self.grouping.max_rows
        ):
            return self.flush()
        kept.append(job)
        self._kept_rows += rows
        return None

    def flush(self) -> Batch | None:
        """What :meth:`keep` kept, as one batch for the first instance; None if nothing."""
        if not self._kept:
            return None
        jobs, self._kept, self._kept_rows = tuple(self._kept), [], 0
        return Batch(jobs, 0)

    def take(self, index: int) -> Batch | None:
        """The next batch for instance ``index``, waiting for one; None once stopping. Each batch
        taken is handed back to :meth:`done` once answered."""
        first = self._carry[index]
        self._carry[index] = None
        if first is None:
            first = self._queue.get()
        if first is None:
            self._queue.task_done()
            return None
        jobs = [first]
        try:
            self._carry[index] = self._gather(jobs)
        except Exception:  # a bug must not stop this model's instance: run what was gathered
            log.exception("gathering a batch failed")
        return Batch(tuple(jobs), index)

    def done(self, batch: Batch) -> None:
        """``batch`` (from :meth:`take`) is answered: what :attr:`settled` waits for."""
        for _ in batch.jobs:
            self._queue.task_done()

    def stop(self) -> None:
        """Make every instance's :meth:`take` return None, after what is queued before it."""
        for _ in range(self.instances):
            self._queue.put(None)

    def _gather(self, jobs: list[Job]) -> Job | None:
        """Add queued jobs that fit to ``jobs`` (up to the rows limit, waiting at most the
        delay); the first that does not fit is returned, to start the next batch."""
        grouping = self.grouping
        first = jobs[0]
        rows = grouping.rows(first.feeds)
        limit = self._limit(rows)
        streams = {first.stream}
        flush_at = time.monotonic() + grouping.delay_s
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
            job_rows = grouping.rows(job.feeds)
            if (
                not grouping.fits(first.feeds, job.feeds)
                or rows + job_rows > limit
                or (grouping.per_stream and job.stream in streams)
            ):
                return job  # the next batch starts with it: a stream's requests stay in order
            jobs.append(job)
            streams.add(job.stream)
            rows += job_rows
        return None

    def _limit(self, rows: int) -> int:
        """Rows one batch may take, its first request bringing ``rows``.

        With several instances, one takes its share of a backlog, not all of it: a batch of
        everything would keep the last of it waiting a whole long run while the other instances
        go idle. No backlog: it waits the delay for more, up to the full batch, as one does.
        """
        limit = self.grouping.max_rows
        queued = self._queue.qsize()
        if self.instances > 1 and queued:
            share = -(-(queued + rows) // self.instances)  # rounded up
            limit = min(limit, max(share, rows))
        return limit
