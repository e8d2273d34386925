"""What the transport has to send and has not had acknowledged: publishes waiting for a
connection or for a slot of the broker's Receive Maximum, and QoS 1 publishes in flight, sent
again after a reconnect (at least once). Pure and single-threaded: the event loop's."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec

from edgert.transport.message import Message

__all__ = ["Outbox", "Outgoing"]


class Outgoing(msgspec.Struct, frozen=True):
    """One publish, as the transport will hand it to gmqtt."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    props: dict[str, Any] = msgspec.field(default_factory=dict)
    ack: Message | None = None  # the request this answers (see edgert.acks)


class Outbox:
    """Waiting publishes, oldest first, up to ``limit``; and those in flight by packet id."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: deque[Outgoing] = deque()
        self._inflight: dict[int, Outgoing] = {}  # packet id -> publish, in the order sent

    def wait(self, item: Outgoing) -> bool:
        """Keep ``item`` to send later; False when the box is full (it is dropped)."""
        if len(self._waiting) + len(self._inflight) >= self.limit:
            return False
        self._waiting.append(item)
        return True

    def wait_first(self, item: Outgoing) -> None:
        """``item`` could not be sent after all (no slot): it goes first, order kept."""
        self._waiting.appendleft(item)

    def sent(self, mid: int, item: Outgoing) -> None:
        self._inflight[mid] = item

    def acknowledged(self, mid: int) -> Outgoing | None:
        return self._inflight.pop(mid, None)

    def connection_lost(self) -> None:
        """What was in flight goes out again, before what waited, in the order first sent."""
        self._waiting.extendleft(reversed(list(self._inflight.values())))
        self._inflight.clear()

    def take(self) -> Iterator[Outgoing]:
        """The waiting publishes, oldest first, each removed as it is taken."""
        while self._waiting:
            yield self._waiting.popleft()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)
