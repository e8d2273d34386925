"""When the daemon acknowledges a QoS 1 request: once the broker has acknowledged its reply.

Acknowledging a request as soon as it is taken, then sending its reply, leaves the daemon with
nothing to send once the broker's PUBACK of the reply arrives: the daemon's kernel delays its
TCP ACK (about 40 ms), and a broker with Nagle's algorithm on (mosquitto's default) holds the
next request behind that unacknowledged PUBACK, so a device sending one request at a time waits
that long for each. Sent when the reply's PUBACK comes, the request's PUBACK carries the ACK at
once. It is still acknowledgement after take (later, even): a request whose reply is slow, or
that gets none (held while its model loads, or naming no reply topic), is acknowledged once it
has waited ``hold_s``, so it never keeps a slot of the broker's Receive Maximum for long. Pure:
the transport (:mod:`edgert.mqtt`) sends the acknowledgements.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["Acknowledgeable", "PendingAcks"]


class Acknowledgeable(Protocol):
    @property
    def mid(self) -> int: ...

    @property
    def qos(self) -> int: ...


M = TypeVar("M", bound=Acknowledgeable)


class PendingAcks(Generic[M]):
    """Taken QoS 1 requests not yet acknowledged, each acknowledged exactly once (thread-safe)."""

    def __init__(self, send: Callable[[M], None], hold_s: float = 0.5) -> None:
        self._send = send
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[M, float]] = {}  # request mid -> (request, taken at)
        self._by_reply: dict[int, int] = {}  # reply mid -> request mid
        # Replied to with nothing to wait for before ``taken`` (an error reply sent while the
        # request was being taken): acknowledged as soon as it is taken.
        self._early: set[int] = set()

    def taken(self, message: M) -> None:
        """``message`` is taken; acknowledge it once its reply is acknowledged, or in time."""
        if message.qos == 0:
            return
        with self._lock:
            early = message.mid in self._early
            self._early.discard(message.mid)
            self._pending[message.mid] = (message, time.monotonic())
        if early:
            self.acknowledge(message.mid)

    def replied(self, message: M, reply_mid: int | None) -> None:
        """The reply to ``message`` went out as ``reply_mid`` (QoS 1), or needs no broker
        acknowledgement (None: QoS 0, or refused): then ``message`` is acknowledged now. The
        PUBACK of ``reply_mid`` is read on the network thread, after ``taken``, so the mapping
        holds even for a reply sent while the request was being taken."""
        if message.qos == 0:
            return
        if reply_mid is not None:
            with self._lock:
                self._by_reply[reply_mid] = message.mid
            return
        with self._lock:
            if message.mid not in self._pending:
                if len(self._early) > 1024:  # requests taken otherwise: never AFTER_REPLY
                    self._early.clear()
                self._early.add(message.mid)
                return
        self.acknowledge(message.mid)

    def published(self, reply_mid: int) -> None:
        """The broker acknowledged publish ``reply_mid``: the request it answered is due."""
        with self._lock:
            mid = self._by_reply.pop(reply_mid, None)
        if mid is not None:
            self.acknowledge(mid)

    def overdue(self, now: float | None = None) -> None:
        """Acknowledge what has waited ``hold_s`` or more for its reply."""
        limit = (time.monotonic() if now is None else now) - self.hold_s
        with self._lock:
            due = [mid for mid, (_, at) in self._pending.items() if at <= limit]
        for mid in due:
            self.acknowledge(mid)

    def acknowledge(self, mid: int) -> None:
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is not None and len(self._by_reply) > 2 * len(self._pending) + 64:
                # Replies whose request was acknowledged in time: forget their mapping.
                live = set(self._pending)
                self._by_reply = {r: m for r, m in self._by_reply.items() if m in live}
        if entry is not None:
            self._send(entry[0])

    def reset(self) -> None:
        """The connection is gone: its packet ids mean nothing on the next one (the broker
        redelivers what was not acknowledged, and the ledger answers repeats)."""
        with self._lock:
            self._pending.clear()
            self._by_reply.clear()
            self._early.clear()

    @property
    def awaited(self) -> int:
        """Replies whose PUBACK is still mapped to a request."""
        with self._lock:
            return len(self._by_reply)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)
