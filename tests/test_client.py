"""``edgert.Client`` against a real mosquitto, with a paho peer playing the daemon: a retained
catalogue and status per node, and replies to requests (no daemon, no model: what the client
does with what a daemon publishes)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest

from edgert import Client, EdgertError, NotReady
from tests.broker import Mosquitto

Answer = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def entry(
    name: str = "occupancy",
    state: str = "ready",
    *,
    version: str = "1",
    outputs: Mapping[str, str] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """A catalogue entry as the daemon publishes it (``outputs``: name -> dtype)."""
    if state == "loading":
        return {"name": name, "state": state}
    if state == "failed":
        return {"name": name, "state": state, "reason": reason or "why"}
    return {
        "name": name,
        "state": state,
        "version": version,
        "backend": "onnxruntime",
        "precision": "fp32",
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [
            {"name": n, "dtype": d, "shape": ["batch", 2]}
            for n, d in (outputs or {"probs": "float32"}).items()
        ],
        "stateful": False,
        "parity": {"passed": True},
    }


def reply_with(outputs: Mapping[str, Any], version: str = "1") -> Answer:
    def answer(request: Mapping[str, Any]) -> Mapping[str, Any]:
        return {
            "id": request["id"],
            "ok": True,
            "model": "occupancy",
            "version": version,
            "outputs": dict(outputs),
            "result": None,
        }

    return answer


class FakeNode:
    """Plays the daemon ``node``: publishes its retained catalogue and status, and answers every
    request (pooled or pinned to it) with ``answer(request)``; ``requests`` keeps each one with
    the time it arrived."""

    def __init__(self, broker: Mosquitto, node: str = "n1", answer: Answer | None = None):
        self.node = node
        self.answer = answer
        self.requests: list[tuple[float, dict[str, Any]]] = []
        self._client = broker.client()
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.set()
        self._client.on_connect = lambda c, u, f, r, p: c.subscribe(
            [("edgert/infer/#", 1), (f"edgert/node/{node}/infer/#", 1)]
        )
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        assert subscribed.wait(10), "the fake node never subscribed"

    def catalogue(self, *entries: Mapping[str, Any]) -> float:
        """Publish the retained catalogue; returns when the broker had it (monotonic time)."""
        doc = {"v": 1, "node": self.node, "models": list(entries)}
        return self.retain(f"edgert/node/{self.node}/models", json.dumps(doc).encode())

    def status(self, text: str) -> float:
        return self.retain(f"edgert/node/{self.node}/status", text.encode())

    def retain(self, topic: str, payload: bytes) -> float:
        self._client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        return time.monotonic()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        request = json.loads(msg.payload)
        self.requests.append((time.monotonic(), request))
        if self.answer is None:
            return
        props = paho.Properties(paho.PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = msg.properties.CorrelationData
        payload = json.dumps(self.answer(request)).encode()
        client.publish(msg.properties.ResponseTopic, payload, qos=1, properties=props)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def node(broker: Mosquitto) -> Iterator[FakeNode]:
    fake = FakeNode(broker)
    yield fake
    fake.close()


X = np.zeros((1, 4), np.float32)


def test_json_outputs_take_the_dtypes_the_catalogue_declares(
    broker: Mosquitto, node: FakeNode
) -> None:
    node.catalogue(entry(outputs={"probs": "float32", "count": "int32", "present": "bool"}))
    node.answer = reply_with(
        {"probs": [[0.1, 0.9]], "count": [3, 4], "present": [True], "extra": [1.5]}
    )
    with Client(broker.url) as client:
        reply = client.infer("occupancy", X)
    outputs = reply.outputs
    assert outputs["probs"].dtype == np.float32
    np.testing.assert_array_equal(outputs["probs"], np.array([[0.1, 0.9]], np.float32))
    assert outputs["count"].dtype == np.int32
    assert outputs["present"].dtype == np.bool_
    assert outputs["extra"].dtype == np.float64  # the catalogue does not declare it


def test_without_a_catalogue_of_the_replys_version_outputs_stay_as_json_reads_them(
    broker: Mosquitto, node: FakeNode
) -> None:
    node.answer = reply_with({"probs": [[0.1, 0.9]]}, version="1")
    with Client(broker.url) as client:
        assert client.infer("occupancy", X).outputs["probs"].dtype == np.float64
    node.catalogue(entry(version="2"))  # a reload since: its dtypes need not be the reply's
    with Client(broker.url) as client:
        assert client.infer("occupancy", X).outputs["probs"].dtype == np.float64


def test_a_base64_output_keeps_its_own_dtype(broker: Mosquitto, node: FakeNode) -> None:
    half = np.array([[0.5, -2.0]], np.float16)
    b64 = base64.b64encode(half.astype("<f2").tobytes()).decode()
    node.catalogue(entry())  # says float32: the tensor's own dtype wins
    node.answer = reply_with({"probs": {"dtype": "float16", "shape": [1, 2], "b64": b64}})
    with Client(broker.url) as client:
        probs = client.infer("occupancy", X).outputs["probs"]
    assert probs.dtype == np.float16
    np.testing.assert_array_equal(probs, half)


def test_wait_ready_returns_once_loading_turns_ready(broker: Mosquitto, node: FakeNode) -> None:
    node.catalogue(entry(state="loading"))
    ready_at: list[float] = []
    with Client(broker.url) as client:
        with pytest.raises(NotReady, match="node n1 says loading"):
            client.wait_ready("occupancy", 0.5)
        timer = threading.Timer(0.5, lambda: ready_at.append(node.catalogue(entry())))
        timer.start()
        try:
            assert client.wait_ready("occupancy", 10) == "n1"
            returned = time.monotonic()
        finally:
            timer.join()
    assert ready_at and returned >= ready_at[0] - 0.05  # after the ready catalogue, not before


def test_wait_ready_takes_any_ready_node_unless_pinned(broker: Mosquitto, node: FakeNode) -> None:
    node.catalogue(entry(state="loading"))
    other = FakeNode(broker, "n2")
    try:
        other.catalogue(entry())
        with Client(broker.url) as client:
            assert client.wait_ready("occupancy", 5) == "n2"
        with Client(broker.url, node="n1") as client, pytest.raises(NotReady) as raised:
            client.wait_ready("occupancy", 0.5)
        assert str(raised.value).endswith(": node n1 says loading")
    finally:
        other.close()


def _failed(node: FakeNode) -> None:
    node.catalogue(entry(state="failed", reason="no artifact for this GPU"))


def _others(node: FakeNode) -> None:
    node.catalogue(entry("b"), entry("a", state="loading"))


def _offline(node: FakeNode) -> None:
    node.status("offline")  # stopped: its retained catalogue still says ready
    node.catalogue(entry())


@pytest.mark.parametrize(
    ("setup", "pin", "why"),
    [
        (None, None, "no catalogue seen: is edgert serve running on this broker?"),
        (_failed, None, "node n1 says failed: no artifact for this GPU"),
        (_others, None, "no node lists it; nodes seen: n1 (serves a, b)"),
        (_offline, None, "node n1 is offline"),
        (
            lambda node: node.catalogue(entry()),
            "n2",
            "node n2 has published no catalogue; nodes seen: n1 (serves occupancy)",
        ),
    ],
)
def test_not_ready_says_what_was_seen(
    broker: Mosquitto,
    node: FakeNode,
    setup: Callable[[FakeNode], object] | None,
    pin: str | None,
    why: str,
) -> None:
    if setup is not None:
        setup(node)
    with Client(broker.url, node=pin) as client, pytest.raises(NotReady) as raised:
        client.wait_ready("occupancy", 0.8)
    assert str(raised.value) == f"model 'occupancy' is not ready after 0.8 s: {why}"
    assert isinstance(raised.value, EdgertError) and raised.value.model == "occupancy"
