"""The admission stage: an :class:`~edgert.daemon.intake.Accepted` request in, a
:class:`~edgert.daemon.scheduler.Job` offered to its model's worker out (DESIGN.md, "Serving
core").

On the way a device over its rate is answered ``rate_limited``; the request ledger answers a
repeat of an answered request with its cached reply and lets a repeat of one in flight join it
(neither runs twice); the deadline is set from the first arrival; and a full queue answers
``busy``. What admission answers itself comes out as an :class:`Answer` for the replies stage.
Call it under the models' swap lock, as the intake: the worker offered to is the one serving.
"""

from __future__ import annotations

import msgspec

from edgert.daemon.counts import Outcome, replayed
from edgert.daemon.intake import Accepted
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.limits import RateLimiter
from edgert.daemon.models import Served
from edgert.daemon.worker import Job
from edgert.protocol import ErrorCode, Topics, error_reply
from edgert.settings import DaemonConfig

__all__ = ["Admission", "Answer"]


class Answer(msgspec.Struct, frozen=True):
    """A reply admission gives without running the request, and everyone waiting for it."""

    waiters: tuple[Waiter, ...]
    reply: bytes
    outcome: Outcome


class Admission:
    """Admits requests to their models' workers (the network thread, or a source's)."""

    def __init__(self, config: DaemonConfig, topics: Topics, ledger: RequestLedger) -> None:
        self.config = config
        self.topics = topics
        self.ledger = ledger
        self.limiter = RateLimiter(config.rate_limit, config.burst) if config.rate_limit else None

    def admit(self, accepted: Accepted, *, defer: bool = False) -> Answer | None:
        """Offer ``accepted`` to its worker (None: taken, or joined to the same request in
        flight), or the answer to give now. ``defer`` lets a fast model keep it for the burst's
        batch (the network thread only)."""
        request, served, message = accepted.request, accepted.served, accepted.message
        waiter = Waiter(
            accepted.destination,
            message.correlation,
            accepted.qos,
            ack=message,
            request_id=request.id,
        )
        served.worker.stats.record_request()
        limited = self._rate_limited(accepted.destination)
        if limited is not None:
            served.worker.stats.record_error(ErrorCode.RATE_LIMITED.value)
            reply = error_reply(request.id, ErrorCode.RATE_LIMITED, limited)
            return Answer((waiter,), reply, _failed(served, ErrorCode.RATE_LIMITED))
        ledger_key = (accepted.destination, request.id) if request.id is not None else None
        begin = self.ledger.begin(ledger_key, waiter)
        if begin.cached is not None:
            outcome = replayed(served.worker.name, served.worker.version, begin.cached)
            return Answer((waiter,), begin.cached, outcome)
        if not begin.run:
            return None
        received = accepted.received
        deadline = received + request.deadline_ms / 1000 if request.deadline_ms else None
        job = Job(
            request.id,
            ledger_key,
            waiter,
            request.inputs,
            received,
            deadline,
            request.compact,
            request.stream,
            request.reset,
            accepted.transform,
        )
        if served.worker.offer(job, defer=defer):
            return None
        reply = error_reply(
            request.id, ErrorCode.BUSY, f"{served.worker.name}'s queue is full; retry later"
        )
        served.worker.stats.record_error(ErrorCode.BUSY.value)
        waiters = self.ledger.finish(ledger_key, waiter, reply, cache=False)
        return Answer(tuple(waiters), reply, _failed(served, ErrorCode.BUSY))

    def admit_local(self, accepted: Accepted, waiter: Waiter, timeout: float) -> bool:
        """Offer a source's request, answered to ``waiter`` (compact, never cached, expired
        ``timeout`` seconds after receipt); False when its queue is full."""
        request, served = accepted.request, accepted.served
        deadline = accepted.received + timeout
        job = Job(
            None,
            None,
            waiter,
            request.inputs,
            accepted.received,
            deadline,
            True,
            transform=accepted.transform,
        )
        served.worker.stats.record_request()
        if served.worker.offer(job):  # not deferred: no burst of reads to batch it with
            return True
        served.worker.stats.record_error(ErrorCode.BUSY.value)
        return False

    def _rate_limited(self, destination: str) -> str | None:
        """Why the device ``destination`` belongs to must wait, if it is over its rate."""
        if self.limiter is None:
            return None
        device = self.topics.reply_device(destination)
        wait = self.limiter.take(device)
        if not wait:
            return None
        return (
            f"device '{device}' is over its {self.config.rate_limit:g} requests/s "
            f"(bursts of {self.config.burst:g}); retry in {wait:.2f} s"
        )


def _failed(served: Served, code: ErrorCode) -> Outcome:
    return Outcome(served.worker.name, served.worker.version, code.value)
