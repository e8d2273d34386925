"""The request side's stages without a broker: a wire that records what would be published, and
the stages wired as the service wires them, around real Models serving the compiled repository.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from edgert import ModelDir, open_model
from edgert.daemon.holding import HeldRequests
from edgert.daemon.ledger import RequestLedger
from edgert.daemon.models import Models
from edgert.daemon.observers import ResultHook
from edgert.daemon.replies import Replies
from edgert.daemon.requests import Requests
from edgert.protocol import Topics
from edgert.settings import DaemonConfig
from edgert.transport import Message, packet_size

NODE = "testnode"
TOPICS = Topics(prefix="edgert", node=NODE)


class Wire:
    """Stands in for the transport: every publish recorded, the broker's limit settable."""

    def __init__(self, max_packet_size: int | None = None) -> None:
        self.max_packet_size = max_packet_size
        self.published: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        correlation: bytes | None = None,
        ack: Message | None = None,
        **_: object,
    ) -> bool:
        with self.lock:
            self.published.append(
                {"topic": topic, "payload": payload, "qos": qos, "correlation": correlation}
                | {"ack": ack}
            )
        return True

    def packet_size(
        self, topic: str, payload: bytes, *, qos: int = 0, correlation: bytes | None = None
    ) -> int:
        # Correlation Data: a property id byte and a two-byte length before the bytes.
        extra = 3 + len(correlation) if correlation else 0
        return packet_size(topic, payload, qos, {}, True) + extra

    def subscribe(self, topic: str, qos: int, **_: object) -> None:
        pass

    def unsubscribe(self, topic: str) -> None:
        pass

    def replies(self) -> list[dict[str, Any]]:
        """What was published, each payload decoded as JSON."""
        with self.lock:
            return [p | {"doc": json.loads(p["payload"])} for p in self.published]


def request(
    topic: str,
    body: dict[str, Any] | bytes,
    *,
    qos: int = 1,
    mid: int = 7,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    user: dict[str, str] | None = None,
    subscriptions: tuple[int, ...] = (),
) -> Message:
    """A request as the transport hands it on."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(
        topic,
        payload,
        qos,
        False,
        mid,
        response_topic=response_topic,
        correlation=correlation,
        user=user or {},
        subscriptions=subscriptions,
    )


READING = [[21.0, 40.0, 300.0, 600.0]]


class Stages:
    """The request side as the service wires it, around real :class:`Models`."""

    def __init__(self, repository: Path, wire: Wire | None = None, **config: Any) -> None:
        self.repository = repository
        self.config = DaemonConfig(node=NODE, repository=repository, **config)
        self.wire = wire or Wire()
        self.ledger = RequestLedger(self.config.reply_cache)
        self.stopping = threading.Event()
        self.observers = ResultHook()
        self.replies = Replies(self.config, TOPICS, self.wire)  # type: ignore[arg-type]
        self.models = Models(
            self.config,
            self.ledger,
            self.wire,  # type: ignore[arg-type]
            TOPICS,
            self.stopping,
            publish_reply=self.replies.publish,
            observers=self.observers,
            on_built=lambda name, ok: None,
            held=HeldRequests(self.config.hold_while_loading, self.config.queue_size),
            replay=lambda held: self.requests.replay(held),
        )
        self.requests = Requests(
            self.config, TOPICS, self.ledger, self.models, self.replies, self.stopping
        )

    def serve(self, name: str = "occupancy") -> None:
        model = ModelDir(self.repository / name)
        self.models.serve(model, open_model(model, self.config.backend))

    def close(self) -> None:
        for entry in self.models.entries():
            entry.worker.drain(10)
            entry.worker.stop()
