"""The transport's outbox: order kept across a lost connection, bounded, in flight by id."""

from __future__ import annotations

from edgert.transport.outbox import Outbox, Outgoing


def _items(n: int) -> list[Outgoing]:
    return [Outgoing(f"t/{i}", str(i).encode(), qos=1) for i in range(n)]


def test_what_was_in_flight_goes_again_before_what_waited_in_the_order_first_sent() -> None:
    box = Outbox(limit=10)
    a, b, c, d = _items(4)
    box.sent(7, a)
    box.sent(3, b)
    assert box.wait(c) and box.wait(d)
    box.connection_lost()
    assert box.in_flight == 0
    assert [item.topic for item in box.take()] == ["t/0", "t/1", "t/2", "t/3"]
    assert box.waiting == 0


def test_an_acknowledged_publish_leaves_and_is_not_sent_again() -> None:
    box = Outbox(limit=10)
    a, b = _items(2)
    box.sent(1, a)
    box.sent(2, b)
    assert box.acknowledged(1) is a and box.acknowledged(1) is None
    box.connection_lost()
    assert list(box.take()) == [b]


def test_the_box_is_bounded_by_what_waits_and_what_is_in_flight() -> None:
    box = Outbox(limit=3)
    a, b, c, d = _items(4)
    box.sent(1, a)
    assert box.wait(b) and box.wait(c)
    assert not box.wait(d)
    box.acknowledged(1)
    assert box.wait(d)


def test_a_publish_put_back_goes_first() -> None:
    box = Outbox(limit=10)
    a, b, c = _items(3)
    box.wait(a)
    box.wait(b)
    taken = box.take()
    first = next(taken)
    box.wait_first(first)  # no slot for it after all
    box.wait(c)
    assert [item.topic for item in box.take()] == ["t/0", "t/1", "t/2"]
