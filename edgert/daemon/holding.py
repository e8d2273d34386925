"""Requests for a model that is still building or loading, held until it is ready.

A device that sends the moment the daemon is ``online`` must get its answer, not ``no_model``:
the request waits here (bounded per model, and for at most ``[serve] hold_while_loading``
seconds or its own ``deadline_ms``) and is taken as if it had just arrived once the model is
served. Past the bound it is answered ``loading`` with ``retry_after_ms``; past its deadline,
``expired``. Which models are loading is this store's to say, so a request can never be held for
a model that has just become ready (see :meth:`HeldRequests.hold`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum

from edgert.protocol import Envelope
from edgert.transport import Message

__all__ = ["Held", "HeldRequests", "Holding"]


@dataclass(frozen=True)
class Held:
    """One request waiting for its model."""

    model: str
    message: Message
    received: float  # time.monotonic() at receipt: deadlines count from it, as always
    expires: float  # when it is answered if its model is still not ready
    envelope: Envelope  # what could be read of it, to answer it if it expires
    deadline: float | None  # its own deadline_ms, as a monotonic time


class Holding(Enum):
    """What :meth:`HeldRequests.hold` did."""

    HELD = "held"
    FULL = "full"  # the model is loading but its bound is reached: answer ``loading`` now
    NOT_LOADING = "not_loading"  # served or unknown: take it the usual way


class HeldRequests:
    """Which models are loading, and the requests held for each (thread-safe)."""

    def __init__(self, hold_s: float, capacity: int) -> None:
        self.hold_s = hold_s
        self.capacity = capacity
        self._lock = threading.Lock()
        self._loading: dict[str, float] = {}  # model -> since (monotonic)
        self._held: dict[str, deque[Held]] = {}

    def start(self, model: str) -> None:
        """``model`` is loading (or building) from now on."""
        with self._lock:
            self._loading.setdefault(model, time.monotonic())

    def finish(self, model: str) -> list[Held]:
        """``model`` is served or failed: what was held for it, oldest first, to be taken now."""
        with self._lock:
            self._loading.pop(model, None)
            return list(self._held.pop(model, ()))

    def loading(self) -> list[str]:
        with self._lock:
            return sorted(self._loading)

    def is_loading(self, model: str) -> bool:
        with self._lock:
            return model in self._loading

    def hold(self, model: str, message: Message, received: float, envelope: Envelope) -> Holding:
        """Hold ``message`` if ``model`` is loading and there is room (and a bound over 0)."""
        deadline = received + envelope.deadline_ms / 1000 if envelope.deadline_ms else None
        expires = received + self.hold_s
        if deadline is not None:
            expires = min(expires, deadline)
        with self._lock:
            if model not in self._loading:
                return Holding.NOT_LOADING
            queue = self._held.setdefault(model, deque())
            if self.hold_s <= 0 or len(queue) >= self.capacity:
                return Holding.FULL
            queue.append(Held(model, message, received, expires, envelope, deadline))
            return Holding.HELD

    def expired(self, now: float, *, everything: bool = False) -> list[Held]:
        """Take out what waited past its bound (``everything``: all of it, when stopping)."""
        gone: list[Held] = []
        with self._lock:
            for queue in self._held.values():
                # Bounds are equal for all and deadlines shorter, so look past the first.
                keep = [h for h in queue if not everything and h.expires > now]
                if len(keep) != len(queue):
                    gone.extend(h for h in queue if everything or h.expires <= now)
                    queue.clear()
                    queue.extend(keep)
        return gone

    def retry_after_ms(self, model: str) -> int:
        """When to try again: the hold bound, or how long the load has run so far when that is
        longer (a build that has run that long often needs as long again); at least a second."""
        with self._lock:
            since = self._loading.get(model)
        waited = time.monotonic() - since if since is not None else 0.0
        return int(max(1.0, self.hold_s, waited) * 1000)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._held.values())
