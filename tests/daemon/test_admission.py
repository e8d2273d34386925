"""The admission stage without a broker or a model: accepted requests in, jobs offered to a
worker that records them (its queue full on demand), and what admission answers itself out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgert.daemon.admission import Admission, Answer
from edgert.daemon.counts import Outcome
from edgert.daemon.intake import Accepted
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.models import Served
from edgert.daemon.scheduler import Job
from edgert.daemon.stats import ModelStats
from edgert.protocol import ErrorCode, Request
from edgert.settings import DaemonConfig
from tests.daemon.stages import TOPICS, request


class Worker:
    """A model's worker as admission sees it: offers recorded, the queue full when told."""

    name = "occupancy"
    version = "3"

    def __init__(self) -> None:
        self.stats = ModelStats()
        self.offered: list[tuple[Job, bool]] = []
        self.full = False

    def offer(self, job: Job, *, defer: bool = False) -> bool:
        if self.full:
            return False
        self.offered.append((job, defer))
        return True


def accepted(
    worker: Worker,
    *,
    id: str | int | None = "a",
    device: str = "kitchen",
    deadline_ms: float | None = None,
    received: float = 100.0,
    mid: int = 7,
) -> Accepted:
    destination = f"edgert/reply/{device}/occupancy"
    message = request("edgert/infer/occupancy", b"{}", mid=mid, correlation=b"c")
    inputs = {"readings": np.zeros((1, 4), np.float32)}
    req = Request("occupancy", id, destination, deadline_ms, "s1", True, False, inputs)
    served = Served(None, worker, None, None, None, ())  # only its worker is admission's
    return Accepted(served, req, None, destination, 1, received, message)


def admission(**config: Any) -> Admission:
    return Admission(DaemonConfig(**config), TOPICS, RequestLedger())


def test_a_request_becomes_a_job_with_its_deadline_from_its_arrival() -> None:
    worker, stage = Worker(), admission()
    first = accepted(worker, deadline_ms=250, received=100.0)
    assert stage.admit(first, defer=True) is None
    ((job, defer),) = worker.offered
    assert defer and (job.id, job.key) == ("a", ("edgert/reply/kitchen/occupancy", "a"))
    assert job.deadline == 100.25 and job.received == 100.0
    assert (job.stream, job.reset, job.compact) == ("s1", True, False)
    assert job.waiter == Waiter(
        "edgert/reply/kitchen/occupancy", b"c", 1, ack=first.message, request_id="a"
    )
    assert worker.stats.requests == 1 and stage.ledger.in_flight() == 1
    assert stage.admit(accepted(worker, id=None)) is None
    assert worker.offered[-1][0].key is None and worker.offered[-1][0].deadline is None


def test_a_repeat_in_flight_joins_and_a_repeat_answered_gets_the_cached_reply() -> None:
    worker, stage = Worker(), admission()
    assert stage.admit(accepted(worker, mid=1)) is None
    assert stage.admit(accepted(worker, mid=2)) is None  # joined: not offered again
    assert len(worker.offered) == 1 and stage.ledger.joined == 1
    job = worker.offered[0][0]
    waiters = stage.ledger.finish(job.key, job.waiter, b'{"id":"a","ok":true}', cache=True)
    assert [w.ack.mid for w in waiters if w.ack] == [1, 2]
    again = accepted(worker, mid=3)
    answer = stage.admit(again)
    assert isinstance(answer, Answer) and answer.reply == b'{"id":"a","ok":true}'
    assert answer.outcome == Outcome("occupancy", "3")  # the cached reply's, for /metrics
    (waiter,) = answer.waiters
    assert waiter.ack is again.message and len(worker.offered) == 1
    other = stage.admit(accepted(worker, device="hall", mid=4))  # another destination: runs
    assert other is None and len(worker.offered) == 2


def test_a_full_queue_answers_busy_uncached_so_a_retry_runs() -> None:
    worker, stage = Worker(), admission()
    worker.full = True
    answer = stage.admit(accepted(worker, id=4))
    assert isinstance(answer, Answer) and len(answer.waiters) == 1
    doc = json.loads(answer.reply)
    assert doc["id"] == 4 and doc["error"]["code"] == ErrorCode.BUSY.value
    assert answer.outcome == Outcome("occupancy", "3", "busy")
    assert worker.stats.errors[ErrorCode.BUSY.value] == 1 and stage.ledger.in_flight() == 0
    worker.full = False
    assert stage.admit(accepted(worker, id=4)) is None and len(worker.offered) == 1


def test_each_device_has_its_own_rate_limit() -> None:
    worker, stage = Worker(), admission(rate_limit=1.0, rate_burst=1.0)
    assert stage.admit(accepted(worker, id=1)) is None
    answer = stage.admit(accepted(worker, id=2))
    assert isinstance(answer, Answer)
    doc = json.loads(answer.reply)
    assert doc["id"] == 2 and doc["error"]["code"] == ErrorCode.RATE_LIMITED.value
    assert "device 'kitchen'" in doc["error"]["message"]
    assert answer.outcome == Outcome("occupancy", "3", "rate_limited")
    assert answer.waiters[0].topic == "edgert/reply/kitchen/occupancy"
    assert stage.admit(accepted(worker, id=3, device="hall")) is None
    assert [job.id for job, _ in worker.offered] == [1, 3]
    assert worker.stats.errors[ErrorCode.RATE_LIMITED.value] == 1


def test_a_sources_request_is_compact_uncached_and_expires_after_its_timeout() -> None:
    worker, stage = Worker(), admission()
    waiter = Waiter("", None, 0)
    assert stage.admit_local(accepted(worker, received=50.0), waiter, 2.0)
    ((job, defer),) = worker.offered
    assert not defer and job.compact and (job.id, job.key) == (None, None)
    assert job.deadline == 52.0 and job.waiter is waiter
    worker.full = True
    assert not stage.admit_local(accepted(worker), waiter, 2.0)
    assert worker.stats.errors[ErrorCode.BUSY.value] == 1 and worker.stats.requests == 2
