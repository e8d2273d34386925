"""The one hook through which side channels see results: the events topic, the sources (a
microphone announcing what its stream's requests found), and whatever comes next subscribe here.

The serving pipeline only calls the hook, once per answered request; it knows none of the
observers, and one failing observer neither stops the others nor reaches the model's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgert.daemon.answers import EventsFn
from edgert.protocol import Topics
from edgert.transport import MqttTransport

__all__ = ["EventsTopic", "Observed", "Observer", "ResultHook"]

log = logging.getLogger("edgert.daemon")


@dataclass(frozen=True)
class Observed:
    """One request's result, as the side channels see it."""

    model: str
    reply: bytes  # the ok reply the requester got
    stream: str | None  # the request's stream id, if any
    summary: Any  # the post-processed result (model.toml [postprocess]), if any


Observer = Callable[[Observed], None]


class ResultHook:
    """Observers of every result; :meth:`events_for` is what a model's worker calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observers: tuple[Observer, ...] = ()

    def subscribe(self, observer: Observer) -> None:
        with self._lock:
            self._observers = (*self._observers, observer)

    @property
    def active(self) -> bool:
        """Whether anyone observes: a worker started while no one does skips the hook."""
        return bool(self._observers)

    def events_for(self, model: str) -> EventsFn:
        """The ``events`` callback of ``model``'s worker: each of its results to the hook."""

        def events(reply: bytes, stream: str | None, summary: Any) -> None:
            self.publish(Observed(model, reply, stream, summary))

        return events

    def publish(self, result: Observed) -> None:
        """Show ``result`` to every observer, in the order they subscribed."""
        for observer in self._observers:  # a tuple, replaced whole: safe to read unlocked
            try:
                observer(result)
            except Exception:  # one observer's bug must not silence the others
                log.exception("%s: a result observer failed", result.model)


class EventsTopic:
    """Publishes every result's reply to its model's events topic (Home Assistant's feed)."""

    def __init__(self, connection: MqttTransport, topics: Topics) -> None:
        self._connection = connection
        self._topics = topics
        self._names: dict[str, str] = {}  # model -> its events topic

    def __call__(self, result: Observed) -> None:
        topic = self._names.get(result.model)
        if topic is None:
            topic = self._names.setdefault(result.model, self._topics.events(result.model))
        self._connection.publish(topic, result.reply, qos=0)
