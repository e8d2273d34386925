"""The replies stage's publishing side: a reply to a :class:`~edgert.daemon.ledger.Waiter`, sent
within the payload limit and the broker's Maximum Packet Size (DESIGN.md, "Serving core").

Every reply names the request it answers (``ack``), so the transport acknowledges a QoS 1
request once the broker has its reply (:mod:`edgert.acks`). A reply too large to send is
answered ``too_large`` with the request's id, which its waiter carries. Refusals from the intake
go to the first allowed topic they may; a source's request is answered to the daemon itself
(:class:`LocalWaiter`). The model side encodes replies (:mod:`edgert.daemon.answers`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgert.daemon.admission import Answer
from edgert.daemon.counts import Outcome, ReplyCounts
from edgert.daemon.intake import Refused
from edgert.daemon.ledger import Waiter
from edgert.protocol import ErrorCode, Topics, error_reply
from edgert.settings import DaemonConfig
from edgert.transport import MqttTransport

__all__ = ["LocalWaiter", "Replies"]

log = logging.getLogger("edgert.daemon")

# A model's (name, version) for the metrics' labels, if it is a repository model (see counts).
LabelsFn = Callable[[str], tuple[str, str] | None]

# Room for a publish's fixed header, lengths and properties beside its topic and correlation
# data: a reply this far inside the limit needs no exact measure.
_HEADERS = 64


class LocalWaiter(Waiter, frozen=True, kw_only=True):
    """A reply for the daemon itself (a source's pull), not for an MQTT topic."""

    deliver: Callable[[bytes], None]


class Replies:
    """Publishes replies through ``connection`` (any thread), counting each in ``counts`` by
    what it says (``labels`` names the model of a refused request's topic)."""

    def __init__(
        self,
        config: DaemonConfig,
        topics: Topics,
        connection: MqttTransport,
        counts: ReplyCounts | None = None,
        labels: LabelsFn | None = None,
    ) -> None:
        self.config = config
        self.topics = topics
        self.connection = connection
        self.counts = counts
        self._labels = labels

    def publish(self, waiter: Waiter, reply: bytes, outcome: Outcome | None = None) -> None:
        """Send ``reply`` (which says ``outcome``) to ``waiter``: its topic (within the payload
        limits), or the daemon's own caller for a source's request."""
        if isinstance(waiter, LocalWaiter):
            if self.counts is not None and outcome is not None:
                self.counts.add(outcome)
            waiter.deliver(reply)
            return
        fitted = self.fitting(waiter, reply)
        if self.counts is not None and outcome is not None:
            if fitted is not reply:
                outcome = Outcome(outcome.model, outcome.version, ErrorCode.TOO_LARGE.value)
            self.counts.add(outcome)
        reply = fitted
        # No Content Type: a reply is always JSON (DESIGN.md), and each property costs every
        # requester's MQTT client a decode.
        self.connection.publish(
            waiter.topic, reply, qos=waiter.qos, correlation=waiter.correlation, ack=waiter.ack
        )

    def answer(self, answer: Answer) -> None:
        """Publish what admission answered to everyone waiting for it."""
        for waiter in answer.waiters:
            self.publish(waiter, answer.reply, answer.outcome)

    def refuse(self, refused: Refused) -> None:
        """Answer a refused request at the first allowed topic among its candidates, if any."""
        error, message = refused.error, refused.message
        outcome = self._refusal(refused)
        topic = next((t for t in refused.candidates if self.topics.reply_allowed(t)), None)
        if topic is None:
            if self.counts is not None:
                self.counts.add(outcome)  # refused all the same, if unheard
            log.warning(
                "%s on %s (no reply topic to tell): %s",
                error.code.value,
                message.topic,
                error.message,
            )
            return
        reply = error_reply(
            refused.request_id, error.code, error.message, retry_after_ms=error.retry_after_ms
        )
        waiter = Waiter(
            topic, message.correlation, refused.qos, ack=message, request_id=refused.request_id
        )
        self.publish(waiter, reply, outcome)

    def _refusal(self, refused: Refused) -> Outcome:
        """What a refusal says, its model named only if it is a repository model's."""
        route = self.topics.parse_request_topic(refused.message.topic)
        labels = self._labels(route.model) if route is not None and self._labels else None
        model, version = labels or ("", "")
        return Outcome(model, version, refused.error.code.value)

    def fitting(self, waiter: Waiter, reply: bytes) -> bytes:
        """``reply``, or a too_large error in its place when it exceeds the payload limit or the
        broker's Maximum Packet Size (the broker would drop the client that sends it)."""
        limit = self.connection.max_packet_size
        cap = min(limit or self.config.max_payload, self.config.max_payload)
        size = len(reply)
        overhead = len(waiter.topic.encode()) + len(waiter.correlation or b"") + _HEADERS
        if size + overhead <= cap:
            return reply  # far inside both limits: no need to measure the packet exactly
        if limit is not None:
            size = self.connection.packet_size(
                waiter.topic, reply, qos=waiter.qos, correlation=waiter.correlation
            )
        if size <= cap:
            return reply
        return error_reply(
            waiter.request_id,
            ErrorCode.TOO_LARGE,
            f"the reply is {size} bytes; replies go up to {cap} bytes here: ask with "
            '"compact": true (a binary request: user property compact=true), or for fewer items '
            "per request",
        )
