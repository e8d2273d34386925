"""edgert.mqttwire's PUBLISH decoder against paho's own, on generated packets: the same fields and
properties for every well-formed packet, MalformedPacket wherever paho raises one."""

from __future__ import annotations

import struct
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgert.mqttwire import Publish, WireClient, decode_publish

NAMES = (
    "PayloadFormatIndicator",
    "MessageExpiryInterval",
    "ContentType",
    "ResponseTopic",
    "CorrelationData",
    "SubscriptionIdentifier",
    "TopicAlias",
    "UserProperty",
)
text = st.text(st.characters(codec="utf-8", exclude_characters="\x00\ufeff"))
values = {
    "PayloadFormatIndicator": st.integers(0, 1),
    "MessageExpiryInterval": st.integers(0, 2**32 - 1),
    "ContentType": text,
    "ResponseTopic": text,
    "CorrelationData": st.binary(max_size=40),
    "SubscriptionIdentifier": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3),
    "TopicAlias": st.integers(1, 65535),
    "UserProperty": st.lists(st.tuples(text, text), min_size=1, max_size=3),
}


def _properties() -> Properties:
    return Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


@st.composite
def publishes(draw: Any) -> tuple[int, bytes, bool]:
    v5 = draw(st.booleans())
    qos = draw(st.integers(0, 1))
    header = 0x30 | qos << 1 | draw(st.integers(0, 1)) | draw(st.integers(0, 1)) << 3
    topic = draw(text if v5 else text.filter(bool)).encode("utf-8")
    packet = struct.pack("!H", len(topic)) + topic
    if qos:
        packet += struct.pack("!H", draw(st.integers(1, 65535)))
    if v5:
        props = _properties()
        for name in draw(st.lists(st.sampled_from(NAMES), unique=True)):
            setattr(props, name, draw(values[name]))
        packet += props.pack()  # type: ignore[no-untyped-call]
    return header, packet + draw(st.binary(max_size=64)), v5


def _paho(header: int, packet: bytes, v5: bool) -> Publish:
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    got = _packet.decode_publish(header, packet, protocol)
    props = {n: getattr(got.properties, n) for n in NAMES if hasattr(got.properties, n)}
    return Publish(
        got.topic.decode("utf-8"), bytes(got.payload), got.qos, got.retain, got.dup, got.mid, props
    )


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(publishes())
def test_a_publish_decodes_as_paho_decodes_it(publish: tuple[int, bytes, bool]) -> None:
    assert decode_publish(*publish) == _paho(*publish)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(publishes(), st.data())
def test_a_cut_or_changed_packet_is_malformed_where_paho_finds_it_malformed(
    publish: tuple[int, bytes, bool], data: Any
) -> None:
    """Stricter than paho, never laxer: paho reads a string cut off by the end of its properties
    as a shorter one (it slices past the end); that is malformed here."""
    header, packet, v5 = publish
    if data.draw(st.booleans()):
        packet = packet[: data.draw(st.integers(0, max(0, len(packet) - 1)))]
    elif packet:
        at = data.draw(st.integers(0, len(packet) - 1))
        packet = packet[:at] + bytes([data.draw(st.integers(0, 255))]) + packet[at + 1 :]
    try:
        expected = _paho(header, packet, v5)
    except (MalformedPacket, UnicodeDecodeError):  # paho decodes the topic when it is read
        with pytest.raises(MalformedPacket):
            decode_publish(header, packet, v5)
    else:
        try:
            got = decode_publish(header, packet, v5)
        except MalformedPacket:
            pass
        else:
            assert got == expected


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (b"\x00\x05ab", "topic runs past the packet"),
        (b"\x00\x01t\x00", "QoS 1 packet id cut short"),
        (b"\x00\x01t\x00\x07\x05\x02\x00\x00", "expiry interval cut short"),
        (b"\x00\x01t\x00\x07\x04\x01\x00\x01\x00", "PayloadFormatIndicator twice"),
        (b"\x00\x01t\x00\x07\x02\x11\x00", "a CONNECT property"),
        (b"\x00\x01t\x00\x07\x04\x03\x00\x01\x00", "U+0000 in the content type"),
        (b"\x00\x01t\x00\x07\xff\xff\xff\xff\x7f", "a 5-byte properties length"),
    ],
)
def test_malformed_publishes_are_refused(packet: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket):
        decode_publish(0x32, packet, True)


def _client(deliver: Any) -> WireClient:
    client = WireClient(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    client._thread = threading.current_thread()  # as if this were its network thread
    client.deliver = deliver
    return client


def _feed(client: WireClient, header: int, body: bytes) -> None:
    """As if paho had just read this packet."""
    client._in_packet["command"] = header
    client._in_packet["packet"] = bytearray(body)


def test_qos_0_and_1_are_delivered_decoded_and_qos_2_goes_to_paho() -> None:
    got: list[Publish] = []
    client = _client(got.append)
    props = _properties()
    props.ResponseTopic = "r/1"
    body = b"\x00\x03a/b" + b"\x00\x09" + props.pack() + b"{}"  # type: ignore[no-untyped-call]
    for header in (0x32, 0x34):
        _feed(client, header, body)
        assert client._handle_publish() == paho.MQTT_ERR_SUCCESS
    assert got == [Publish("a/b", b"{}", 1, False, False, 9, {"ResponseTopic": "r/1"})]
    assert [p["packet"][0] for p in client._out_packet] == [0x50]  # QoS 2's PUBREC; no PUBACK:
    # with manual_ack the caller acknowledges. Without it, the client does:
    client._manual_ack = False
    _feed(client, 0x32, body)
    client._handle_publish()
    assert [p["packet"][:4] for p in client._out_packet][1:] == [b"\x40\x02\x00\x09"]
    held = client._in_messages[9]  # paho holds a QoS 2 message until its PUBREL
    assert (held.topic, held.qos, getattr(held.properties, "ResponseTopic", None)) == (
        "a/b",
        2,
        "r/1",
    )


def test_a_plain_puback_tells_on_publish_once_and_one_with_a_reason_goes_to_paho() -> None:
    published: list[tuple[int, bool]] = []
    client = _client(None)
    client.on_publish = lambda c, u, mid, reason, props: published.append((mid, reason.is_failure))
    for mid in (7, 8):
        client._out_messages[mid] = paho.MQTTMessage(mid, b"t")
        client._out_messages[mid].qos = 1
    _feed(client, 0x40, b"\x00\x07")
    client._handle_pubackcomp("PUBACK")
    client._handle_pubackcomp("PUBACK")  # again: it was told already
    _feed(client, 0x40, b"\x00\x08\x80\x00")
    client._handle_pubackcomp("PUBACK")  # reason 0x80, unspecified error: paho's decoder
    assert published == [(7, False), (8, True)]
    assert client._out_messages == {}


class _ChunkSocket:
    """Hands out scripted chunks, one per recv() (BlockingIOError when none is left), and counts
    the recv() calls."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        assert len(chunk) <= size
        return chunk

    def close(self) -> None:
        pass


def _publish(n: int, body: bytes = b"{}") -> bytes:
    """A QoS 1 MQTT 5 PUBLISH to t/<n>, packet id n."""
    rest = b"\x00\x03t/" + bytes([48 + n]) + n.to_bytes(2, "big") + b"\x00" + body
    remaining = len(rest)
    length = (
        bytes([remaining & 0x7F | 0x80, remaining >> 7]) if remaining > 127 else bytes([remaining])
    )
    return b"\x32" + length + rest


def test_packets_read_in_one_recv_are_each_delivered_and_a_cut_one_waits_for_its_rest() -> None:
    got: list[Publish] = []
    client = _client(got.append)
    big = _publish(3, b"x" * 300)  # a two-byte remaining length
    stream = _publish(1) + _publish(2) + big + _publish(4)
    cut = len(stream) - 150  # inside the big one
    sock = _ChunkSocket([stream[:cut]])
    client._sock = sock  # type: ignore[assignment]
    assert client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert [p.topic for p in got] == ["t/1", "t/2"]
    assert sock.recvs == 2  # one read, one that found nothing more: not 3 or more a packet
    sock.chunks = [stream[cut:-5], stream[-5:]]
    assert client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert [(p.topic, p.mid, len(p.payload)) for p in got][2:] == [("t/3", 3, 300), ("t/4", 4, 2)]
    assert client._received == bytearray() and client._in_packet["command"] == 0


def test_a_closed_connection_forgets_what_it_read() -> None:
    client = _client(lambda p: None)
    client._sock = _ChunkSocket([])  # type: ignore[assignment]
    client._received += _publish(1)[:4]  # the start of a packet the connection did not finish
    client._sock_close()
    assert client._received == bytearray()


def test_a_short_read_used_up_is_not_followed_by_a_recv_that_would_find_nothing() -> None:
    got: list[Publish] = []
    flushes: list[int] = []
    client = _client(got.append)
    client.after_read = lambda: flushes.append(len(got))
    sock = _ChunkSocket([_publish(1) + _publish(2)])
    client._sock = sock  # type: ignore[assignment]
    for mid in (7, 8):  # two replies awaiting their PUBACK: paho reads up to 2 packets a call
        client._out_messages[mid] = paho.MQTTMessage(mid)
    assert client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert [p.topic for p in got] == ["t/1", "t/2"] and sock.recvs == 1  # select() tells of more
    sock.chunks = [b"\x40\x02\x00\x07"]  # a PUBACK alone: nothing for after_read to run
    client._out_messages[7].qos = 1
    client.loop_read()
    assert sock.recvs == 2 and 7 not in client._out_messages
    assert flushes == [2]
