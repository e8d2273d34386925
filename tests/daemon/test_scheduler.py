"""The scheduler stage without a broker or a model: the bounded queue, one gather for batches and
streams, a backlog's share per instance, the queue delay, and the inline policy.

Feeds are plain arrays and the plan is built by hand: the scheduler only looks at their shapes.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from edgert.daemon.batcher import BatchPlan
from edgert.daemon.ledger import Waiter
from edgert.daemon.scheduler import (
    INLINE_S,
    Batch,
    Grouping,
    InlinePolicy,
    Job,
    Route,
    Scheduler,
)

PLAN = BatchPlan(("x",), ("y",), 8)  # requests of [rows, 4], up to 8 rows a run


def _job(name: str, rows: int = 1, width: int = 4, stream: str | None = None) -> Job:
    feeds = {"x": np.zeros((rows, width), np.float32)}
    return Job(
        name, None, Waiter(f"r/{name}", None, 0), feeds, time.monotonic(), None, False, stream
    )


def _ids(batch: Batch | None) -> list[str | int | None]:
    assert batch is not None
    return [job.id for job in batch.jobs]


def _scheduler(grouping: Grouping | None = None, size: int = 64, instances: int = 1) -> Scheduler:
    return Scheduler(grouping or Grouping.batches(PLAN), size, instances=instances)


def test_the_queue_is_bounded_and_a_backlog_is_taken_max_batch_rows_at_a_time() -> None:
    scheduler = _scheduler(size=12)
    for n in range(12):
        assert scheduler.submit(_job(f"j{n}"))
    assert not scheduler.submit(_job("over"))  # full: the caller answers busy
    assert scheduler.depth == 12
    first = scheduler.take(0)
    assert _ids(first) == [f"j{n}" for n in range(8)] and first is not None
    assert first.instance == 0
    assert _ids(scheduler.take(0)) == [f"j{n}" for n in range(8, 12)]
    assert scheduler.depth == 0


def test_rows_count_and_a_request_that_does_not_fit_starts_the_next_batch() -> None:
    scheduler = _scheduler()
    jobs = [_job("a", 3), _job("b", 4), _job("c", 2), _job("wide", 1, width=5), _job("d", 1)]
    for job in jobs:
        scheduler.submit(job)
    assert _ids(scheduler.take(0)) == ["a", "b"]  # 7 rows; c's 2 would make 9
    assert _ids(scheduler.take(0)) == ["c"]  # wide does not stack with c
    assert _ids(scheduler.take(0)) == ["wide"]  # nor d with wide
    assert _ids(scheduler.take(0)) == ["d"]


def test_a_model_that_does_not_batch_takes_one_request_a_run() -> None:
    scheduler = _scheduler(Grouping.batches(BatchPlan(("x",), ("y",), 1), delay_s=60))
    for name in "abc":
        scheduler.submit(_job(name))
    assert [_ids(scheduler.take(0)) for _ in "abc"] == [["a"], ["b"], ["c"]]  # no wait either


@pytest.mark.parametrize(("instances", "taken"), [(1, 8), (2, 6), (3, 4)])
def test_with_several_instances_a_batch_takes_its_share_of_the_queue(
    instances: int, taken: int
) -> None:
    """12 queued, max batch 8: one instance takes 8; of two, the first takes 6 and leaves 6 for
    the other (not 8 and 4, which would keep the last of the 8 waiting a longer run)."""
    scheduler = _scheduler(instances=instances)
    for n in range(12):
        scheduler.submit(_job(f"j{n}"))
    batch = scheduler.take(0)
    assert batch is not None and len(batch.jobs) == taken and scheduler.depth == 12 - taken


def test_with_several_instances_and_no_backlog_a_batch_still_waits_the_delay() -> None:
    """The share is of a backlog: a lone request still waits the queue delay for others to
    join it, as with one instance (here they come, and fill the batch before the delay)."""
    # A delay far longer than the test: the batch fills first.
    scheduler = _scheduler(Grouping.batches(BatchPlan(("x",), ("y",), 4), 30.0), instances=2)
    arrivals = [_job(n) for n in ("j3", "j2", "j1")]

    class Arriving(queue.Queue[Job | None]):
        """Jobs come in once the gather waits for them (none were queued when it began)."""

        def get(self, block: bool = True, timeout: float | None = None) -> Job | None:
            if timeout is not None:
                while arrivals:
                    self.put_nowait(arrivals.pop())
            return super().get(block, timeout)

    scheduler._queue = Arriving(maxsize=64)
    scheduler.submit(_job("j0"))
    assert _ids(scheduler.take(0)) == ["j0", "j1", "j2", "j3"]


def test_a_partial_batch_goes_when_the_delay_is_up() -> None:
    scheduler = _scheduler(Grouping.batches(PLAN, delay_s=0.05))
    scheduler.submit(_job("alone"))
    began = time.monotonic()
    assert _ids(scheduler.take(0)) == ["alone"]
    assert time.monotonic() - began < 5  # not waiting for a full batch


def test_a_stop_ends_the_batch_being_gathered_and_then_every_take() -> None:
    scheduler = _scheduler(Grouping.batches(PLAN, delay_s=30.0), instances=2)
    scheduler.submit(_job("a"))
    scheduler.stop()
    batch = scheduler.take(0)
    assert _ids(batch) == ["a"]  # did not wait out the delay behind the stop
    assert batch is not None
    assert not scheduler.settled  # taken, not yet answered
    scheduler.done(batch)
    assert scheduler.take(0) is None and scheduler.take(1) is None
    assert scheduler.settled


def test_streams_share_a_run_one_request_per_stream_in_order() -> None:
    """The one gather, for a stateful model: a stream's second request starts the next batch, so
    every stream's requests run in the order they came."""
    scheduler = _scheduler(Grouping.streams(16))
    order = [("a", 0), ("b", 0), ("a", 1), ("c", 0), ("b", 1), ("c", 1)]
    for stream, n in order:
        scheduler.submit(_job(f"{stream}{n}", stream=stream))
    assert _ids(scheduler.take(0)) == ["a0", "b0"]
    assert _ids(scheduler.take(0)) == ["a1", "c0", "b1"]
    assert _ids(scheduler.take(0)) == ["c1"]


def test_streams_are_bounded_by_the_rows_one_run_may_take_and_do_not_wait() -> None:
    scheduler = _scheduler(Grouping.streams(2))
    for stream in "abc":
        scheduler.submit(_job(stream, stream=stream))
    assert _ids(scheduler.take(0)) == ["a", "b"]
    assert _ids(scheduler.take(0)) == ["c"]  # alone: nothing else queued, and no delay
    unbatched = _scheduler(Grouping.streams(1))
    for stream in "ab":
        unbatched.submit(_job(stream, stream=stream))
    assert _ids(unbatched.take(0)) == ["a"]


def test_the_inline_policy_on_both_sides_of_its_threshold() -> None:
    policy = InlinePolicy()
    assert policy.threshold_s == INLINE_S
    fast, slow = INLINE_S / 2, INLINE_S * 2
    assert policy.route(fast, idle=True, burst=False) is Route.INLINE
    assert policy.route(slow, idle=True, burst=False) is Route.QUEUE
    assert policy.route(None, idle=True, burst=False) is Route.QUEUE  # never ran: unknown
    assert policy.route(fast, idle=False, burst=False) is Route.QUEUE  # others wait: no jumping
    assert policy.route(fast, idle=True, burst=True) is Route.KEEP
    assert policy.route(slow, idle=True, burst=True) is Route.QUEUE
    # The threshold is the policy's parameter, not the machine's.
    assert InlinePolicy(slow * 2).route(slow, idle=True, burst=False) is Route.INLINE
    assert InlinePolicy(0.0).route(0.0, idle=True, burst=False) is Route.QUEUE
    with pytest.raises(ValueError, match="threshold_s"):
        InlinePolicy(-1.0)


def test_the_scheduler_routes_inline_only_when_nothing_is_queued_or_running() -> None:
    scheduler = _scheduler()
    fast = INLINE_S / 2
    assert scheduler.route(fast, defer=False) is Route.INLINE
    scheduler.submit(_job("queued"))
    assert scheduler.route(fast, defer=False) is Route.QUEUE
    batch = scheduler.take(0)
    assert scheduler.route(fast, defer=False) is Route.QUEUE  # taken, still running
    assert batch is not None
    scheduler.done(batch)
    assert scheduler.route(fast, defer=False) is Route.INLINE
    assert scheduler.route(fast, defer=True) is Route.KEEP
    assert scheduler.route(INLINE_S * 2, defer=True) is Route.QUEUE


@pytest.mark.parametrize(
    "grouping",
    [Grouping.streams(16), Grouping.batches(BatchPlan(("x",), ("y",), 1))],
    ids=["streams", "no-batching"],
)
def test_a_burst_is_kept_only_where_it_can_run_as_one_batch(grouping: Grouping) -> None:
    scheduler = _scheduler(grouping)
    assert scheduler.route(INLINE_S / 2, defer=True) is Route.INLINE


def test_a_burst_is_kept_and_cut_where_the_next_request_cannot_join_it() -> None:
    scheduler = _scheduler()
    assert scheduler.keep(_job("a", 3)) is None
    assert scheduler.keep(_job("b", 4)) is None
    assert not scheduler.settled  # kept requests are still to answer
    c = _job("c", 2)
    earlier = scheduler.keep(c)  # 9 rows: the kept 7 must run first
    assert _ids(earlier) == ["a", "b"] and earlier is not None and earlier.instance == 0
    assert scheduler.keep(c) is None  # then c is kept
    assert scheduler.keep(_job("d", 1)) is None
    assert _ids(scheduler.keep(_job("wide", 1, width=5))) == ["c", "d"]  # does not stack
    assert scheduler.flush() is None  # what was cut went to the caller; nothing else kept
    assert scheduler.settled and scheduler.depth == 0


def test_flush_hands_over_the_kept_burst_once() -> None:
    scheduler = _scheduler()
    for name in "ab":
        assert scheduler.keep(_job(name)) is None
    assert _ids(scheduler.flush()) == ["a", "b"]
    assert scheduler.flush() is None
    assert scheduler.settled


def test_groupings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        Grouping(0)
    with pytest.raises(ValueError, match="delay_s"):
        Grouping(4, delay_s=-1)
    assert Grouping.streams(0).max_rows == 1  # a stateful model without a batch dim


def test_each_instance_takes_from_one_queue_in_its_own_thread() -> None:
    scheduler = _scheduler(Grouping.batches(BatchPlan(("x",), ("y",), 1)), instances=2)
    taken: list[list[str | int | None]] = [[], []]

    def instance(index: int) -> None:
        while (batch := scheduler.take(index)) is not None:
            taken[index] += [job.id for job in batch.jobs]
            scheduler.done(batch)

    threads = [threading.Thread(target=instance, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for n in range(20):
        assert scheduler.submit(_job(f"j{n}"))
    scheduler.stop()
    for thread in threads:
        thread.join(10)
    assert sorted(taken[0] + taken[1], key=lambda i: int(str(i)[1:])) == [
        f"j{n}" for n in range(20)
    ]
    assert scheduler.settled
