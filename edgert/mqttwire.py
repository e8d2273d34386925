"""paho's client made fit for many small packets: the daemon's hot path through MQTT.

Only :mod:`edgert.mqtt` uses this module. paho spends most of a small request's time in general
machinery: recv() calls and a send() per packet, a wake-up write per packet queued, and a
``Properties`` object per packet received, built and filled by name searches: more than the
packet's own bytes need, for every request and every acknowledgement. Here:

- a PUBLISH at QoS 0 or 1 is decoded by :func:`decode_publish` and handed to ``deliver`` as a
  :class:`Publish` (no MQTTMessage, no Properties); QoS 2 and clients without ``deliver`` take
  paho's own path;
- a PUBACK without reason or properties (a broker's usual one) skips paho's decoder;
- reads are buffered and writes coalesced (see :class:`WireClient`).

Only paho's private ``_sock_recv``, ``_sock_close``, ``_packet_read``, ``_packet_queue``,
``_packet_write``, ``_handle_publish`` and ``_handle_pubackcomp``, and its ``loop_read``, are
overridden, each falling back to paho's own for what it does not cover. tests/test_mqttwire.py
checks the decoder against paho's on generated packets, and the reads; tests/daemon runs the
whole client against mosquitto.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["Publish", "PublishProperties", "WireClient", "decode_publish", "packet_size"]


class Publish(NamedTuple):
    """A PUBLISH as received, properties by paho's names."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    properties: dict[str, Any]


# MQTT 5 properties a PUBLISH may carry: identifier → (paho's name, encoding).
_PUBLISH_PROPERTIES = {
    0x01: ("PayloadFormatIndicator", "byte"),
    0x02: ("MessageExpiryInterval", "int4"),
    0x03: ("ContentType", "utf8"),
    0x08: ("ResponseTopic", "utf8"),
    0x09: ("CorrelationData", "binary"),
    0x0B: ("SubscriptionIdentifier", "varint"),
    0x23: ("TopicAlias", "int2"),
    0x26: ("UserProperty", "pair"),
}
_REPEATABLE = ("SubscriptionIdentifier", "UserProperty")  # paho gives these as lists
_LIMITS: dict[str, tuple[Any, Any]] = {  # as paho checks them
    "PayloadFormatIndicator": (0, 1),
    "TopicAlias": (1, 65535),
    "SubscriptionIdentifier": (1, 268_435_455),
}


def _int(data: bytes | bytearray, pos: int, size: int, end: int) -> int:
    if pos + size > end:
        raise MalformedPacket("an integer runs past its packet")
    return int.from_bytes(data[pos : pos + size], "big")


def _read_varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(4):
        if pos >= end:
            break
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MalformedPacket("a variable byte integer is cut short or longer than 4 bytes")


def _binary(data: bytes | bytearray, pos: int, end: int) -> tuple[bytes, int]:
    stop = pos + 2 + _int(data, pos, 2, end)
    if stop > end:
        raise MalformedPacket("a length-prefixed field runs past its packet")
    return bytes(data[pos + 2 : stop]), stop


def _utf8(data: bytes | bytearray, pos: int, end: int) -> tuple[str, int]:
    raw, pos = _binary(data, pos, end)
    try:
        text = raw.decode("utf-8")  # strict: no surrogates (MQTT-1.5.4-1)
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"a string is not UTF-8: {exc}") from exc
    if "\x00" in text or "\ufeff" in text:  # as paho: MQTT-1.5.4-2, -3
        raise MalformedPacket("a string holds U+0000 or U+FEFF")
    return text, pos


def _properties(data: bytes | bytearray, pos: int) -> tuple[dict[str, Any], int]:
    """The PUBLISH properties at ``pos``, and where the payload starts."""
    length, pos = _read_varint(data, pos, len(data))
    end = pos + length
    if end > len(data):
        raise MalformedPacket("the properties run past their packet")
    found: dict[str, Any] = {}
    while pos < end:
        ident, pos = _read_varint(data, pos, end)
        if ident not in _PUBLISH_PROPERTIES:
            raise MalformedPacket(f"property {ident} is not one a PUBLISH carries")
        name, kind = _PUBLISH_PROPERTIES[ident]
        value: Any
        if kind == "utf8":
            value, pos = _utf8(data, pos, end)
        elif kind == "binary":
            value, pos = _binary(data, pos, end)
        elif kind == "pair":
            key, pos = _utf8(data, pos, end)
            text, pos = _utf8(data, pos, end)
            value = (key, text)
        elif kind == "varint":
            value, pos = _read_varint(data, pos, end)
        else:
            size = {"byte": 1, "int2": 2, "int4": 4}[kind]
            value = _int(data, pos, size, end)
            pos += size
        low, high = _LIMITS.get(name, (None, None))
        if low is not None and not low <= value <= high:
            raise MalformedPacket(f"property {name} is out of range: {value}")
        if name in _REPEATABLE:
            found.setdefault(name, []).append(value)
        elif name in found:
            raise MalformedPacket(f"property {name} appears twice")
        else:
            found[name] = value
    return found, end


def decode_publish(header: int, packet: bytes | bytearray, v5: bool) -> Publish:
    """A PUBLISH packet (``packet``: what follows the fixed header); MalformedPacket as paho's
    decoder raises it (and for a topic that is not UTF-8, which paho would raise later as a
    UnicodeDecodeError, a broker never sends: MQTT-4.7.3-1)."""
    end = len(packet)
    topic, pos = _utf8(packet, 0, end)  # paho decodes it later, when asked: the same check
    if not v5 and not topic:
        raise MalformedPacket("topic can't be empty in MQTTv3")
    qos = (header & 0x06) >> 1
    mid = 0
    if qos:
        mid = _int(packet, pos, 2, end)
        pos += 2
    properties: dict[str, Any] = {}
    if v5:
        properties, pos = _properties(packet, pos)
    return Publish(
        topic, bytes(packet[pos:]), qos, bool(header & 0x01), bool(header & 0x08), mid, properties
    )


_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)  # success; handed to on_publish, never changed
_PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


def _varint_size(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def packet_size(
    topic: str, payload: bytes, qos: int, properties: PublishProperties | None, v5: bool
) -> int:
    """The bytes of the PUBLISH packet paho sends for these, fixed header included: what a
    broker's Maximum Packet Size limits."""
    remaining = 2 + len(topic.encode("utf-8")) + len(payload) + (2 if qos > 0 else 0)
    if v5:
        remaining += len(properties.pack()) if properties is not None else 1
    return 1 + _varint_size(remaining) + remaining


class PublishProperties:
    """The MQTT 5 PUBLISH properties edgert sends, packed once by hand: paho only calls
    ``pack()`` on what it is given, and building its own Properties object for every reply
    would cost more than the reply's other work."""

    def __init__(
        self, correlation: bytes | None, content_type: str | None, response_topic: str | None
    ) -> None:
        body = bytearray()
        for ident, value in (
            (0x03, content_type.encode("utf-8") if content_type is not None else None),
            (0x08, response_topic.encode("utf-8") if response_topic is not None else None),
            (0x09, correlation),
        ):
            if value is not None:
                body += bytes((ident,)) + len(value).to_bytes(2, "big") + value
        self._packed = _varint(len(body)) + bytes(body)

    def pack(self) -> bytes:
        return self._packed


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


_SEND_BYTES = 1 << 16  # coalesced writes stop growing here (paho copies what a send left over)
_READ_BYTES = 1 << 16  # one recv() of the socket takes up to this much


class _Infos:
    """The QoS 0 publishes inside one coalesced write: paho marks a written QoS 0 publish as
    published through its packet's ``info``; this passes the mark on to each."""

    def __init__(self, infos: list[Any]) -> None:
        self.infos = infos

    def _set_as_published(self) -> None:
        for info in self.infos:
            info._set_as_published()


class WireClient(paho.Client):
    """paho's client, with its socket reads and writes made fit for many small packets.

    paho sends each queued packet with a send() of its own, and announces each one queued by
    writing a byte to its wake-up socket. Serving a request on the network thread queues two
    (its PUBACK and its reply; three with events on), so here:
    - what is queued on the network thread is not announced: its loop writes before it waits;
    - the packets waiting go out in one send(): a request's PUBACK with its reply, or all the
      replies of a burst (on loopback each send costs the sender the broker's receive path);
    - ``after_read`` runs after each burst of packets read, for requests kept to run together,
      and what the burst queued is written at once (paho would select() again first).
    paho also reads each packet with three recv() calls or more (its first byte, each length
    byte, the rest); here one recv() takes what the socket holds, each whole packet in it is
    handled at once, and paho's own reads (of a packet not all here yet) are served from it
    until it is used up (``loop_read`` reads on while any is left: select() cannot see it).
    The packets and their order are paho's own (tests/daemon runs them against mosquitto).
    """

    after_read: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = bytearray()  # read from the socket, not yet taken by paho
        # Within one loop_read: the last recv() was short (the socket had no more then) and its
        # bytes are all handled, so another recv() now would most likely find nothing; select()
        # tells if more came (one less syscall per wake-up).
        self._drained = False
        self._published = False  # a PUBLISH was handled in this loop_read (after_read is due)

    def _sock_recv(self, bufsize: int) -> bytes:
        received = self._received
        if not received:
            data = super()._sock_recv(_READ_BYTES)
            if len(data) <= bufsize:
                return data
            received += memoryview(data)[bufsize:]
            return data[:bufsize]
        data = bytes(received[:bufsize])
        del received[:bufsize]  # cheap: a bytearray drops its head without moving the rest
        return data

    def _packet_read(self) -> MQTTErrorCode:
        # A whole packet in the buffer (filled by one recv() when empty) is handled at once;
        # anything else (a packet not all here yet, paho part-way through one, a socket error)
        # is paho's, whose reads then come from the buffer.
        received = self._received
        if self._in_packet["command"] != 0:
            return super()._packet_read()
        if not received:
            if self._drained:
                self._drained = False
                return MQTTErrorCode.MQTT_ERR_AGAIN
            try:
                data = super()._sock_recv(_READ_BYTES)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError:
                return super()._packet_read()  # meets the error again, and logs and maps it
            if not data:
                return super()._packet_read()  # the connection closed: paho's handling
            received += data
            self._drained = len(data) < _READ_BYTES  # holds once the buffer is used up
        try:
            length, start = _read_varint(received, 1, len(received))
        except MalformedPacket:  # its length not all here yet, or too long: paho's to handle
            return super()._packet_read()
        end = start + length
        if end > len(received):
            return super()._packet_read()
        return self._handle_whole(received[0], length, received[start:end], end)

    def _handle_whole(self, command: int, length: int, body: bytearray, end: int) -> MQTTErrorCode:
        """paho's handling of one packet read whole (as its _packet_read ends)."""
        del self._received[:end]
        if self._received:
            self._drained = False
        packet = self._in_packet
        packet["command"], packet["remaining_length"], packet["packet"] = command, length, body
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        try:
            rc = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(),
            "to_process": 0,
            "pos": 0,
        }
        return rc

    def _sock_close(self) -> None:
        self._received.clear()  # the old connection's bytes
        super()._sock_close()

    # Called on the network thread with each PUBLISH at QoS 0 or 1 (paho's on_message is then
    # not called for it); QoS 1 is acknowledged by the caller (``ack``) unless not manual_ack.
    deliver: Callable[[Publish], None] | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        self._published = True
        if self.deliver is None or qos == 2:
            return super()._handle_publish()
        publish = decode_publish(header, self._in_packet["packet"], self._protocol == paho.MQTTv5)
        with self._in_callback_mutex:  # as paho holds it around on_message
            self.deliver(publish)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(publish.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:  # a reason code or properties: paho's decoder
            return super()._handle_pubackcomp(cmd)
        mid = int.from_bytes(packet, "big")
        with self._out_message_mutex:
            if mid in self._out_messages:  # paho's: tell on_publish once
                return self._do_on_publish(mid, _PUBACK_OK, _PUBACK_NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_queue(
        self, command: int, packet: bytes | bytearray, mid: int, qos: int, info: Any = None
    ) -> MQTTErrorCode:
        if self._thread is None or threading.current_thread() is not self._thread:
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        count = size = 0  # the head packets for one send: up to 64 KiB, and no DISCONNECT
        for packet in out:
            if packet["command"] & 0xF0 == paho.DISCONNECT or (count and size > _SEND_BYTES):
                break
            count += 1
            size += packet["to_process"]
        if count > 1:
            merged = bytearray()
            infos = []
            for _ in range(count):
                packet = out.popleft()
                merged += packet["packet"][packet["pos"] :]
                if packet["command"] & 0xF0 == paho.PUBLISH and packet["qos"] == 0:
                    infos.append(packet["info"])
            out.appendleft(
                {  # a QoS 0 PUBLISH to paho: once written, it marks each one inside published
                    "command": paho.PUBLISH,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(merged),
                    "packet": merged,
                    "info": _Infos(infos),  # type: ignore[typeddict-item]
                }
            )
        return super()._packet_write()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        self._drained = self._published = False
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._received and self._sock is not None:
            rc = super().loop_read(max_packets)  # paho stopped at max_packets; more is here
        if self._published and self.after_read is not None:  # not after a PUBACK alone
            self.after_read()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._out_packet:
            # What the reads queued (PUBACKs, replies) goes now, not after another select().
            rc = self.loop_write()
        return rc
