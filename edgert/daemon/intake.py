"""The intake stage: a message in, read as a request for this node (DESIGN.md, "Serving core").

Its topic routes it to a model; the broker's retained copy of a request (handed to every new
subscription, so after each restart or reconnect) is passed over; its size and topic key are
checked; a pool's copy that another subscription brings to the node taking it is passed over; it is
decoded by the model serving now (or held while its model loads); and where its reply goes is
decided: ``reply_to``, else the MQTT 5 Response Topic, else the default topic of its key, always
under the reply prefix and, for a keyed request (a device's), under that key. Out comes an
:class:`Accepted` request for admission, a :class:`Refused` one for the replies stage, or a
:class:`Passed` saying why there is nothing to hand on. Call it under the models' swap lock, so the
version that decodes a request is the one that takes it.
"""

from __future__ import annotations

import enum
import logging
import time

import msgspec

from edgert.daemon.holding import Held, Holding
from edgert.daemon.models import Models, Served
from edgert.daemon.pool import Pool
from edgert.pipeline import Transform
from edgert.protocol import (
    MAX_ID_CHARS,
    Envelope,
    ErrorCode,
    ProtocolError,
    Request,
    RequestId,
    Topics,
    peek_envelope,
)
from edgert.settings import DaemonConfig
from edgert.transport import Message

__all__ = ["UNSERVED", "Accepted", "Intake", "IntakeResult", "Passed", "Refused"]

# The Subscription Identifier of a pool's unserved group (Topics.unserved_infer): one node gets
# every pooled request through it as well, and answers those for a model no node lists.
UNSERVED = 2

log = logging.getLogger("edgert.daemon")

# The misrouted topics logged (each once) before the rest go unlogged: a bound on memory.
_MISROUTED_LOGGED = 256


class Accepted(msgspec.Struct, frozen=True):
    """A request decoded by the model version that is to take it, and where its reply goes."""

    served: Served
    request: Request
    transform: Transform | None  # how a pre-processed image maps back (detection boxes)
    destination: str  # the reply topic: allowed, and under the request's key if it has one
    qos: int  # the reply's: the request's, at most the daemon's
    received: float  # time.monotonic() at its first arrival: deadlines count from it
    message: Message


class Refused(msgspec.Struct, frozen=True):
    """A request answered with ``error`` at the first allowed topic of ``candidates`` (none:
    it is logged instead), with the id it was sent with."""

    error: ProtocolError
    candidates: tuple[str, ...]
    request_id: RequestId | None
    qos: int
    message: Message


class Passed(enum.Enum):
    """Nothing to hand on, and why."""

    NOT_A_REQUEST = "not_a_request"  # not a request topic of this node's (logged if meant as one)
    ELSEWHERE = "elsewhere"  # a pool's unserved copy of a request some node takes
    HELD = "held"  # its model is loading: replayed once it is served (see Requests.replay)
    DROPPED = "dropped"  # it names no reply topic and has no key (logged)
    RETAINED = "retained"  # the broker's retained copy, given to a new subscription (logged)


IntakeResult = Accepted | Refused | Passed


class Intake:
    """Reads requests against ``models`` (and, in a pool, what the other nodes serve)."""

    def __init__(
        self, config: DaemonConfig, topics: Topics, models: Models, pool: Pool | None = None
    ) -> None:
        self.config = config
        self.topics = topics
        self.models = models
        self.held = models.held
        self.pool = pool
        self._misrouted: set[str] = set()  # the topics logged as no request's

    def read(self, message: Message, received: float | None = None) -> IntakeResult:
        """What ``message`` is; ``received`` is when it first came (a held request's replay)."""
        route = self.topics.parse_request_topic(message.topic)
        if route is None:
            if self.topics.under_request_root(message.topic):
                self._misrouted_log(message.topic)
            return Passed.NOT_A_REQUEST
        name, key, _pinned = route
        if message.retain:
            # A live request comes without the flag, whatever it was published with; with it
            # comes the broker's stored copy, given to every new subscription (each restart or
            # reconnect): that request was answered when it came, and is not asked again.
            log.warning(
                "a retained copy of a request on %s, not answered again: publish requests "
                "without retain (clear this one with an empty retained message on that topic)",
                message.topic,
            )
            return Passed.RETAINED
        if UNSERVED in message.subscriptions and self._listed(name):
            return Passed.ELSEWHERE  # its model's own subscription brings it to a node
        received = time.monotonic() if received is None else received
        served = self.models.get(name)
        try:
            self._check_limits(message, key)
            if served is None:
                envelope = peek_envelope(message.payload)  # to answer with its id
                if self._hold(message, name, received, envelope):
                    return Passed.HELD
                raise self._no_model(name, envelope)
            request, transform = served.decode(message, name, key, self.config.max_elements)
        except ProtocolError as exc:
            return self.refusal(message, name, key, exc)
        return self._destined(message, name, key, served, request, transform, received)

    def read_local(
        self, model: str, payload: bytes, content_type: str, received: float
    ) -> Accepted | Refused:
        """A source's snapshot for ``model``, read as a device's request would be; its reply
        goes to the daemon itself (no topic)."""
        message = Message("", payload, 0, False, 0, content_type=content_type)
        served = self.models.get(model)
        try:
            if served is None:
                raise ProtocolError(ErrorCode.NO_MODEL, f"model '{model}' is not served now")
            if len(payload) > self.config.max_payload:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"{len(payload)} bytes; the limit is {self.config.max_payload}",
                )
            request, transform = served.decode(message, model, None, self.config.max_elements)
        except ProtocolError as exc:
            return Refused(exc, (), None, 0, message)
        return Accepted(served, request, transform, "", 0, received, message)

    def refusal(
        self, message: Message, model: str, key: str | None, error: ProtocolError
    ) -> Refused:
        """``error`` for a request, answered where it asked (within the reply prefix; a keyed
        request only under its key), with the id it was sent with."""
        keyed = self.topics.default_reply_topic(key, model) if key else None
        request_id = error.request_id
        if request_id is None:
            request_id = message.user.get("id", key)
        asked = (error.reply_to, message.response_topic, keyed)
        # A device's (keyed) request is never answered under another device's key.
        candidates = tuple(t for t in asked if t and (key is None or self._under(t, key)))
        return Refused(error, candidates, request_id, self._qos(message), message)

    def expired(self, *, everything: bool = False) -> list[Refused]:
        """The held requests that waited past their bound (``loading``) or their deadline
        (``expired``), taken out of the store; ``everything`` when stopping."""
        now = time.monotonic()
        return [self._expired(item, now) for item in self.held.expired(now, everything=everything)]

    def _expired(self, item: Held, now: float) -> Refused:
        envelope = item.envelope
        retry_after_ms = None
        if item.deadline is not None and item.deadline <= now:
            code, text = ErrorCode.EXPIRED, f"its deadline passed while {item.model} loaded"
        else:
            code = ErrorCode.LOADING
            text = f"model '{item.model}' is still loading; try again later"
            retry_after_ms = self.held.retry_after_ms(item.model)
        error = ProtocolError(
            code,
            text,
            request_id=envelope.id,
            reply_to=envelope.reply_to,
            retry_after_ms=retry_after_ms,
        )
        route = self.topics.parse_request_topic(item.message.topic)
        return self.refusal(item.message, item.model, route.key if route else None, error)

    def _destined(
        self,
        message: Message,
        name: str,
        key: str | None,
        served: Served,
        request: Request,
        transform: Transform | None,
        received: float,
    ) -> Accepted | Refused | Passed:
        """The decoded request with its reply topic, or refused for the one it asked for."""
        keyed = self.topics.default_reply_topic(key, name) if key else None
        destination = request.reply_to or message.response_topic or keyed
        if destination is None:
            log.warning("request on %s names no reply topic and has no key; dropped", message.topic)
            return Passed.DROPPED
        if not self.topics.reply_allowed(destination):
            text = f"reply topic {destination!r} is outside {self.topics.reply_root}"
        elif key is not None and self.topics.reply_device(destination) != key:
            # A keyed request is a device's (the ACL lets each user publish under its own key
            # only): its reply goes under that key, never to another device's replies.
            text = f"reply topic {destination!r} is not under this request's key {key!r}"
        else:
            qos = self._qos(message)
            return Accepted(served, request, transform, destination, qos, received, message)
        error = ProtocolError(ErrorCode.BAD_REQUEST, text)
        candidates = (keyed,) if keyed else ()
        return Refused(error, candidates, request.id, self._qos(message), message)

    def _misrouted_log(self, topic: str) -> None:
        """Log a message meant as a request whose topic is no request's (an empty level from a
        trailing "/", a "." or ".."), once per topic: its device repeats the mistake. There is
        no reply: every node that subscribes to the topic would send one."""
        if topic in self._misrouted or len(self._misrouted) >= _MISROUTED_LOGGED:
            return
        self._misrouted.add(topic)
        log.warning(
            "a message on %r is not a request, and is not answered: a request topic is "
            "%s/infer/<model> or %s/infer/<model>/<key>, each level non-empty and not '.' or '..'",
            topic,
            self.topics.prefix,
            self.topics.prefix,
        )

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

    def _qos(self, message: Message) -> int:
        return min(message.qos, self.config.qos)

    def _under(self, topic: str, key: str) -> bool:
        return self.topics.reply_allowed(topic) and self.topics.reply_device(topic) == key
