"""Replies counted by outcome, for ``/metrics`` (:mod:`edgert.daemon.metrics` reads them when
scraped): on the request path a count is one dictionary increment under an uncontended lock,
so serving pays nothing for a metric nobody scrapes.

An :class:`Outcome` is what a reply said: its model and version, and its error code (None for
success). A model name no repository model has is counted as ``""`` (its version too): the
name is the device's, and a label per name a device makes up would grow without bound.
"""

from __future__ import annotations

import json
import threading
from typing import NamedTuple

__all__ = ["Outcome", "ReplyCounts", "replayed"]


class Outcome(NamedTuple):
    """What one reply said: ``code`` is None for success, else the error code's value."""

    model: str
    version: str
    code: str | None = None


class ReplyCounts:
    """How many replies of each :class:`Outcome` were sent (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Outcome, int] = {}

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1

    def snapshot(self) -> dict[Outcome, int]:
        with self._lock:
            return dict(self._counts)


def replayed(model: str, version: str, reply: bytes) -> Outcome:
    """The outcome of a cached reply sent again to a repeated request (a rare path: the reply is
    read back rather than every reply carrying its outcome into the cache)."""
    try:
        doc = json.loads(reply)
        code = None if doc.get("ok") else str(doc["error"]["code"])
    except (ValueError, KeyError, TypeError, AttributeError):
        code = "internal"
    return Outcome(model, version, code)
