"""One MQTT connection on an asyncio event loop of its own thread (uvloop where it installs),
through gmqtt's public API.

The loop owns the socket. Every method here may be called from any thread: a call from another
thread is queued and the loop woken once for all that queued meanwhile, so worker threads
publishing replies under load cost one wake-up per burst, not one per reply. Handlers
(``on_message``, ``on_connect``, ``after_read``, ``on_refused``) run on the loop and must be
quick.

Each connection is a new gmqtt client (:mod:`edgert.transport.dialer`: capped backoff), so this
keeps what must survive reconnects itself: subscriptions, retained topics to re-publish, and the
publishes not yet acknowledged (:class:`~edgert.transport.outbox.Outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import gmqtt

from edgert.acks import PendingAcks
from edgert.errors import ConfigError
from edgert.settings import BrokerConfig
from edgert.tls import tls_context
from edgert.transport.dialer import Dialer, Storage
from edgert.transport.loop import EventLoopThread
from edgert.transport.message import (
    Message,
    packet_size,
    publish_properties,
    received,
    suback_reason,
)
from edgert.transport.outbox import Outbox, Outgoing

__all__ = ["AFTER_REPLY", "MqttTransport"]

# What ``on_message`` returns for a request whose acknowledgement waits for its reply's (see
# edgert.acks); True takes a message and acknowledges it now, False leaves it unacknowledged.
AFTER_REPLY = 2

log = logging.getLogger("edgert.mqtt")
# gmqtt logs every connect, loss, refusal and write to a closed socket itself, at up to ERROR;
# the transport says what matters once, in its own words. gmqtt's CRITICAL (a packet it cannot
# parse, skipped) still shows.
logging.getLogger("gmqtt").setLevel(logging.CRITICAL)


class MqttTransport:
    """The broker connection: subscribe, publish, acknowledge after take, reconnect."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[Message], bool | int],
        on_connect: Callable[[], None] | None = None,
        after_read: Callable[[], None] | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        """``after_read`` runs after each burst of messages read; ``on_refused(topic, reason)``
        when the broker's SUBACK refuses a subscription (an ACL), which would otherwise look like
        a quiet topic."""
        if config.password is not None and config.username is None:
            raise ConfigError("a broker password is set but no username: set [broker] username")
        self.config = config
        self._on_message = on_message
        self._on_connect = on_connect
        self._after_read = after_read
        self._on_refused = on_refused
        tls = tls_context(config) if config.tls else None
        self._dialer = Dialer(config, tls, will, self._bind, self._published)
        self._loop = EventLoopThread("mqtt")
        self._client: gmqtt.Client | None = None  # while connected
        self._storage: Storage | None = None
        self._subscriptions: dict[str, gmqtt.Subscription] = {}
        self._subacks: dict[int, str] = {}  # SUBSCRIBE packet id -> topic
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._outbox = Outbox(config.max_queued)
        self._acks: PendingAcks[Message] = PendingAcks(self._acknowledge)
        self._ack_waits: dict[int, asyncio.Future[int]] = {}  # request mid -> its PUBACK's go
        self._mids = itertools.count(1)
        self._burst = False
        self.connected = threading.Event()
        self.connects = 0
        # The broker's Maximum Packet Size (MQTT 5 CONNACK); None when it states none.
        self.max_packet_size: int | None = None
        # Why the last connection attempt failed; ``refused`` is set when retrying cannot help:
        # the broker refused the credentials, or its certificate is not trusted.
        self.refused = self._dialer.refused

    @property
    def last_error(self) -> str | None:
        return self._dialer.last_error

    @property
    def is_v5(self) -> bool:
        return self.config.protocol == 5

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def loop(self) -> EventLoopThread:
        """The event loop that owns the connection (for other network I/O to share)."""
        return self._loop

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop and connect in the background, retrying with capped backoff."""
        self._loop.start()
        self._loop.spawn(self._dialer.run(lambda client: self._client is client))

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued, disconnect cleanly (no Last Will), and stop the loop."""
        if self._loop.running:
            self._loop.run(self._shutdown(), timeout)
        self._loop.stop(timeout)

    async def _shutdown(self) -> None:
        self._dialer.stop()
        client = self._client
        self._client = None
        self.connected.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)
        self._release_acks()

    def _bind(self, client: gmqtt.Client, storage: Storage, lost: asyncio.Event) -> None:
        self._storage = storage
        client.on_connect = self._handle_connect
        client.on_message = self._handle
        client.on_subscribe = self._handle_suback
        client.on_disconnect = lambda c, packet, exc=None: self._handle_disconnect(c, lost)

    def _handle_connect(self, client: gmqtt.Client, flags: int, rc: int, props: Any) -> None:
        """CONNACK accepted: subscribe, re-publish what is retained, send what waited."""
        self._client = client
        self.connects += 1
        size = (props or {}).get("maximum_packet_size")
        self.max_packet_size = size[0] if size else None
        self._subacks.clear()
        for topic in self._subscriptions:  # a new client each connection: all sent afresh
            self._send_subscribe(client, topic)
        for topic, (payload, qos) in self._retained.items():
            self._send(Outgoing(topic, payload, qos, retain=True))
        self.connected.set()
        self._flush()
        log.info("connected to %s (connect #%d)", self.address, self.connects)
        if self._on_connect is not None:
            self._on_connect()

    def _handle_disconnect(self, client: gmqtt.Client, lost: asyncio.Event) -> None:
        if client is not self._client:
            lost.set()
            return
        self._client = None
        self.connected.clear()
        self._outbox.connection_lost()
        self._acks.reset()
        self._release_acks()
        lost.set()
        log.warning("disconnected from the broker at %s; reconnecting", self.address)

    def _release_acks(self) -> None:
        """Requests of a connection that is gone: the broker redelivers what was not
        acknowledged, so their waits end (their PUBACKs go to a closed socket)."""
        waits, self._ack_waits = self._ack_waits, {}
        for wait in waits.values():
            if not wait.done():
                wait.set_result(0)

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, topic: str, qos: int = 1, *, identifier: int | None = None) -> None:
        """Subscribe now (if connected) and again on every reconnect. ``identifier`` (MQTT 5)
        comes back in :attr:`Message.subscriptions` of what this subscription delivers."""
        self._loop.call(self._subscribe, topic, qos, identifier if self.is_v5 else None)

    def _subscribe(self, topic: str, qos: int, identifier: int | None) -> None:
        self._subscriptions[topic] = gmqtt.Subscription(
            topic, qos=qos, subscription_identifier=identifier
        )
        if self._client is not None:
            self._send_subscribe(self._client, topic)

    def _send_subscribe(self, client: gmqtt.Client, topic: str) -> None:
        mid = client.subscribe(self._subscriptions[topic])
        if mid is not None:
            self._subacks[mid] = topic

    def _handle_suback(self, client: gmqtt.Client, mid: int, codes: Any, props: Any) -> None:
        topic = self._subacks.pop(mid, None)
        refused = [code for code in codes if code >= 0x80]
        if topic is None or not refused:
            return
        reason = suback_reason(refused[0])
        log.error("the broker refused the subscription to %s: %s", topic, reason)
        if self._on_refused is not None:
            self._on_refused(topic, reason)

    def unsubscribe(self, topic: str) -> None:
        """Unsubscribe now (if connected), and not again on reconnects."""
        self._loop.call(self._unsubscribe, topic)

    def _unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is not None and self._client is not None:
            self._client.unsubscribe(topic)

    # -- publishing ---------------------------------------------------------------------------

    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish retained now and again on every reconnect (an empty payload clears it).
        Not connected yet: the connect handler publishes it after subscribing, so nothing
        announced (``online``) comes before the subscriptions are in place."""
        self._loop.call(self._publish_retained, topic, payload, qos)

    def _publish_retained(self, topic: str, payload: bytes, qos: int) -> None:
        if payload:
            self._retained[topic] = (payload, qos)
        else:
            self._retained.pop(topic, None)
        if self._client is not None:
            self._send(Outgoing(topic, payload, qos, retain=True))

    def packet_size(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        correlation: bytes | None = None,
        content_type: str | None = None,
        response_topic: str | None = None,
        user: Sequence[tuple[str, str]] = (),
    ) -> int:
        """The size of the packet :meth:`publish` would send, to compare with
        :attr:`max_packet_size` (the broker's limit, from its MQTT 5 CONNACK)."""
        props = publish_properties(correlation, content_type, response_topic, user)
        return packet_size(topic, payload, qos, props, self.is_v5)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        correlation: bytes | None = None,
        content_type: str | None = None,
        response_topic: str | None = None,
        user: Sequence[tuple[str, str]] = (),
        ack: Message | None = None,
    ) -> bool:
        """Send (or, while disconnected, queue) a publish; False when it is refused: larger than
        the broker's Maximum Packet Size (a broker disconnects a client that sends one). ``user``:
        MQTT 5 user properties. ``ack``: the request this publish answers, acknowledged once the
        broker has this one."""
        props = publish_properties(correlation, content_type, response_topic, user)
        item = Outgoing(topic, payload, qos, retain, props, ack)
        limit = self.max_packet_size
        if (
            limit is not None
            and (size := packet_size(topic, payload, qos, props, self.is_v5)) > limit
        ):
            log.warning(
                "publish to %s refused: a %d-byte packet; the broker's maximum packet size is %d",
                topic,
                size,
                limit,
            )
            if ack is not None:
                self._loop.call(self._acks.replied, ack, None)
            return False
        self._loop.call(self._send, item)
        return True

    def _send(self, item: Outgoing) -> None:
        """Send ``item`` now if connected and nothing waits before it; else it waits."""
        sent = self._client is not None and not self._outbox.waiting and self._write(item)
        if not sent and not self._outbox.wait(item):
            log.warning(
                "publish to %s dropped: %d publishes queued", item.topic, self._outbox.limit
            )
            if item.ack is not None:
                self._acks.replied(item.ack, None)

    def _write(self, item: Outgoing) -> bool:
        """Hand ``item`` to gmqtt; False when the broker's Receive Maximum has no slot."""
        client, storage = self._client, self._storage
        assert client is not None and storage is not None
        try:
            client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain, **item.props)
        except OverflowError:  # every packet id in flight: wait for a PUBACK
            return False
        mid = storage.last_mid if item.qos > 0 else None
        if mid is not None:
            self._outbox.sent(mid, item)
        if item.ack is not None:
            self._acks.replied(item.ack, mid)
        return True

    def _flush(self) -> None:
        for item in self._outbox.take():
            if self._client is None or not self._write(item):
                self._outbox.wait_first(item)
                return

    def _published(self, mid: int) -> None:
        """The broker acknowledged our publish ``mid``: its request is due, and a slot is free."""
        if self._outbox.acknowledged(mid) is not None:
            self._acks.published(mid)
        if self._outbox.waiting:
            self._flush()

    # -- requests in --------------------------------------------------------------------------

    async def _handle(
        self, client: gmqtt.Client, topic: Any, payload: bytes, qos: int, properties: Any
    ) -> int:
        """One message in; the PUBACK (QoS 1) goes once this returns: after take."""
        message = received(topic, payload, qos, properties, next(self._mids))
        if not self._burst and self._after_read is not None:
            self._burst = True  # after every message read with it has been taken
            self._loop.call_soon(self._end_burst)
        try:
            taken = self._on_message(message)
        except Exception:  # a bug upstream must not stop the connection
            log.exception("handling a message on %s failed", message.topic)
            taken = True
        if qos == 0 or (taken and taken != AFTER_REPLY):
            return 0
        wait: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._ack_waits[message.mid] = wait
        if taken == AFTER_REPLY:
            self._acks.taken(message)
        # Not taken (stopping): no PUBACK on this connection, so the broker redelivers it.
        return await wait

    def _acknowledge(self, message: Message) -> None:
        wait = self._ack_waits.pop(message.mid, None)
        if wait is not None and not wait.done():
            wait.set_result(0)

    def _end_burst(self) -> None:
        self._burst = False
        if self._after_read is not None:
            try:
                self._after_read()
            except Exception:
                log.exception("after a burst of reads")

    def ack_overdue(self, *, everything: bool = False) -> None:
        """Acknowledge the requests taken AFTER_REPLY that have waited long enough for their
        reply (``everything``: all of them, before a clean disconnect)."""
        self._loop.call(self._acks.overdue, float("inf") if everything else None)
