"""The network thread's side of serving: each request decoded, checked and handed to its
model's worker (or answered with an error), and every reply published within the limits."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.limits import RateLimiter
from edgert.daemon.models import Models, Served
from edgert.daemon.worker import Job
from edgert.mqtt import Message, MqttConnection
from edgert.pipeline import Transform
from edgert.protocol import ErrorCode, ProtocolError, Request, Topics, error_reply
from edgert.settings import DaemonConfig

__all__ = ["Requests"]

log = logging.getLogger("edgert.daemon")


@dataclass(frozen=True)
class _LocalWaiter(Waiter):
    """A reply for the daemon itself (a source's pull), not for an MQTT topic."""

    deliver: Callable[[bytes], None] = field(compare=False)


class Requests:
    """Requests in, replies out. ``on_message`` and the replies of fast models run on the
    network thread; ``infer_local`` on a source's thread; ``publish_reply`` on any."""

    def __init__(
        self,
        config: DaemonConfig,
        topics: Topics,
        ledger: RequestLedger,
        connection: MqttConnection,
        models: Models,
        stopping: threading.Event,
    ) -> None:
        self.config = config
        self.topics = topics
        self.ledger = ledger
        self.connection = connection
        self.models = models
        self._stopping = stopping
        self.limiter = RateLimiter(config.rate_limit, config.burst) if config.rate_limit else None

    def publish_reply(self, waiter: Waiter, reply: bytes) -> None:
        """Send ``reply`` to ``waiter``: its topic (within the payload limits), or the daemon's own
        caller for a source's request."""
        if isinstance(waiter, _LocalWaiter):
            waiter.deliver(reply)
            return
        reply = self._fitting(waiter, reply)
        # No Content Type: a reply is always JSON (DESIGN.md), and each property costs every
        # requester's MQTT client a decode.
        self.connection.publish(waiter.topic, reply, qos=waiter.qos, correlation=waiter.correlation)

    def _fitting(self, waiter: Waiter, reply: bytes) -> bytes:
        """``reply``, or a too_large error in its place when it exceeds the payload limit or the
        broker's Maximum Packet Size (the broker would drop the client that sends it)."""
        limit = self.connection.max_packet_size
        cap = min(limit or self.config.max_payload, self.config.max_payload)
        size = len(reply)
        overhead = len(waiter.topic.encode()) + len(waiter.correlation or b"") + 64  # headers
        if size + overhead <= cap:
            return reply  # far inside both limits: no need to measure the packet exactly
        if limit is not None:
            size = self.connection.packet_size(
                waiter.topic, reply, qos=waiter.qos, correlation=waiter.correlation
            )
        if size <= cap:
            return reply
        try:
            request_id = json.loads(reply).get("id")
        except ValueError:
            request_id = None
        return error_reply(
            request_id,
            ErrorCode.TOO_LARGE,
            f"the reply is {size} bytes; replies go up to {cap} bytes here: ask with "
            '"compact": true, or for fewer items per request',
        )

    def on_message(self, message: Message) -> bool:
        """Take a request, or answer it with an error (True); False for a message that is not a
        request to this node."""
        route = self.topics.parse_request_topic(message.topic)
        if route is None:
            return False
        name, key, _pinned = route
        received = time.monotonic()
        keyed = self.topics.default_reply_topic(key, name) if key else None
        fallback = message.response_topic or keyed
        waiter_qos = min(message.qos, self.config.qos)
        served = self.models.get(name)
        try:
            if len(message.payload) > self.config.max_payload:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"payload is {len(message.payload)} bytes; the limit is "
                    f"{self.config.max_payload}",
                )
            if served is None:
                why = self.models.failed.get(name)
                known = ", ".join(sorted(self.models.served)) or "none"
                raise ProtocolError(
                    ErrorCode.NO_MODEL,
                    f"model '{name}' is not served here"
                    + (f" ({why})" if why else f"; served: {known}"),
                )
            request, transform = served.decode(message, name, key, self.config.max_elements)
        except ProtocolError as exc:
            request_id = exc.request_id or message.user.get("id") or key
            candidates = [exc.reply_to, fallback, keyed]
            if key is not None:  # a device's: never answered under another device's key
                candidates = [t for t in candidates if t and self._under(t, key)]
            self._reply_error(candidates, message, request_id, exc, waiter_qos)
            return True
        destination = request.reply_to or fallback
        if destination is None:
            log.warning("request on %s names no reply topic and has no key; dropped", message.topic)
            return True
        if not self.topics.reply_allowed(destination):
            error = ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"reply topic {destination!r} is outside {self.topics.reply_root}",
            )
            self._reply_error([keyed], message, request.id, error, waiter_qos)
            return True
        if key is not None and self.topics.reply_device(destination) != key:
            # A keyed request is a device's (the ACL lets each user publish under its own key
            # only): its reply goes under that key, never to another device's replies.
            error = ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"reply topic {destination!r} is not under this request's key {key!r}",
            )
            self._reply_error([keyed], message, request.id, error, waiter_qos)
            return True
        with self.models.swap:
            if self.models.served.get(name) is not served:  # swapped in while this was decoded
                return self.on_message(message)
            return self._take(message, served, request, transform, destination, received)

    def _take(
        self,
        message: Message,
        served: Served,
        request: Request,
        transform: Transform | None,
        destination: str,
        received: float,
    ) -> bool:
        """Hand a decoded request to its model's worker (under the swap lock)."""
        waiter_qos = min(message.qos, self.config.qos)
        served.worker.stats.record_request()
        if self.limiter is not None:
            device = self.topics.reply_device(destination)
            wait = self.limiter.take(device)
            if wait:
                served.worker.stats.record_error(ErrorCode.RATE_LIMITED.value)
                error = ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"device '{device}' is over its {self.config.rate_limit:g} requests/s "
                    f"(bursts of {self.config.burst:g}); retry in {wait:.2f} s",
                )
                self._reply_error([destination], message, request.id, error, waiter_qos)
                return True
        waiter = Waiter(destination, message.correlation, waiter_qos)
        ledger_key = (destination, request.id) if request.id is not None else None
        begin = self.ledger.begin(ledger_key, waiter)
        if begin.cached is not None:
            self.publish_reply(waiter, begin.cached)
            return True
        if not begin.run:
            return True
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
            transform,
        )
        if not served.worker.offer(job, defer=True):
            reply = error_reply(
                request.id, ErrorCode.BUSY, f"{served.worker.name}'s queue is full; retry later"
            )
            served.worker.stats.record_error(ErrorCode.BUSY.value)
            for w in self.ledger.finish(ledger_key, waiter, reply, cache=False):
                self.publish_reply(w, reply)
        return True

    def infer_local(
        self, model: str, payload: bytes, content_type: str, timeout: float
    ) -> Mapping[str, Any]:
        """The reply ``model`` gives ``payload`` (a source's snapshot), taken the way a device's
        request is: its pre-processing, its worker's queue, its post-processing. An error reply
        when it cannot run, ``expired`` when no result comes within ``timeout`` seconds."""
        served = self.models.get(model)
        try:
            if served is None or self._stopping.is_set():
                raise ProtocolError(ErrorCode.NO_MODEL, f"model '{model}' is not served now")
            if len(payload) > self.config.max_payload:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"{len(payload)} bytes; the limit is {self.config.max_payload}",
                )
            message = Message("", payload, 0, False, 0, content_type=content_type)
            request, transform = served.decode(message, model, None, self.config.max_elements)
        except ProtocolError as exc:
            return dict(json.loads(error_reply(None, exc.code, exc.message)))
        replies: list[bytes] = []
        answered = threading.Event()

        def deliver(reply: bytes) -> None:
            replies.append(reply)
            answered.set()

        received = time.monotonic()
        waiter = _LocalWaiter("", None, 0, deliver)
        deadline = received + timeout
        job = Job(None, None, waiter, request.inputs, received, deadline, True, transform=transform)
        served.worker.stats.record_request()
        with self.models.swap:
            # swapped since: the new version runs it (same inputs; a reload keeps the IO)
            served = self.models.served.get(model, served)
            taken = served.worker.offer(job)  # not deferred: this is not the network thread
        if not taken:
            served.worker.stats.record_error(ErrorCode.BUSY.value)
            return dict(json.loads(error_reply(None, ErrorCode.BUSY, f"{model}'s queue is full")))
        if not answered.wait(timeout):
            message_text = f"no result from {model} within {timeout:g} s"
            return dict(json.loads(error_reply(None, ErrorCode.EXPIRED, message_text)))
        return dict(json.loads(replies[0]))

    def _under(self, topic: str, key: str) -> bool:
        return self.topics.reply_allowed(topic) and self.topics.reply_device(topic) == key

    def _reply_error(
        self,
        candidates: list[str | None],
        message: Message,
        request_id: str | None,
        error: ProtocolError,
        qos: int,
    ) -> None:
        """Answer an error at the first allowed topic among ``candidates``, if any."""
        topic = next((t for t in candidates if t and self.topics.reply_allowed(t)), None)
        if topic is None:
            log.warning(
                "%s on %s (no reply topic to tell): %s",
                error.code.value,
                message.topic,
                error.message,
            )
            return
        reply = error_reply(request_id, error.code, error.message)
        self.publish_reply(Waiter(topic, message.correlation, qos), reply)
