"""The only module that imports paho: one MQTT connection, converted to edgert's own types.

paho's message becomes a :class:`Message`; nothing above this module sees paho. The connection
keeps what must survive reconnects (subscriptions, retained topics to re-publish: paho does
neither) and uses paho's own capped reconnect backoff.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgert.config import BrokerConfig
from edgert.errors import ConfigError

__all__ = ["Message", "MqttConnection"]

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
    )


class MqttConnection:
    """One paho client with its network loop in one thread; every publish goes through it.

    ``on_message`` runs in the network thread and must be quick; it returns True when it has
    taken the message, and only then is a QoS 1 message acknowledged to the broker.
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[Message], bool],
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_message = on_message
        self._on_connect_cb = on_connect
        self._subscriptions: dict[str, int] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.max_packet_size: int | None = None
        protocol = paho.MQTTv5 if config.protocol == 5 else paho.MQTTv311
        kwargs: dict[str, Any] = {}
        if protocol == paho.MQTTv311:
            kwargs["clean_session"] = False
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=protocol,
            manual_ack=True,
            **kwargs,
        )
        client = self._client
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            client.tls_set(
                ca_certs=config.ca_file,
                certfile=config.cert_file,
                keyfile=config.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.reconnect_delay_set(
            min_delay=max(1, int(config.reconnect_min)), max_delay=int(config.reconnect_max)
        )
        client.max_queued_messages_set(config.max_queued)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message

    @property
    def is_v5(self) -> bool:
        return self.config.protocol == 5

    def start(self) -> None:
        """Connect in the background; paho's loop reconnects with its capped backoff."""
        props = None
        kwargs: dict[str, Any] = {}
        if self.is_v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry
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

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and again on every reconnect."""
        with self._lock:
            self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._client.subscribe(topic, qos)

    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish retained now and again on every reconnect (an empty payload clears it)."""
        with self._lock:
            if payload:
                self._retained[topic] = (payload, qos)
            else:
                self._retained.pop(topic, None)
        self.publish(topic, payload, qos=qos, retain=True)

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
    ) -> bool:
        """Queue a publish; False if paho refused it (queue full or packet too large).

        The MQTT 5 properties are dropped on a 3.1.1 connection.
        """
        props = None
        if self.is_v5 and (correlation or content_type or response_topic):
            props = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                props.CorrelationData = correlation
            if content_type is not None:
                props.ContentType = content_type
            if response_topic is not None:
                props.ResponseTopic = response_topic
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publish to %s refused: %s", topic, paho.error_string(info.rc))
            return False
        return True

    def ack(self, message: Message) -> None:
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self.connects += 1
        self.max_packet_size = getattr(props, "MaximumPacketSize", None) if props else None
        with self._lock:
            subscriptions = list(self._subscriptions.items())
            retained = list(self._retained.items())
        for topic, qos in subscriptions:
            client.subscribe(topic, qos)
        for topic, (payload, qos) in retained:
            client.publish(topic, payload, qos=qos, retain=True)
        self.connected.set()
        log.info(
            "connected to %s:%d (connect #%d)", self.config.host, self.config.port, self.connects
        )
        if self._on_connect_cb is not None:
            self._on_connect_cb()

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()
        if getattr(reason, "is_failure", True):
            log.warning("disconnected from the broker: %s", reason)
        else:
            log.info("disconnected from the broker: %s", reason)

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        message = _convert(msg)
        try:
            taken = self._on_message(message)
        except Exception:  # a bug upstream must not kill the network thread
            log.exception("handling a message on %s failed", message.topic)
            taken = True
        if taken:
            self.ack(message)
