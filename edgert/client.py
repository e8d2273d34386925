"""``edgert.Client``: call a model served by an edgert daemon, over MQTT 5 request/response.

The client follows the protocol's end-to-end delivery rule: a request still unanswered after its
re-send interval (or a reconnect) is published again with the same id; the daemon runs it once
and answers repeats from its reply cache.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from edgert.errors import EdgertError
from edgert.mqtt import Message, MqttConnection
from edgert.settings import BrokerConfig, parse_broker_url

__all__ = ["Client", "RemoteError", "Reply"]


class RemoteError(EdgertError):
    """The daemon answered with an error reply; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.remote_message = message


@dataclass(frozen=True)
class Reply:
    """A successful reply: outputs by name (numpy arrays), post-processed result, timings."""

    id: str
    model: str
    version: str
    outputs: Mapping[str, np.ndarray]
    result: Any = None
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """The protocol's exact binary form of a tensor inside JSON: dtype, shape, base64 bytes."""
    contiguous = np.ascontiguousarray(array)
    return {
        "dtype": contiguous.dtype.name,
        "shape": list(contiguous.shape),
        "b64": base64.b64encode(contiguous.tobytes()).decode(),
    }


class Client:
    """A connection to the broker for calling models. Use as a context manager."""

    def __init__(
        self,
        broker: str | BrokerConfig = "mqtt://127.0.0.1:1883",
        *,
        prefix: str = "edgert",
        node: str | None = None,
        key: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        """``key``: the topic level that is this client's own (its requests go to
        ``<prefix>/infer/<model>/<key>``, its replies come on ``<prefix>/reply/<key>/<model>``);
        device/mosquitto's ACL wants the broker user name there, the default when there is one
        (else a random key)."""
        config = parse_broker_url(broker) if isinstance(broker, str) else broker
        self._key = key or config.username or uuid.uuid4().hex[:16]
        if not config.client_id:
            from dataclasses import replace

            client_id = f"edgert-client-{uuid.uuid4().hex[:16]}"
            config = replace(config, client_id=client_id, session_expiry=0)
        self.prefix = prefix
        self.node = node
        self._pending: dict[bytes, list[bytes]] = {}
        self._lock = threading.Lock()
        # Notified on every reply and every connect: a waiting request re-sends on a reconnect.
        self._changed = threading.Condition(self._lock)
        self._connects = 0
        self._connection = MqttConnection(
            config, on_message=self._on_reply, on_connect=self._on_connect
        )
        self._connection.subscribe(f"{prefix}/reply/{self._key}/#", qos=1)
        self._connection.start()
        self._wait_connected(connect_timeout)

    def _wait_connected(self, timeout: float) -> None:
        """Wait for the first connection; a refusal (bad credentials) ends the wait at once,
        since retrying cannot fix it. EdgertError with the broker's or the socket's reason."""
        connection = self._connection
        end = time.monotonic() + timeout
        while not connection.connected.wait(min(0.05, max(end - time.monotonic(), 0))):
            if connection.refused.is_set() or time.monotonic() >= end:
                connection.stop()
                raise EdgertError(
                    connection.last_error
                    or f"cannot reach the broker at {connection.address} within {timeout:g} s"
                )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.stop()

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any] | np.ndarray,
        *,
        timeout: float = 10.0,
        resend_after: float | None = None,
        deadline_ms: float | None = None,
        request_id: str | None = None,
        compact: bool = False,
        stream: str | None = None,
        reset: bool = False,
    ) -> Reply:
        """Run ``model`` on ``inputs`` (name → array, or one array for a one-input model).

        Re-sends with the same id every ``resend_after`` seconds (default: a third of
        ``timeout``) until answered; raises RemoteError for an error reply, EdgertError on timeout.
        ``stream`` names a stateful model's stream (the daemon keeps its state between requests;
        a re-sent request is answered once, so the state advances once); ``reset`` starts it over.
        """
        request_id = request_id or uuid.uuid4().hex
        if isinstance(inputs, np.ndarray):
            # A one-input model takes "inputs": <list>; float32 survives the JSON round trip.
            encoded: Any = inputs.tolist()
        else:
            encoded = {
                name: encode_tensor(value) if isinstance(value, np.ndarray) else value
                for name, value in inputs.items()
            }
        body: dict[str, Any] = {"id": request_id, "inputs": encoded}
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        if compact:
            body["compact"] = True
        if stream is not None:
            body["stream"] = stream
        if reset:
            body["reset"] = True
        payload = json.dumps(body, separators=(",", ":")).encode()
        base = f"{self.prefix}/node/{self.node}" if self.node else self.prefix
        topic = f"{base}/infer/{model}/{self._key}"  # keyed: what the device ACL allows
        reply_topic = f"{self.prefix}/reply/{self._key}/{model}"
        correlation = request_id.encode()
        box: list[bytes] = []
        with self._lock:
            self._pending[correlation] = box
        interval = resend_after or max(timeout / 3, 0.1)
        end = time.monotonic() + timeout
        try:
            while True:
                with self._lock:
                    connects = self._connects
                self._connection.publish(
                    topic,
                    payload,
                    qos=1,
                    response_topic=reply_topic,
                    correlation=correlation,
                    content_type="application/json",
                )
                wait = min(interval, end - time.monotonic())
                with self._changed:  # a reply, or a reconnect (re-send at once), or the interval
                    self._changed.wait_for(partial(self._woken, box, connects), wait)
                    if box:
                        break
                if time.monotonic() >= end:
                    raise EdgertError(f"no reply from {model} within {timeout:g} s")
        finally:
            with self._lock:
                self._pending.pop(correlation, None)
        return _parse_reply(box[0])

    def _on_reply(self, message: Message) -> bool:
        correlation = message.correlation
        with self._changed:
            box = self._pending.get(correlation) if correlation is not None else None
            if box is not None and not box:
                box.append(message.payload)
                self._changed.notify_all()
        return True

    def _woken(self, box: list[bytes], connects: int) -> bool:
        """Whether a request waiting since connect number ``connects`` has its reply, or must
        be sent again since the client reconnected."""
        return bool(box) or self._connects != connects

    def _on_connect(self) -> None:
        with self._changed:
            self._connects += 1
            self._changed.notify_all()


def _parse_reply(payload: bytes) -> Reply:
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise EdgertError(f"unreadable reply: {exc}") from exc
    if not data.get("ok"):
        error = data.get("error") or {}
        raise RemoteError(str(error.get("code", "internal")), str(error.get("message", "")))
    outputs = {name: np.asarray(value) for name, value in (data.get("outputs") or {}).items()}
    return Reply(
        id=str(data.get("id")),
        model=str(data.get("model")),
        version=str(data.get("version")),
        outputs=outputs,
        result=data.get("result"),
        latency_ms=data.get("latency_ms") or {},
        raw=data,
    )
