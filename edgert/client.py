"""``edgert.Client``: call a model served by an edgert daemon, over MQTT 5 request/response.

The client follows the protocol's end-to-end delivery rule: a request still unanswered after its
re-send interval (or a reconnect) is published again with the same id; the daemon runs it once
and answers repeats from its reply cache.

It also follows every node's retained catalogue (``<prefix>/node/+/models``) and status: replies'
JSON outputs take the dtypes the catalogue declares, and :meth:`Client.wait_ready` waits for a
node to list a model as ``ready``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from edgert.clientwire import decode_tensor, request_payload
from edgert.clientwire import encode_tensor as encode_tensor
from edgert.errors import EdgertError, NotReady
from edgert.settings import BrokerConfig, parse_broker_url
from edgert.spec import DType
from edgert.transport import Message, MqttTransport

__all__ = ["Client", "RemoteError", "Reply"]


class RemoteError(EdgertError):
    """The daemon answered with an error reply; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.remote_message = message


@dataclass(frozen=True)
class Reply:
    """A successful reply: outputs by name (numpy arrays), post-processed result, timings, and
    the backend that answered (``""`` from a daemon that does not say)."""

    id: str
    model: str
    version: str
    outputs: Mapping[str, np.ndarray]
    result: Any = None
    latency_ms: Mapping[str, float] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)
    backend: str = ""


class Client:
    """A connection to the broker for calling models. Use as a context manager.

    :meth:`infer` sends a request and waits for its reply; :meth:`wait_ready` waits until a
    node's catalogue lists a model as ready (``edgert infer`` calls it before sending).
    """

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
        # Notified on every reply, connect, catalogue and status: a waiting request re-sends
        # on a reconnect; wait_ready looks again at each catalogue and status.
        self._changed = threading.Condition(self._lock)
        self._connects = 0
        # What each node's retained topics say (under _lock): its catalogue's entries by model
        # name, and its status ("online", "offline").
        self._catalogues: dict[str, dict[str, Mapping[str, Any]]] = {}
        self._status: dict[str, str] = {}
        self._connection = MqttTransport(
            config, on_message=self._on_message, on_connect=self._on_connect
        )
        self._connection.subscribe(f"{prefix}/reply/{self._key}/#", qos=1)
        # Status first: the broker sends retained messages in subscription order, so a node's
        # "offline" is known before its (stale) catalogue that still says ready.
        self._connection.subscribe(f"{prefix}/node/+/status", qos=1)
        self._connection.subscribe(f"{prefix}/node/+/models", qos=1)
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

    def wait_ready(self, model: str, timeout: float = 30.0) -> str:
        """Block until a node's catalogue lists ``model`` as ``ready``; returns that node's id
        (the client's ``node`` only, when it has one). A node whose status is ``offline`` does
        not count. NotReady after ``timeout`` seconds, saying what the catalogues said.

        The retained catalogues arrive just after connecting: a ``timeout`` near 0 may miss them.
        """
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                node = self._ready_node(model)
                if node is not None:
                    return node
                left = end - time.monotonic()
                if left <= 0:
                    why = self._why_not_ready(model)
                    raise NotReady(
                        f"model {model!r} is not ready after {timeout:g} s: {why}", model=model
                    )
                self._changed.wait(left)

    def _nodes(self) -> list[str]:
        """The nodes this client can send to (under ``_lock``): its own, or every one seen."""
        return [self.node] if self.node else sorted(self._catalogues)

    def _ready_node(self, model: str) -> str | None:
        for node in self._nodes():
            entry = self._catalogues.get(node, {}).get(model)
            if entry is not None and _state(entry) == "ready" and not self._offline(node):
                return node
        return None

    def _offline(self, node: str) -> bool:
        return self._status.get(node) == "offline"

    def _why_not_ready(self, model: str) -> str:
        """What the catalogues say of ``model`` (under ``_lock``), for NotReady's message."""
        states = []
        for node in self._nodes():
            entry = self._catalogues.get(node, {}).get(model)
            if entry is None:
                continue
            state = _state(entry)
            if self._offline(node):
                states.append(f"node {node} is offline")
            elif state == "failed":
                states.append(f"node {node} says failed: {entry.get('reason') or 'no reason'}")
            else:
                states.append(f"node {node} says {state}")
        if states:
            return "; ".join(states)
        if not self._catalogues:
            return "no catalogue seen: is edgert serve running on this broker?"
        seen = ", ".join(
            f"{node} (serves {', '.join(sorted(entries)) or 'nothing'})"
            for node, entries in sorted(self._catalogues.items())
        )
        if self.node and self.node not in self._catalogues:
            return f"node {self.node} has published no catalogue; nodes seen: {seen}"
        return f"no node lists it; nodes seen: {seen}"

    def _declared_dtypes(self, model: str, version: str) -> dict[str, np.dtype[Any]]:
        """The output dtypes a catalogue declares for ``model`` at ``version`` (a catalogue of
        another version may declare others); empty if none is known."""
        with self._lock:
            entries = [self._catalogues.get(node, {}).get(model) for node in self._nodes()]
        for entry in entries:
            if entry is None or str(entry.get("version", version)) != version:
                continue
            dtypes = {}
            for spec in entry.get("outputs") or ():
                try:
                    dtypes[str(spec["name"])] = DType(spec["dtype"]).numpy
                except (KeyError, TypeError, ValueError):
                    continue  # a spec this client cannot read: that output stays as it comes
            if dtypes:
                return dtypes
        return {}

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
        payload = request_payload(
            request_id, inputs, deadline_ms=deadline_ms, compact=compact, stream=stream, reset=reset
        )
        interval = resend_after or max(timeout / 3, 0.1)
        answer = self._send_until_answered(
            model, _Sent(payload, "application/json"), request_id.encode(), timeout, interval
        )
        return _parse_reply(answer, partial(self._declared_dtypes, model))

    def infer_payload(
        self,
        model: str,
        payload: bytes,
        content_type: str,
        *,
        timeout: float = 10.0,
        resend_after: float | None = None,
        request_id: str | None = None,
        stream: str | None = None,
    ) -> Reply:
        """Run ``model`` on a payload as a device sends it (a JPEG, a WAV chunk), for a model
        whose model.toml has a ``[preprocess]`` section: ``content_type`` (``image/jpeg``,
        ``audio/wav``, ...) says what it is, and the id and ``stream`` go in MQTT 5 user
        properties. Re-sent and answered as :meth:`infer`."""
        request_id = request_id or uuid.uuid4().hex
        user = [("id", request_id)] + ([("stream", stream)] if stream is not None else [])
        interval = resend_after or max(timeout / 3, 0.1)
        sent = _Sent(payload, content_type, tuple(user))
        answer = self._send_until_answered(model, sent, request_id.encode(), timeout, interval)
        return _parse_reply(answer, partial(self._declared_dtypes, model))

    def _send_until_answered(
        self, model: str, sent: _Sent, correlation: bytes, timeout: float, interval: float
    ) -> bytes:
        """Publish the request, and again every ``interval`` seconds or after a reconnect, until
        its reply arrives (returned) or ``timeout`` passes (EdgertError)."""
        base = f"{self.prefix}/node/{self.node}" if self.node else self.prefix
        topic = f"{base}/infer/{model}/{self._key}"  # keyed: what the device ACL allows
        reply_topic = f"{self.prefix}/reply/{self._key}/{model}"
        box: list[bytes] = []
        with self._lock:
            self._pending[correlation] = box
        end = time.monotonic() + timeout
        try:
            while True:
                with self._lock:
                    connects = self._connects
                self._connection.publish(
                    topic,
                    sent.payload,
                    qos=1,
                    response_topic=reply_topic,
                    correlation=correlation,
                    content_type=sent.content_type,
                    user=sent.user,
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
        return box[0]

    def _on_message(self, message: Message) -> bool:
        node_root = f"{self.prefix}/node/"
        if message.topic.startswith(node_root):
            node, _, kind = message.topic[len(node_root) :].partition("/")
            if kind == "models":
                self._on_catalogue(node, message.payload)
            elif kind == "status":
                with self._changed:
                    self._status[node] = message.payload.decode(errors="replace")
                    self._changed.notify_all()
            return True
        return self._on_reply(message)

    def _on_reply(self, message: Message) -> bool:
        correlation = message.correlation
        with self._changed:
            box = self._pending.get(correlation) if correlation is not None else None
            if box is not None and not box:
                box.append(message.payload)
                self._changed.notify_all()
        return True

    def _on_catalogue(self, node: str, payload: bytes) -> None:
        """Keep ``node``'s catalogue; an empty payload (retained message cleared) forgets it,
        an unreadable one is ignored."""
        entries: dict[str, Mapping[str, Any]] | None = None
        if payload:
            try:
                doc = json.loads(payload)
                models = doc["models"]
                entries = {str(m["name"]): m for m in models if isinstance(m, dict) and "name" in m}
            except (ValueError, TypeError, KeyError):
                return
        with self._changed:
            if entries is None:
                self._catalogues.pop(node, None)
            else:
                self._catalogues[node] = entries
            self._changed.notify_all()

    def _woken(self, box: list[bytes], connects: int) -> bool:
        """Whether a request waiting since connect number ``connects`` has its reply, or must
        be sent again since the client reconnected."""
        return bool(box) or self._connects != connects

    def _on_connect(self) -> None:
        with self._changed:
            self._connects += 1
            self._changed.notify_all()


@dataclass(frozen=True)
class _Sent:
    """A request's body as published: its payload, content type and user properties."""

    payload: bytes
    content_type: str
    user: tuple[tuple[str, str], ...] = ()


def _state(entry: Mapping[str, Any]) -> str:
    # Catalogues from before states were published listed only served (ready) models.
    return str(entry.get("state", "ready"))


def _parse_reply(
    payload: bytes, declared: Callable[[str], Mapping[str, np.dtype[Any]]] | None = None
) -> Reply:
    """The reply in ``payload``; ``declared(version)`` gives the output dtypes the catalogue
    declares, which JSON lists (read as float64 or int64) are converted to."""
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise EdgertError(f"unreadable reply: {exc}") from exc
    if not data.get("ok"):
        error = data.get("error") or {}
        raise RemoteError(str(error.get("code", "internal")), str(error.get("message", "")))
    version = str(data.get("version"))
    dtypes = declared(version) if declared is not None else {}
    outputs = {}
    for name, value in (data.get("outputs") or {}).items():
        if isinstance(value, dict):  # {"dtype", "shape", "b64"}: carries its own dtype
            outputs[name] = decode_tensor(value)
            continue
        dtype = dtypes.get(name)
        try:
            outputs[name] = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            wanted = f"the catalogue's dtype {dtype}" if dtype is not None else "an array"
            raise EdgertError(f"reply output {name!r} cannot be read as {wanted}: {exc}") from exc
    return Reply(
        id=str(data.get("id")),
        model=str(data.get("model")),
        version=version,
        outputs=outputs,
        result=data.get("result"),
        latency_ms=data.get("latency_ms") or {},
        raw=data,
        backend=str(data.get("backend") or ""),
    )
