"""The transport against a real mosquitto, with paho (MQTT 5 and 3.1.1) as the other side:
properties both ways, acknowledgement after take, reconnect with re-subscription and retained
re-publish, the broker's Receive Maximum and Maximum Packet Size. Refused subscriptions:
tests/daemon/test_contract.py (mosquitto's dynamic-security plugin refuses them)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgert.settings import BrokerConfig
from edgert.transport import AFTER_REPLY, Message, MqttTransport
from tests.broker import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path).start()
    yield server
    server.kill()


def _config(broker: Mosquitto, protocol: int = 5, **kwargs: object) -> BrokerConfig:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "protocol": protocol,
        "client_id": "transport-under-test",
        "reconnect_min": 0.1,
        "reconnect_max": 0.4,
    }
    settings.update(kwargs)
    return BrokerConfig(**settings)  # type: ignore[arg-type]


def _transport(
    config: BrokerConfig,
    on_message: Callable[[Message], bool | int] | None = None,
    **kwargs: object,
) -> tuple[MqttTransport, queue.Queue[Message]]:
    got: queue.Queue[Message] = queue.Queue()

    def take(message: Message) -> bool | int:
        got.put(message)
        return on_message(message) if on_message is not None else True

    return MqttTransport(config, on_message=take, **kwargs), got  # type: ignore[arg-type]


def _paho(broker: Mosquitto, protocol: int = paho.MQTTv5) -> paho.Client:
    client = broker.client(protocol)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def _subscribed(client: paho.Client, topic: str, qos: int = 1) -> queue.Queue[paho.MQTTMessage]:
    got: queue.Queue[paho.MQTTMessage] = queue.Queue()
    done = threading.Event()
    client.on_message = lambda c, u, m: got.put(m)
    client.on_subscribe = lambda *a: done.set()
    client.subscribe(topic, qos)
    assert done.wait(5)
    return got


def _connected(transport: MqttTransport) -> None:
    assert transport.connected.wait(10), transport.last_error


def _next_session(broker: Mosquitto, wait: float = 0.5) -> list[bytes]:
    """The payloads a new session of the same client id is given within ``wait`` seconds of
    connecting: what the broker kept unacknowledged for it (sent right after the CONNACK)."""
    transport, got = _transport(_config(broker))
    transport.subscribe("req/#", 1)
    transport.start()
    try:
        _connected(transport)
        time.sleep(wait)
    finally:
        transport.stop()
    return [got.get_nowait().payload for _ in range(got.qsize())]


def _subscriptions_in_place(transport: MqttTransport, device: paho.Client) -> None:
    """As the daemon's ``online``: a retained publish sent after the transport's SUBSCRIBEs, so
    once a device sees it, the broker has the subscriptions (one connection's packets are
    processed in order)."""
    transport.publish_retained("marker", b"1")
    assert _subscribed(device, "marker").get(timeout=10).payload == b"1"


@pytest.mark.parametrize("protocol", [5, 4])
def test_a_request_and_its_reply_carry_their_properties(broker: Mosquitto, protocol: int) -> None:
    transport, got = _transport(_config(broker, protocol))
    transport.subscribe("req/#", 1)
    transport.start()
    device = _paho(broker, paho.MQTTv5 if protocol == 5 else paho.MQTTv311)
    try:
        _subscriptions_in_place(transport, device)
        replies = _subscribed(device, "rep/#")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "rep/x"
        props.CorrelationData = b"\x00\x01"
        props.UserProperty = [("id", "r1")]
        props.ContentType = "application/json"
        device.publish("req/a", b"{}", qos=1, properties=props if protocol == 5 else None)
        message = got.get(timeout=5)
        assert (message.topic, message.payload, message.qos) == ("req/a", b"{}", 1)
        if protocol == 5:
            assert message.response_topic == "rep/x" and message.correlation == b"\x00\x01"
            assert dict(message.user) == {"id": "r1"}
            assert message.content_type == "application/json"
        else:
            assert message.response_topic is None and dict(message.user) == {}
        assert transport.publish("rep/x", b"ok", qos=1, correlation=b"\x00\x01")
        reply = replies.get(timeout=5)
        assert reply.payload == b"ok"
        correlation = getattr(reply.properties, "CorrelationData", None)
        assert correlation == (b"\x00\x01" if protocol == 5 else None)
    finally:
        device.loop_stop()
        transport.stop()


def test_a_request_not_taken_is_redelivered_to_the_next_session(broker: Mosquitto) -> None:
    """False from on_message leaves a QoS 1 request unacknowledged: the broker keeps it."""
    transport, got = _transport(_config(broker), on_message=lambda m: False)
    transport.subscribe("req/#", 1)
    transport.start()
    device = _paho(broker)
    try:
        _subscriptions_in_place(transport, device)
        device.publish("req/a", b"1", qos=1).wait_for_publish(5)
        assert got.get(timeout=5).payload == b"1"
    finally:
        transport.stop()
        device.loop_stop()
    assert _next_session(broker) == [b"1"]
    assert _next_session(broker) == []  # taken this time


def test_after_reply_acknowledges_once_the_reply_is_acknowledged(broker: Mosquitto) -> None:
    """AFTER_REPLY: the request is acknowledged with its reply (not redelivered), and a request
    with no reply is acknowledged by ack_overdue."""
    transport, got = _transport(_config(broker), on_message=lambda m: AFTER_REPLY)
    transport.subscribe("req/#", 1)
    transport.start()
    device = _paho(broker)
    try:
        _subscriptions_in_place(transport, device)
        replies = _subscribed(device, "rep/#")
        device.publish("req/a", b"answered", qos=1)
        device.publish("req/b", b"unanswered", qos=1)
        first, second = got.get(timeout=5), got.get(timeout=5)
        transport.publish("rep/a", b"r", qos=1, ack=first)
        assert replies.get(timeout=5).payload == b"r"
        time.sleep(0.6)  # past the hold
        transport.ack_overdue()
        assert second.payload == b"unanswered"
        time.sleep(0.2)  # its PUBACK on the wire before the clean disconnect
    finally:
        transport.stop()
        device.loop_stop()
    # Both acknowledged: one with its reply, the other once overdue; unacknowledged, the
    # broker would give them to the next session.
    assert _next_session(broker) == []


def test_after_a_broker_restart_it_reconnects_resubscribes_and_republishes(
    broker: Mosquitto,
) -> None:
    connects: list[int] = []
    transport, got = _transport(
        _config(broker, session_expiry=0), on_connect=lambda: connects.append(1)
    )
    transport.subscribe("req/#", 1)
    transport.publish_retained("state", b"online")
    transport.start()
    try:
        _connected(transport)
        broker.kill()
        deadline = time.monotonic() + 5
        while transport.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not transport.connected.is_set()
        # Sent while the broker is down: queued, and sent on the next connection.
        assert transport.publish("queued", b"later", qos=1)
        time.sleep(0.5)  # a few failed attempts, with backoff
        broker.start()  # no persistence: the session, subscriptions and retained are gone
        device = _paho(broker)
        try:
            retained = _subscribed(device, "state")
            assert retained.get(timeout=10).payload == b"online"
            _connected(transport)
            assert len(connects) == 2 and transport.connects == 2
            device.publish("req/x", b"after", qos=1)
            assert got.get(timeout=5).payload == b"after"
        finally:
            device.loop_stop()
    finally:
        transport.stop()


def test_more_qos_1_publishes_than_the_receive_maximum_all_arrive_in_order(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path, "max_inflight_messages 2").start()
    transport, _ = _transport(_config(broker))
    transport.start()
    device = _paho(broker)
    try:
        _connected(transport)
        got = _subscribed(device, "many")
        for n in range(50):
            assert transport.publish("many", str(n).encode(), qos=1)
        payloads = [int(got.get(timeout=5).payload) for _ in range(50)]
        assert payloads == list(range(50))
    finally:
        device.loop_stop()
        transport.stop()
        broker.kill()


def test_a_publish_over_the_brokers_maximum_packet_size_is_refused_not_sent(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path, "max_packet_size 200").start()
    transport, _ = _transport(_config(broker))
    transport.start()
    device = _paho(broker)
    try:
        _connected(transport)
        assert transport.max_packet_size == 200
        got = _subscribed(device, "big")
        fits = max(n for n in range(300) if transport.packet_size("big", bytes(n), qos=1) <= 200)
        assert transport.packet_size("big", bytes(fits), qos=1) == 200
        assert not transport.publish("big", bytes(fits + 1), qos=1)
        assert transport.publish("big", bytes(fits), qos=1)
        assert len(got.get(timeout=5).payload) == fits  # still connected: it arrived
        assert transport.connects == 1
    finally:
        device.loop_stop()
        transport.stop()
        broker.kill()
