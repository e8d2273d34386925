"""Home Assistant device discovery as the daemon publishes it: retained, re-sent when Home
Assistant says it is online again, and with the entities of models or sources that went away
removed (also across restarts: the retained config of an earlier run is read back)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from edgert.daemon.discovery import (
    ModelEntity,
    SourceEntity,
    component_platforms,
    device_discovery,
)
from edgert.errors import EdgertError
from edgert.topics import Topics
from edgert.transport import MqttTransport

__all__ = ["HA_STATUS", "HomeAssistant"]

log = logging.getLogger("edgert.daemon")
HA_STATUS = "homeassistant/status"  # Home Assistant's birth and last-will topic

Entities = Callable[[], tuple[list[ModelEntity], list[SourceEntity]]]


class HomeAssistant:
    """Publishes one node's discovery config; ``entities`` says what is served now."""

    def __init__(
        self, node: str, topics: Topics, connection: MqttTransport, entities: Entities
    ) -> None:
        self.node, self.topics, self.connection = node, topics, connection
        self._entities = entities
        self._published: set[str] = set()  # component ids Home Assistant was last told of
        # Component id -> the retained state topic of ours it reads (a video source's snapshot
        # and counts): cleared when the component is removed, so no stale picture lingers.
        self._retained: dict[str, str] = {}
        self._lock = threading.Lock()

    def subscribe(self) -> None:
        self.connection.subscribe(HA_STATUS, 1)  # re-send when Home Assistant (re)starts
        self.connection.subscribe(self.topics.discovery, 1)  # what an earlier run left

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Handle Home Assistant's status and our own retained config; False for other topics."""
        if topic == HA_STATUS:
            if payload == b"online":
                self.publish()
            return True
        if topic == self.topics.discovery:
            self._remember(payload)
            return True
        return False

    def _remember(self, payload: bytes) -> None:
        try:
            components = json.loads(payload).get("cmps", {})
        except (ValueError, AttributeError, RecursionError):
            return  # not a config of ours: anyone allowed to write the topic may send anything
        if not isinstance(components, dict):
            return
        # A component we published has a platform ("p") and more; {"p": ...} alone removes one.
        published = {
            c
            for c, body in components.items()
            if isinstance(body, dict) and "p" in body and set(body) != {"p"}
        }
        with self._lock:
            self._published |= published
            self._retained |= self._retained_topics(components)
        try:
            current = set(component_platforms(*self._entities()))
        except EdgertError:
            return
        if published - current:
            self.publish()

    def publish(self) -> None:
        """The current config, after a one-off config removing what is no longer served."""
        try:
            models, sources = self._entities()
            current = component_platforms(models, sources)
            with self._lock:
                removed = [c for c in self._published if c not in current]
            if removed:
                topic, payload = device_discovery(
                    self.node, self.topics, models, removed, sources=sources
                )
                self.connection.publish(topic, payload, qos=1, retain=True)
            topic, payload = device_discovery(self.node, self.topics, models, sources=sources)
        except EdgertError as exc:
            log.error("Home Assistant discovery not published: %s", exc.message)
            return
        with self._lock:
            self._published = set(current)
            reading = self._retained_topics(json.loads(payload)["cmps"])
            gone = {self._retained.pop(c) for c in removed if c in self._retained}
            self._retained |= reading
            cleared = sorted(gone - set(reading.values()))
        self.connection.publish_retained(topic, payload)
        for state in cleared:
            self.connection.publish_retained(state, b"")  # an empty retained message clears it

    def _retained_topics(self, components: dict[str, Any]) -> dict[str, str]:
        """The components reading a retained topic of this node's video sources."""
        ours = (self.topics.snapshot("_")[:-1], self.topics.counts("_")[:-1])
        found = {}
        for component_id, body in components.items():
            if not isinstance(body, dict):
                continue
            topic = body.get("image_topic", body.get("stat_t"))
            if isinstance(topic, str) and topic.startswith(ours):
                found[component_id] = topic
        return found
