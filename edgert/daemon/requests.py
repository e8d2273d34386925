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

from edgert.daemon.holding import Held, Holding
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.limits import RateLimiter
from edgert.daemon.models import Models, Served
from edgert.daemon.pool import Pool
from edgert.daemon.worker import Job
from edgert.pipeline import Transform
from edgert.protocol import (
    MAX_ID_CHARS,
    Envelope,
    ErrorCode,
    ProtocolError,
    Request,
    RequestId,
    Topics,
    error_code,
    error_reply,
    peek_envelope,
)
from edgert.settings import DaemonConfig
from edgert.transport import Message, MqttTransport

__all__ = ["UNSERVED", "Requests"]

# The Subscription Identifier of a pool's unserved group (Topics.unserved_infer): one node gets
# every pooled request through it as well, and answers those for a model no node lists.
UNSERVED = 2

log = logging.getLogger("edgert.daemon")


@dataclass(frozen=True)
class _LocalWaiter(Waiter):
    """A reply for the daemon itself (a source's pull), not for an MQTT topic."""

    deliver: Callable[[bytes], None] = field(compare=False, kw_only=True)


class Requests:
    """Requests in, replies out. ``on_message`` and the replies of fast models run on the
    network thread; ``infer_local`` on a source's thread; ``publish_reply`` on any."""

    def __init__(
        self,
        config: DaemonConfig,
        topics: Topics,
        ledger: RequestLedger,
        connection: MqttTransport,
        models: Models,
        stopping: threading.Event,
        pool: Pool | None = None,
    ) -> None:
        self.config = config
        self.held = models.held
        self.pool = pool
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
        self.connection.publish(
            waiter.topic, reply, qos=waiter.qos, correlation=waiter.correlation, ack=waiter.ack
        )

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

    def on_message(
        self, message: Message, *, received: float | None = None, defer: bool = True
    ) -> bool:
        """Take a request, or answer it with an error (True); False for a message that is not a
        request to this node. ``received`` is when it came (a held request's first arrival);
        ``defer`` lets a fast model keep it for the burst's batch (the network thread only)."""
        route = self.topics.parse_request_topic(message.topic)
        if route is None:
            return False
        name, key, _pinned = route
        if UNSERVED in message.subscriptions and self._listed(name):
            return True  # its model's own subscription brings it to a node that takes it
        received = time.monotonic() if received is None else received
        served = self.models.get(name)
        try:
            self._check_limits(message, key)
            if served is None:
                envelope = peek_envelope(message.payload)  # to answer with its id
                if self._hold(message, name, received, envelope):
                    return True
                raise self._no_model(name, envelope)
            request, transform = served.decode(message, name, key, self.config.max_elements)
        except ProtocolError as exc:
            self._refuse(message, name, key, exc)
            return True
        keyed = self.topics.default_reply_topic(key, name) if key else None
        destination = request.reply_to or message.response_topic or keyed
        if destination is None:
            log.warning("request on %s names no reply topic and has no key; dropped", message.topic)
            return True
        waiter_qos = min(message.qos, self.config.qos)
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
                return self.on_message(message, received=received, defer=defer)
            return self._take(message, served, request, transform, destination, received, defer)

    def _check_limits(self, message: Message, key: str | None) -> None:
        """ProtocolError for a topic key longer than an id may be, or a payload too large."""
        if key is not None and len(key) > MAX_ID_CHARS:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"the topic's key is {len(key)} characters; keys, like ids, go up to "
                f"{MAX_ID_CHARS}",
            )
        if len(message.payload) > self.config.max_payload:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"payload is {len(message.payload)} bytes; the limit is {self.config.max_payload}",
            )

    def _listed(self, name: str) -> bool:
        """Whether some node takes requests for ``name`` (this one, or another in the pool)."""
        return (
            self.models.get(name) is not None
            or self.held.is_loading(name)
            or bool(self.pool is not None and self.pool.serving(name))
        )

    def _no_model(self, name: str, envelope: Envelope) -> ProtocolError:
        why = self.models.failed.get(name)
        if why:
            text = f"model '{name}' is not served here ({why})"
        else:
            names = set(self.models.served) | set(self.held.loading())
            if self.pool is not None:
                names |= set(self.pool.served())
            text = f"model '{name}' is not served; served: {', '.join(sorted(names)) or 'none'}"
        return ProtocolError(
            ErrorCode.NO_MODEL, text, request_id=envelope.id, reply_to=envelope.reply_to
        )

    def _hold(self, message: Message, name: str, received: float, envelope: Envelope) -> bool:
        """Hold a request for a model still loading (True); ProtocolError ``loading`` when it
        cannot be held; False when the model is not loading."""
        outcome = self.held.hold(name, message, received, envelope)
        if outcome is Holding.NOT_LOADING:
            return False
        if outcome is Holding.HELD:
            return True
        raise ProtocolError(
            ErrorCode.LOADING,
            f"model '{name}' is loading; {len(self.held)} requests are held "
            f"(up to {self.held.capacity} a model, for {self.held.hold_s:g} s)",
            request_id=envelope.id,
            reply_to=envelope.reply_to,
            retry_after_ms=self.held.retry_after_ms(name),
        )

    def replay(self, held: list[Held]) -> None:
        """Take the requests held for a model that is now served (or answer them, if it
        failed), as if they had just come, with their deadlines counted from their arrival."""
        for item in held:
            try:
                self.on_message(item.message, received=item.received, defer=False)
            except Exception:  # a bug must not reach the thread that served the model
                log.exception("%s: a held request failed", item.model)

    def expire_held(self, *, everything: bool = False) -> None:
        """Answer the held requests that waited past their bound (``loading``) or deadline
        (``expired``); ``everything`` when stopping."""
        now = time.monotonic()
        for item in self.held.expired(now, everything=everything):
            envelope = item.envelope
            if item.deadline is not None and item.deadline <= now:
                code, text = ErrorCode.EXPIRED, f"its deadline passed while {item.model} loaded"
            else:
                code = ErrorCode.LOADING
                text = f"model '{item.model}' is still loading; try again later"
            error = ProtocolError(
                code,
                text,
                request_id=envelope.id,
                reply_to=envelope.reply_to,
                retry_after_ms=self.held.retry_after_ms(item.model)
                if code is ErrorCode.LOADING
                else None,
            )
            route = self.topics.parse_request_topic(item.message.topic)
            self._refuse(item.message, item.model, route.key if route else None, error)

    def _refuse(self, message: Message, name: str, key: str | None, exc: ProtocolError) -> None:
        """Answer ``exc`` where the request asked (within the reply prefix; a keyed request
        only under its key), with the id it was sent with."""
        keyed = self.topics.default_reply_topic(key, name) if key else None
        request_id = exc.request_id
        if request_id is None:
            request_id = message.user.get("id", key)
        candidates = [exc.reply_to, message.response_topic, keyed]
        if key is not None:  # a device's: never answered under another device's key
            candidates = [t for t in candidates if t and self._under(t, key)]
        self._reply_error(candidates, message, request_id, exc, min(message.qos, self.config.qos))

    def _take(
        self,
        message: Message,
        served: Served,
        request: Request,
        transform: Transform | None,
        destination: str,
        received: float,
        defer: bool,
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
        waiter = Waiter(destination, message.correlation, waiter_qos, ack=message)
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
        if not served.worker.offer(job, defer=defer):
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
            return dict(json.loads(error_reply(None, error_code(exc), exc.message)))
        replies: list[bytes] = []
        answered = threading.Event()

        def deliver(reply: bytes) -> None:
            replies.append(reply)
            answered.set()

        received = time.monotonic()
        waiter = _LocalWaiter("", None, 0, deliver=deliver)
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
        request_id: RequestId | None,
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
        reply = error_reply(
            request_id, error.code, error.message, retry_after_ms=error.retry_after_ms
        )
        self.publish_reply(Waiter(topic, message.correlation, qos, ack=message), reply)
