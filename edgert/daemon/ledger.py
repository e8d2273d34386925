"""End-to-end delivery: requests keyed by (reply destination, id), so nothing runs twice.

A repeat of a request still in flight joins it; a repeat of one answered gets the cached reply
from a bounded cache. Requesters re-send after a timeout or a reconnect with the same id, and
QoS 1 redeliveries arrive the same way: both are answered exactly once per id.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec

from edgert.transport import Message

__all__ = ["Begin", "RequestLedger", "Waiter"]

# (reply destination, id): an integer id and its string are two keys, as a device sees them.
LedgerKey = tuple[str, str | int]


class Waiter(msgspec.Struct, frozen=True):
    """Someone to answer: where, with which correlation data, at which QoS; ``ack`` is the
    request acknowledged once the broker has the reply (see :mod:`edgert.acks`), and
    ``request_id`` the id it was sent with (a reply too large to send is answered with it)."""

    topic: str
    correlation: bytes | None
    qos: int
    ack: Message | None = None
    request_id: str | int | None = None


@dataclass
class _InFlight:
    waiters: list[Waiter] = field(default_factory=list)


class Begin(msgspec.Struct, frozen=True):
    """What :meth:`RequestLedger.begin` decided: run it, it joined one in flight, or a cached
    reply to send now."""

    run: bool
    cached: bytes | None = None


_RUN, _JOINED = Begin(run=True), Begin(run=False)


class RequestLedger:
    """Thread-safe: the network thread begins requests, model workers finish them."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._in_flight: dict[LedgerKey, _InFlight] = {}
        self._answered: OrderedDict[LedgerKey, bytes] = OrderedDict()
        self.joined = 0
        self.replayed = 0

    def begin(self, key: LedgerKey | None, waiter: Waiter) -> Begin:
        """Register a request; ``key`` None (no id) always runs and is never cached."""
        if key is None:
            return _RUN
        with self._lock:
            cached = self._answered.get(key)
            if cached is not None:
                self._answered.move_to_end(key)
                self.replayed += 1
                return Begin(run=False, cached=cached)
            flight = self._in_flight.get(key)
            if flight is not None:
                flight.waiters.append(waiter)
                self.joined += 1
                return _JOINED
            self._in_flight[key] = _InFlight([waiter])
            return _RUN

    def finish(
        self, key: LedgerKey | None, first: Waiter, reply: bytes, cache: bool
    ) -> list[Waiter]:
        """Record the reply; every waiter to answer (``first`` if it was not keyed).

        Error replies that a retry could fix (busy, expired) are not cached (``cache=False``).
        """
        if key is None:
            return [first]
        with self._lock:
            flight = self._in_flight.pop(key, None)
            if cache:
                self._answered[key] = reply
                while len(self._answered) > self.capacity:
                    self._answered.popitem(last=False)
        return flight.waiters if flight is not None else [first]

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)
