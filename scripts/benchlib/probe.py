"""The bench's own MQTT client: single requests until a server answers, and edgert's stats."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchlib.procs import Server
from benchlib.workloads import Workload

__all__ = ["Probe", "outputs_agree", "reply_outputs"]

READY_TIMEOUT = 90.0  # s for a server to answer its first request


class Probe:
    """Sends one request at a time (readiness), and keeps each edgert node's latest stats."""

    def __init__(self, port: int, tag: str) -> None:
        self.topic = f"edgert/reply/bench{tag}probe"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench{tag}probe", protocol=paho.MQTTv5
        )
        self._lock = threading.Lock()
        self._replies: dict[bytes, bytes] = {}
        self._stats: dict[str, tuple[float, dict[str, Any]]] = {}
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._client.subscribe(self.topic, qos=1)
        self._client.subscribe("edgert/node/+/stats", qos=0)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/stats"):
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                return
            with self._lock:
                self._stats[msg.topic.split("/")[2]] = (time.monotonic(), doc)
            return
        correlation: bytes | None = getattr(msg.properties, "CorrelationData", None)
        if not correlation:  # a server on MQTT 3.1.1: the id in the JSON reply (or echo)
            with contextlib.suppress(ValueError, AttributeError):
                correlation = str(json.loads(msg.payload).get("id", "")).encode()
        if correlation:
            with self._lock:
                self._replies[correlation] = bytes(msg.payload)

    def ask(self, workload: Workload, server: Server) -> bytes:
        """Send ``workload``'s request (a new id each second) until ``server`` answers; the
        reply's payload. A JSON request names the probe's reply topic both as Response Topic
        and as ``reply_to``, so a server on MQTT 3.1.1 answers it too."""
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end:
            server.check_alive()
            request_id = f"probe{uuid.uuid4().hex[:12]}"
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.topic
            props.CorrelationData = request_id.encode()
            props.ContentType = workload.content_type
            if not workload.is_json:
                props.UserProperty = [("id", request_id), *workload.user]
            self._client.publish(
                f"edgert/infer/{workload.model}",
                workload.payload(request_id, self.topic),
                qos=1,
                properties=props,
            )
            wait_end = time.monotonic() + 1.0
            while time.monotonic() < wait_end:
                with self._lock:
                    reply = self._replies.pop(request_id.encode(), None)
                if reply is not None:
                    return reply
                time.sleep(0.01)
        raise RuntimeError(f"{server.name} did not answer within {READY_TIMEOUT:g} s")

    def stats(self, node: str, after: float = 0.0, timeout: float = 0.0) -> dict[str, Any] | None:
        """The latest stats ``node`` published, waiting up to ``timeout`` s for one received
        after ``after`` (time.monotonic()); None if there is none."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                found = self._stats.get(node)
            if found is not None and found[0] >= after:
                return found[1]
            if time.monotonic() >= end:
                return found[1] if found is not None and not after else None
            time.sleep(0.02)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def reply_outputs(reply: bytes) -> dict[str, np.ndarray]:
    """The outputs of a JSON reply, and a detector's boxes and scores from its ``result``;
    RuntimeError for an error reply or one that is not JSON."""
    try:
        doc = json.loads(reply)
    except ValueError as exc:
        raise RuntimeError(f"the probe's reply is not JSON: {reply[:200]!r}") from exc
    if not isinstance(doc, dict) or not doc.get("ok"):
        raise RuntimeError(f"error reply to the probe: {reply[:400]!r}")
    outputs = {k: np.asarray(v, np.float64) for k, v in (doc.get("outputs") or {}).items()}
    result = doc.get("result")
    if isinstance(result, list) and all(isinstance(d, dict) and "box" in d for d in result):
        outputs["result.box"] = np.asarray([d["box"] for d in result], np.float64).reshape(-1, 4)
        outputs["result.score"] = np.asarray([d["score"] for d in result], np.float64)
    return outputs


def outputs_agree(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> bool | None:
    """Whether two servers' outputs match (FP32 tolerance); None when not both are known."""
    if a is None or b is None:
        return None
    if set(a) != set(b):
        return False
    return all(
        a[k].shape == b[k].shape and np.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a
    )
