"""The only module (with its paho subclass in :mod:`edgert.mqttwire`) that imports paho: one MQTT
connection, converted to edgert's own types.

paho's message becomes a :class:`Message`; nothing above this module sees paho. The connection
keeps what must survive reconnects (subscriptions, retained topics to re-publish: paho does
neither) and uses paho's own capped reconnect backoff.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgert.acks import PendingAcks
from edgert.errors import ConfigError
from edgert.mqttwire import Publish, PublishProperties, WireClient, packet_size
from edgert.settings import BrokerConfig
from edgert.tls import tls_context

__all__ = ["AFTER_REPLY", "Message", "MqttConnection"]

# What ``on_message`` returns for a request whose acknowledgement waits for its reply's (see
# :mod:`edgert.acks`); True takes a message and acknowledges it now, False leaves it.
AFTER_REPLY = 2

log = logging.getLogger("edgert.mqtt")


@dataclass(frozen=True)
class Message:
    """An incoming publish, as edgert sees it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    response_topic: str | None = None
    correlation: bytes | None = None
    content_type: str | None = None
    user: Mapping[str, str] = field(default_factory=dict)
    expiry: int | None = None
    # MQTT 5 Subscription Identifiers of the subscriptions it came through: one client's
    # overlapping shared subscriptions each deliver a copy, told apart by these.
    subscriptions: tuple[int, ...] = ()


def _convert(msg: paho.MQTTMessage) -> Message:
    props = getattr(msg, "properties", None)
    get = (lambda name: getattr(props, name, None)) if props is not None else (lambda name: None)
    user = dict(get("UserProperty") or [])
    return Message(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        mid=msg.mid,
        response_topic=get("ResponseTopic"),
        correlation=get("CorrelationData"),
        content_type=get("ContentType"),
        user=user,
        expiry=get("MessageExpiryInterval"),
        subscriptions=tuple(get("SubscriptionIdentifier") or ()),
    )


def _from_publish(publish: Publish) -> Message:
    """What :class:`~edgert.mqttwire.WireClient` decoded, as a Message (its fast path)."""
    props = publish.properties
    return Message(
        topic=publish.topic,
        payload=publish.payload,
        qos=publish.qos,
        retain=publish.retain,
        mid=publish.mid,
        response_topic=props.get("ResponseTopic"),
        correlation=props.get("CorrelationData"),
        content_type=props.get("ContentType"),
        user=dict(props.get("UserProperty") or ()),
        expiry=props.get("MessageExpiryInterval"),
        subscriptions=tuple(props.get("SubscriptionIdentifier") or ()),
    )


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on the broker socket. Replies leave from model threads right after the
    network thread acknowledged the request; with Nagle on, each would wait for the broker's
    delayed ACK of that acknowledgement, and a device waiting on its reply waits with it."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _wire_client(config: BrokerConfig, will: tuple[str, bytes] | None) -> WireClient:
    """The paho client ``config`` describes: protocol, credentials, TLS, Last Will, reconnect
    backoff and queue bounds; its callbacks are the connection's to set."""
    protocol = paho.MQTTv5 if config.protocol == 5 else paho.MQTTv311
    kwargs: dict[str, Any] = {}
    if protocol == paho.MQTTv311:
        kwargs["clean_session"] = False
    client = WireClient(
        CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        protocol=protocol,
        manual_ack=True,
        **kwargs,
    )
    if config.username is not None:
        client.username_pw_set(config.username, config.password)
    elif config.password is not None:
        raise ConfigError("a broker password is set but no username: set [broker] username")
    if config.tls:
        client.tls_set_context(tls_context(config))
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(
        min_delay=max(1, int(config.reconnect_min)), max_delay=int(config.reconnect_max)
    )
    client.max_queued_messages_set(config.max_queued)
    # As many replies unacknowledged at once as requests (the Receive Maximum start() asks
    # for); paho's default is 20.
    client.max_inflight_messages_set(config.receive_maximum)
    return client


class MqttConnection:
    """One paho client with its network loop in one thread; every publish goes through it.

    ``on_message`` runs in the network thread and must be quick; it returns True when it has
    taken the message, and only then is a QoS 1 message acknowledged to the broker; or
    :data:`AFTER_REPLY`, when the acknowledgement waits for the reply's (a :meth:`publish` with
    ``ack``) or :meth:`ack_overdue`'s time.
    """

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
        """``after_read`` runs on the network thread after each burst of messages read;
        ``on_refused(topic, reason)`` when the broker's SUBACK refuses a subscription (an ACL),
        which would otherwise look like a quiet topic."""
        self.config = config
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._on_refused = on_refused
        self._acks: PendingAcks[Message] = PendingAcks(self.ack)
        self._subscriptions: dict[str, tuple[int, int | None]] = {}  # topic -> (qos, sub id)
        self._pending_subacks: dict[int, str] = {}  # SUBSCRIBE mid -> topic
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        # The broker's Maximum Packet Size (MQTT 5 CONNACK); None when it states none.
        self.max_packet_size: int | None = None
        # Why the last connection attempt failed (a CONNACK refusal or a socket/TLS error);
        # ``refused`` is set when retrying cannot help: the broker refused (bad credentials)
        # or its certificate is not trusted.
        self.last_error: str | None = None
        self.refused = threading.Event()
        self._client = client = _wire_client(config, will)
        client.after_read = after_read
        client.deliver = self._handle_publish
        client.on_socket_open = _no_delay
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_suback
        client.on_publish = lambda c, u, mid, reason, props: self._acks.published(mid)

    @property
    def is_v5(self) -> bool:
        return self.config.protocol == 5

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def start(self) -> None:
        """Connect in the background; paho's loop reconnects with its capped backoff."""
        props = None
        kwargs: dict[str, Any] = {}
        if self.is_v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry
            # The broker sends at most this many QoS 1 requests we have not acknowledged (taken).
            props.ReceiveMaximum = self.config.receive_maximum
            kwargs["clean_start"] = False
        try:
            self._client.connect_async(
                self.config.host,
                self.config.port,
                keepalive=self.config.keepalive,
                properties=props,
                **kwargs,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to {self.config.host}:{self.config.port}: {exc}"
            ) from exc
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly (no Last Will) and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic: str, qos: int = 1, *, identifier: int | None = None) -> None:
        """Subscribe now (if connected) and again on every reconnect. ``identifier`` (MQTT 5)
        comes back in :attr:`Message.subscriptions` of what this subscription delivers."""
        with self._lock:  # the connect handler holds it too: neither misses the other
            self._subscriptions[topic] = (qos, identifier if self.is_v5 else None)
            if self.connected.is_set():
                self._send_subscribe(self._client, topic)

    def _send_subscribe(self, client: paho.Client, topic: str) -> None:
        """SUBSCRIBE (under ``_lock``), remembering its mid to match the SUBACK."""
        qos, identifier = self._subscriptions[topic]
        props = None
        if identifier is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = identifier
        result, mid = client.subscribe(topic, qos, properties=props)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subacks[mid] = topic

    def _handle_suback(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        with self._lock:
            topic = self._pending_subacks.pop(mid, None)
        refused = [r for r in reasons if getattr(r, "is_failure", False)]
        if topic is None or not refused:
            return
        reason = f"{refused[0]} (reason code 0x{int(refused[0].value):02x})"
        log.error("the broker refused the subscription to %s: %s", topic, reason)
        if self._on_refused is not None:
            self._on_refused(topic, reason)

    def unsubscribe(self, topic: str) -> None:
        """Unsubscribe now (if connected), and not again on reconnects."""
        with self._lock:
            if self._subscriptions.pop(topic, None) is not None and self.connected.is_set():
                self._client.unsubscribe(topic)

    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish retained now and again on every reconnect (an empty payload clears it)."""
        with self._lock:
            if payload:
                self._retained[topic] = (payload, qos)
            else:
                self._retained.pop(topic, None)
            # Not connected yet: the connect handler publishes it, after subscribing, so
            # nothing announced (``online``) comes before the subscriptions are in place.
            if not self.connected.is_set():
                return
        self.publish(topic, payload, qos=qos, retain=True)

    def _properties(
        self,
        correlation: bytes | None,
        content_type: str | None,
        response_topic: str | None,
    ) -> PublishProperties | None:
        if not (self.is_v5 and (correlation or content_type or response_topic)):
            return None
        return PublishProperties(correlation, content_type, response_topic)

    def packet_size(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        correlation: bytes | None = None,
        content_type: str | None = None,
        response_topic: str | None = None,
    ) -> int:
        """The size of the packet :meth:`publish` would send, to compare with
        :attr:`max_packet_size` (the broker's limit, from its MQTT 5 CONNACK)."""
        props = self._properties(correlation, content_type, response_topic)
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
        ack: Message | None = None,
    ) -> bool:
        """Queue a publish; False if it was refused (paho's queue full, or larger than the
        broker's Maximum Packet Size: a broker disconnects a client that sends such a packet,
        and paho would re-send it after every reconnect). ``ack``: the request this publish
        answers, acknowledged once the broker has this one (see :mod:`edgert.acks`).

        The MQTT 5 properties are dropped on a 3.1.1 connection.
        """
        props = self._properties(correlation, content_type, response_topic)
        if not self._fits(topic, payload, qos, props):
            if ack is not None:
                self._acks.replied(ack, None)
            return False
        info = self._client.publish(
            topic,
            payload,
            qos=qos,
            retain=retain,
            properties=props,  # type: ignore[arg-type]
        )
        ok = info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
        if ack is not None:
            self._acks.replied(ack, info.mid if ok and qos > 0 else None)
        if not ok:
            log.warning("publish to %s refused: %s", topic, paho.error_string(info.rc))
        return ok

    def _fits(self, topic: str, payload: bytes, qos: int, props: PublishProperties | None) -> bool:
        limit = self.max_packet_size
        if limit is None:
            return True
        size = packet_size(topic, payload, qos, props, self.is_v5)
        if size <= limit:
            return True
        log.warning(
            "publish to %s refused: a %d-byte packet; the broker's maximum packet size is %d",
            topic,
            size,
            limit,
        )
        return False

    def ack(self, message: Message) -> None:
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def ack_overdue(self, *, everything: bool = False) -> None:
        """Acknowledge the requests taken AFTER_REPLY that have waited long enough for it
        (``everything``: all of them, before a clean disconnect)."""
        self._acks.overdue(float("inf") if everything else None)

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"the broker at {self.address} refused the connection: {reason}"
            self.refused.set()
            log.error("%s", self.last_error)
            return
        self.connects += 1
        self.last_error = None
        self.refused.clear()
        self.max_packet_size = getattr(props, "MaximumPacketSize", None) if props else None
        with self._lock:
            self._pending_subacks.clear()
            for topic in self._subscriptions:
                self._send_subscribe(client, topic)
            for topic, (payload, qos) in self._retained.items():
                if self._fits(topic, payload, qos, None):
                    client.publish(topic, payload, qos=qos, retain=True)
            self.connected.set()
        log.info("connected to %s (connect #%d)", self.address, self.connects)
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    def _handle_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError` (refused, unreachable, TLS errors)
        # and passes no exception: the one being handled is the reason.
        exc = sys.exc_info()[1]
        reason = (str(exc) or type(exc).__name__) if exc is not None else "unknown error"
        self.last_error = f"cannot connect to the broker at {self.address}: {reason}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            self.refused.set()
        log.warning("%s", self.last_error)

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._acks.reset()
        if was_connected:
            level = logging.WARNING if getattr(reason, "is_failure", True) else logging.INFO
            log.log(level, "disconnected from the broker: %s", reason)
        elif self.refused.is_set() or not getattr(reason, "is_failure", True):
            log.debug("disconnected: %s", reason)  # a refusal was logged with its reason
        else:
            # Closed before any CONNACK: e.g. a plain client on a TLS listener.
            self.last_error = (
                f"the broker at {self.address} closed the connection before accepting it "
                f"({reason}); TLS or plain on the wrong port?"
            )
            log.warning("%s", self.last_error)

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._take(_convert(msg))  # QoS 2: paho's own path

    def _handle_publish(self, publish: Publish) -> None:
        self._take(_from_publish(publish))

    def _take(self, message: Message) -> None:
        try:
            taken = self._on_message(message)
        except Exception:  # a bug upstream must not kill the network thread
            log.exception("handling a message on %s failed", message.topic)
            taken = True
        if taken == AFTER_REPLY:
            self._acks.taken(message)
        elif taken:
            self.ack(message)
