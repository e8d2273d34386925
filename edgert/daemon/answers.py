"""The replies stage's model side: one request's :data:`~edgert.daemon.runner.Result` in, its
reply encoded and handed to the publish function of every requester waiting on it.

Here a result is post-processed (model.toml ``[postprocess]``), encoded, recorded in the
request ledger (so a repeat of the request gets the same reply) and in the model's stats, and
shown to the events hook. Nothing here calls back into the scheduler or the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgert.daemon.counts import Outcome
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.runner import Failure, Outputs, Result
from edgert.daemon.scheduler import Job
from edgert.daemon.stats import ModelStats
from edgert.errors import EdgertError
from edgert.pipeline import Postprocess
from edgert.protocol import ErrorCode, error_reply, ok_reply

__all__ = ["Answers", "EventsFn", "PublishFn"]

# A reply to one waiter, with what it says (for the metrics: edgert.daemon.counts).
PublishFn = Callable[[Waiter, bytes, Outcome], None]
# Every ok reply, with its stream and post-processed summary (the events topic, Home Assistant).
EventsFn = Callable[[bytes, str | None, Any], None]


class Answers:
    """Answers the results of model ``name`` ``version``, run on ``backend`` (named in every
    ok reply): call it with each :data:`Result`."""

    def __init__(
        self,
        name: str,
        version: str,
        ledger: RequestLedger,
        publish: PublishFn,
        stats: ModelStats,
        *,
        post: Postprocess | None = None,
        events: EventsFn | None = None,
        backend: str | None = None,
        max_reply: int | None = None,
    ) -> None:
        self.name, self.version, self.backend = name, version, backend
        self.max_reply = max_reply
        self.post = post
        self._ledger = ledger
        self._publish = publish
        self._stats = stats
        self._events = events
        self._success = Outcome(name, version)  # made once: an ok reply allocates nothing here

    def __call__(self, result: Result) -> None:
        if isinstance(result, Failure):
            reply = error_reply(result.job.id, result.code, result.message)
            self._answer(result.job, reply, code=result.code)
        else:
            self._ok(result)

    def _ok(self, result: Outputs) -> None:
        """Post-process one request's outputs and answer it (and the events hook)."""
        job, start, done = result.job, result.start, result.done
        latency = {  # ms; ok_reply rounds them
            "queue": (start - job.received) * 1000,
            "infer": (done - start) * 1000,
            "total": (done - job.received) * 1000,
        }
        try:
            summary = self.post.apply(result.outputs, job.transform) if self.post else None
        except EdgertError as exc:
            # The request ran: whatever post-processing its outputs fails on is the model's
            # configuration, not the device's request.
            failed = error_reply(job.id, ErrorCode.INTERNAL, f"post-processing: {exc.message}")
            self._answer(job, failed, code=ErrorCode.INTERNAL)
            return
        reply = self._reply(job, result.outputs, summary, latency, compact=job.compact)
        limit = self.max_reply
        if limit is not None and summary is not None and not job.compact and len(reply) > limit:
            # The raw outputs would make it too large to send (a detector's head, for a camera
            # that cannot ask for compact over MQTT 3.1.1): the result they came to is what the
            # device wants, so it goes compact, as if asked.
            reply = self._reply(job, result.outputs, summary, latency, compact=True)
        self._stats.record_ok(done - job.received, done - start)
        self._answer(job, reply, code=None)
        if self._events is not None:
            self._events(reply, job.stream, summary)

    def _reply(
        self,
        job: Job,
        outputs: dict[str, np.ndarray],
        summary: Any,
        latency: dict[str, float],
        *,
        compact: bool,
    ) -> bytes:
        return ok_reply(
            job.id,
            self.name,
            self.version,
            outputs,
            summary,
            latency,
            compact=compact,
            backend=self.backend,
        )

    def _answer(self, job: Job, reply: bytes, *, code: ErrorCode | None) -> None:
        # An error a retry could fix (expired) is not cached: the retry runs.
        cache = code is not ErrorCode.EXPIRED
        outcome = self._success
        if code is not None:
            self._stats.record_error(code.value)
            outcome = Outcome(self.name, self.version, code.value)
        for waiter in self._ledger.finish(job.key, job.waiter, reply, cache):
            self._publish(waiter, reply, outcome)
