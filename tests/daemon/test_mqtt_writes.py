"""edgert.mqtt's paho subclass: what its network thread queues goes out in one send."""

from __future__ import annotations

import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgert.mqttwire import WireClient as _Client


class _Socket:
    """Takes at most ``limit`` bytes a send, as a full socket buffer does."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.sends: list[bytes] = []
        self.limit = limit

    def send(self, data: bytes) -> int:
        self.sends.append(bytes(data[: self.limit]))
        return min(len(data), self.limit)

    def close(self) -> None:
        pass


def _client(sock: _Socket) -> _Client:
    client = _Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client._sock = sock  # type: ignore[assignment]
    client._thread = threading.current_thread()  # as if this were its network thread
    return client


def test_packets_queued_on_the_network_thread_go_out_in_one_send() -> None:
    sock = _Socket()
    client = _client(sock)
    packets = [bytes([0x40, 2, 0, n]) for n in range(3)] + [b"\x30\x05\x00\x01tabc"]
    infos = [paho.MQTTMessageInfo(n) for n in range(len(packets))]
    for n, packet in enumerate(packets):
        command = paho.PUBLISH if packet[0] == 0x30 else paho.PUBACK
        client._packet_queue(command, packet, n, 0, infos[n])
    assert sock.sends == []  # queued, not written: the loop writes before it waits
    client._packet_write()
    assert sock.sends == [b"".join(packets)]
    assert infos[-1].is_published()  # the QoS 0 publish inside is marked published


def test_a_partial_send_keeps_the_rest_in_order_and_a_disconnect_goes_alone() -> None:
    sock = _Socket(limit=5)
    client = _client(sock)
    packets = [bytes([0x40, 2, 0, n]) for n in range(3)]
    for n, packet in enumerate(packets):
        client._packet_queue(paho.PUBACK, packet, n, 0)
    client._packet_queue(paho.DISCONNECT, b"\xe0\x00", 0, 0)
    while client._out_packet:
        client._packet_write()
    assert b"".join(sock.sends) == b"".join(packets) + b"\xe0\x00"
    assert [len(s) for s in sock.sends] == [5, 5, 2, 2]  # the 12 bytes merged; DISCONNECT alone
