"""When a taken QoS 1 request is acknowledged (edgert.acks): after its reply's PUBACK, at once
for a reply that needs none, and after hold_s at the latest; exactly once. No broker needed."""

from __future__ import annotations

from dataclasses import dataclass

from edgert.acks import PendingAcks


@dataclass(frozen=True)
class Request:
    mid: int
    qos: int = 1


def _acks(hold_s: float = 0.5) -> tuple[PendingAcks[Request], list[int]]:
    sent: list[int] = []
    return PendingAcks(lambda m: sent.append(m.mid), hold_s), sent


def test_a_request_is_acknowledged_when_its_replys_puback_comes() -> None:
    acks, sent = _acks()
    acks.taken(Request(5))
    acks.replied(Request(5), reply_mid=900)
    assert sent == [] and len(acks) == 1
    acks.published(901)  # another publish's PUBACK
    assert sent == []
    acks.published(900)
    assert sent == [5] and len(acks) == 0
    acks.published(900)  # never twice
    acks.overdue(float("inf"))
    assert sent == [5]


def test_a_reply_sent_while_the_request_is_taken_still_maps() -> None:
    # An error reply goes out inside on_message, before the transport records the take.
    acks, sent = _acks()
    acks.replied(Request(7), reply_mid=31)
    acks.taken(Request(7))
    acks.published(31)
    assert sent == [7]


def test_a_reply_needing_no_puback_acknowledges_at_once_even_before_the_take() -> None:
    acks, sent = _acks()
    acks.taken(Request(1))
    acks.replied(Request(1), reply_mid=None)  # a QoS 0 reply, or one refused
    assert sent == [1]
    acks.replied(Request(2), reply_mid=None)
    assert sent == [1]
    acks.taken(Request(2))
    assert sent == [1, 2] and len(acks) == 0


def test_what_waits_past_the_hold_is_acknowledged_and_qos_0_is_never_held() -> None:
    acks, sent = _acks(hold_s=0.5)
    acks.taken(Request(3))  # held while its model loads: no reply for now
    acks.taken(Request(4, qos=0))
    acks.overdue()
    assert sent == [] and len(acks) == 1
    acks.overdue(now=1e12)
    assert sent == [3] and len(acks) == 0


def test_a_lost_connection_forgets_its_packet_ids() -> None:
    acks, sent = _acks()
    acks.taken(Request(9))
    acks.replied(Request(9), reply_mid=40)
    acks.reset()
    acks.published(40)
    acks.overdue(float("inf"))
    assert sent == [] and len(acks) == 0


def test_the_reply_map_does_not_grow_with_replies_whose_puback_never_comes() -> None:
    acks, sent = _acks(hold_s=0.0)
    for mid in range(1, 2000):
        acks.taken(Request(mid % 500 + 1))
        acks.replied(Request(mid % 500 + 1), reply_mid=mid)
        acks.overdue(float("inf"))
    assert len(sent) == 1999
    assert acks.awaited <= 2 * len(acks) + 65
