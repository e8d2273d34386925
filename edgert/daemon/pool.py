"""What the other nodes of a pool serve, from their retained catalogues and status topics.

In a pool (``[node] share_group``) each model's requests come through a shared subscription of
the nodes that serve it, and every pooled request also comes, once, to one node through the
``unserved`` group (:meth:`~edgert.topics.Topics.unserved_infer`). That node answers
``no_model`` only when no online node lists the model as loading or ready, so a request for a
model no node serves is answered exactly once.
"""

from __future__ import annotations

import logging
import threading

import orjson

from edgert.errors import ConfigError
from edgert.protocol import ONLINE
from edgert.settings import DaemonConfig
from edgert.topics import Topics

__all__ = ["Pool", "check_pool"]

log = logging.getLogger("edgert.daemon")

_LISTED = ("loading", "ready")  # states in which a node takes a model's requests


class Pool:
    """The other nodes' catalogues and status, read from the broker (thread-safe)."""

    def __init__(self, topics: Topics) -> None:
        self._topics = topics
        self._lock = threading.Lock()
        self._models: dict[str, frozenset[str]] = {}  # node -> models it takes requests for
        self._online: set[str] = set()

    @property
    def subscriptions(self) -> tuple[str, str]:
        return self._topics.node_topics("status"), self._topics.node_topics("models")

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Take a node's status or catalogue; False when ``topic`` is neither."""
        node = self._topics.node_of(topic, "status")
        if node is not None:
            with self._lock:
                if payload.decode(errors="replace") == ONLINE:
                    self._online.add(node)
                else:
                    self._online.discard(node)
            return True
        node = self._topics.node_of(topic, "models")
        if node is None:
            return False
        models = _listed(payload)
        with self._lock:
            if models is None:
                self._models.pop(node, None)
            else:
                self._models[node] = models
        return True

    def serving(self, model: str) -> list[str]:
        """The other online nodes that list ``model`` as loading or ready."""
        with self._lock:
            return sorted(
                node
                for node, models in self._models.items()
                if node != self._topics.node and node in self._online and model in models
            )

    def served(self) -> list[str]:
        """Every model some other online node lists."""
        with self._lock:
            names: set[str] = set()
            for node, models in self._models.items():
                if node != self._topics.node and node in self._online:
                    names |= models
            return sorted(names)


def _listed(payload: bytes) -> frozenset[str] | None:
    """The models a catalogue lists as loading or ready; None for a cleared or unreadable one."""
    if not payload:
        return None
    try:
        doc = orjson.loads(payload)
        return frozenset(
            str(entry["name"]) for entry in doc["models"] if entry.get("state", "ready") in _LISTED
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        log.warning("a node's catalogue could not be read; it counts as serving nothing")
        return None


def check_pool(config: DaemonConfig) -> None:
    """ConfigError for a pool the broker's protocol cannot carry."""
    if config.share_group and config.broker.protocol != 5:
        raise ConfigError(
            "[node] share_group needs [broker] protocol = 5: shared subscriptions, and the "
            "subscription identifiers a pool tells its copies of a request apart by, are MQTT 5"
        )
