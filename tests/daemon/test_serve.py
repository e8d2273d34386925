"""The daemon end to end: a real mosquitto, `edgert serve` as a subprocess, real clients."""

from __future__ import annotations

import json
import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgert import ModelDir, open_model
from edgert.client import Client
from tests.broker import Mosquitto, MosquittoSub
from tests.daemon.conftest import Daemon, wait_retained

READING = [[22.5, 45.0, 480.0, 1150.0]]


class Device:
    """A paho client as a device would use it: publish a request, read replies."""

    def __init__(self, port: int, protocol: int = paho.MQTTv5, replies: str = "edgert/reply/#"):
        self.protocol = protocol
        self.replies: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.on_message = lambda c, u, m: self.replies.put(m)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(replies, 1)
        self.client.loop_start()
        time.sleep(0.2)

    def send(self, topic: str, body: Any, **props: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)

    def reply(self, timeout: float = 10) -> tuple[str, dict[str, Any], paho.MQTTMessage]:
        message = self.replies.get(timeout=timeout)
        return message.topic, json.loads(message.payload), message

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(broker: Mosquitto) -> Iterator[Device]:
    d = Device(broker.port)
    yield d
    d.close()


def direct(repository: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    loaded = open_model(ModelDir(repository / model))
    try:
        return loaded.infer(feeds)
    finally:
        loaded.close()


def stats(port: int, node: str = "testnode") -> dict[str, Any]:
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.put(m.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(f"edgert/node/{node}/stats", 0)
    client.loop_start()
    try:
        return dict(json.loads(got.get(timeout=5)))
    finally:
        client.disconnect()
        client.loop_stop()


def test_client_mqtt5_reply_equals_running_the_model_directly(
    daemon: Daemon, compiled_repository: Path
) -> None:
    readings = np.array(READING * 3, np.float32)
    with Client(daemon.broker.url) as client:
        reply = client.infer("occupancy", {"readings": readings}, timeout=10)
    want = direct(compiled_repository, "occupancy", {"readings": readings})
    np.testing.assert_allclose(reply.outputs["probabilities"], want["probabilities"], rtol=1e-6)
    assert reply.model == "occupancy" and reply.version == "1"
    assert reply.backend == "onnxruntime"  # the backend that answered
    assert set(reply.latency_ms) == {"queue", "infer", "total"}


def test_mqtt311_request_with_key_topic_and_nested_lists(
    daemon: Daemon, compiled_repository: Path
) -> None:
    dev = Device(daemon.broker.port, protocol=paho.MQTTv311, replies="edgert/reply/kitchen/#")
    try:
        dev.send("edgert/infer/occupancy/kitchen", {"id": "r1", "inputs": READING})
        topic, body, _ = dev.reply()
    finally:
        dev.close()
    assert topic == "edgert/reply/kitchen/occupancy"
    assert body["id"] == "r1" and body["ok"] is True
    want = direct(compiled_repository, "occupancy", {"readings": np.array(READING, np.float32)})
    np.testing.assert_allclose(body["outputs"]["probabilities"], want["probabilities"], rtol=1e-5)


def test_mqtt5_response_topic_and_correlation_are_honoured(daemon: Daemon, device: Device) -> None:
    device.send(
        "edgert/infer/occupancy",
        {"inputs": {"readings": READING}, "compact": True},
        ResponseTopic="edgert/reply/dev5/here",
        CorrelationData=b"\x01corr",
    )
    topic, body, message = device.reply()
    assert topic == "edgert/reply/dev5/here"
    assert message.properties.CorrelationData == b"\x01corr"
    assert body["ok"] is True and "outputs" not in body and "latency_ms" not in body


@pytest.mark.parametrize("qos", ["0", "1", "2"])
@pytest.mark.parametrize("version", ["311", "5"])
def test_mosquitto_pub_and_sub(daemon: Daemon, version: str, qos: str) -> None:
    """A shell's request at any QoS the protocol has (the broker delivers QoS 2 at the daemon's
    subscription's QoS 1) is answered."""
    port = str(daemon.broker.port)
    topic = ["-t", "edgert/reply/shell/#", "-C", "1", "-W", "15"]
    sub = MosquittoSub(["mosquitto_sub", "-p", port, "-V", version, *topic])
    pub = ["mosquitto_pub", "-p", port, "-V", version, "-q", qos]
    body = json.dumps({"id": f"sh{qos}", "inputs": READING})
    if version == "5":
        pub += [
            "-t",
            "edgert/infer/occupancy",
            "-D",
            "publish",
            "response-topic",
            "edgert/reply/shell/occupancy",
            "-D",
            "publish",
            "correlation-data",
            "abc",
        ]
    else:
        pub += ["-t", "edgert/infer/occupancy/shell"]
    subprocess.run([*pub, "-m", body], check=True, timeout=10)
    payload = sub.rest()
    assert len(payload) == 1, payload
    reply = json.loads(payload[0])
    assert reply["ok"] is True and reply["id"] == f"sh{qos}"
    assert len(reply["outputs"]["probabilities"][0]) == 2


BAD_REQUESTS = [
    (b"{not json", "bad_request"),
    (json.dumps({"id": "x", "inputs": [[1.0, 2.0, 3.0]]}).encode(), "bad_input"),
    (json.dumps({"id": "x", "inputs": [["a", "b", "c", "d"]]}).encode(), "bad_input"),
    (json.dumps({"id": "x", "inputs": {"nope": READING}}).encode(), "bad_input"),
]


@pytest.mark.parametrize(("payload", "code"), BAD_REQUESTS)
def test_bad_requests_get_structured_errors_and_serving_goes_on(
    daemon: Daemon, device: Device, payload: bytes, code: str
) -> None:
    device.send("edgert/infer/occupancy/bad", payload)
    topic, body, _ = device.reply()
    assert topic == "edgert/reply/bad/occupancy"
    assert body["ok"] is False and body["error"]["code"] == code, body
    assert body["error"]["message"]
    device.send("edgert/infer/occupancy/bad", {"id": "good", "inputs": READING})
    assert device.reply()[1]["ok"] is True


def test_unknown_model_oversize_and_foreign_reply_topic(daemon: Daemon, device: Device) -> None:
    device.send("edgert/node/testnode/infer/nosuch/k1", {"id": "a", "inputs": READING})
    body = device.reply()[1]
    assert body["error"]["code"] == "no_model" and "occupancy" in body["error"]["message"]

    device.send("edgert/infer/occupancy/k1", b"{" + b" " * (2 << 20) + b"}")
    assert device.reply()[1]["error"]["code"] == "too_large"

    device.send(
        "edgert/infer/occupancy/k1",
        {"id": "b", "inputs": READING, "reply_to": "homeassistant/switch/x"},
    )
    body = device.reply()[1]
    assert body["error"]["code"] == "bad_request" and "outside" in body["error"]["message"]


def test_expired_deadline(daemon: Daemon, device: Device) -> None:
    device.send("edgert/infer/occupancy/k2", {"id": "e", "inputs": READING, "deadline_ms": 0.0001})
    assert device.reply()[1]["error"]["code"] == "expired"


def _slow_model(root: Path) -> None:
    """[1, 1024] → 200 chained 1024x1024 MatMuls: about 6 ms a run on two cores (over 1 ms on
    any CPU this runs on), so it is never run on the network thread (``INLINE_S``), and a burst
    of requests fills a queue of one. (120 of 512x512 took 0.76 ms, under ``INLINE_S``: the
    burst then ran inline and nothing was busy.)"""
    from onnx import helper, numpy_helper

    from edgert import compile_model
    from tests.corpus import make_model, tensor, write

    weight = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((1024, 1024)) / 32).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", "w"], [f"h{i + 1}"])
        for i in range(200)
    ]
    nodes.append(helper.make_node("Identity", ["h200"], ["y"]))
    model = make_model(
        nodes, [tensor("x", np.float32, [1, 1024])], [tensor("y", np.float32, [1, 1024])], [weight]
    )
    write(root / "slow", model)
    compile_model(ModelDir(root / "slow"))


def test_full_queue_answers_busy(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path, device: Device
) -> None:
    import shutil

    repository = tmp_path / "engines"
    shutil.copytree(compiled_repository / "occupancy", repository / "occupancy")
    _slow_model(repository)
    server = Daemon(broker, repository, tmp_path, queue_size=1).start()
    try:
        x = {"x": np.zeros((1, 1024)).tolist()}
        for i in range(40):
            device.send("edgert/infer/slow/flood", {"id": f"f{i}", "inputs": x})
        codes = [device.reply()[1].get("error", {}).get("code", "ok") for _ in range(40)]
        assert "busy" in codes and "ok" in codes
        device.send("edgert/infer/occupancy/flood", {"id": "after", "inputs": READING})
        assert device.reply()[1]["ok"] is True
    finally:
        server.stop()


def test_repeated_id_runs_once(daemon: Daemon, device: Device) -> None:
    before = stats(daemon.broker.port)["models"]["occupancy"]["inferences"]
    for _ in range(3):  # in flight or answered: either way one inference
        device.send("edgert/infer/occupancy/dup", {"id": "same", "inputs": READING})
    bodies = [device.reply()[1] for _ in range(3)]
    assert all(b["ok"] and b["id"] == "same" for b in bodies)
    assert bodies[0]["outputs"] == bodies[1]["outputs"] == bodies[2]["outputs"]
    device.send("edgert/infer/occupancy/other", {"id": "same", "inputs": READING})
    topic, body, _ = device.reply()
    assert topic == "edgert/reply/other/occupancy" and body["ok"]
    time.sleep(0.7)
    after_stats = stats(daemon.broker.port)["models"]["occupancy"]
    assert after_stats["inferences"] - before == 2  # one per (reply destination, id)
    assert after_stats["rate"] >= 0  # requests per second since the last stats message


def test_sigterm_under_load_loses_nothing(daemon: Daemon, device: Device) -> None:
    chunk = {"input": np.zeros((16, 512)).tolist()}
    sent = {f"t{i}" for i in range(30)}
    for request_id in sorted(sent):
        device.send("edgert/infer/silero_vad/term", {"id": request_id, "inputs": chunk})
    assert daemon.terminate() == 0
    assert "stopped" in daemon.log.read_text()
    answered_before = drain_ids(device)
    # What the stopping daemon did not take stayed unacknowledged in its persistent session;
    # the same node started again gets it from the broker and answers it.
    daemon.start()
    answered_after = drain_ids(device)
    assert answered_before, "the daemon answered nothing before stopping"
    print(f"answered before stop: {len(answered_before)}, after restart: {len(answered_after)}")
    assert answered_before | answered_after == sent
    assert not answered_before & answered_after  # taken once: answered once


def drain_ids(device: Device, quiet: float = 3.0) -> set[str]:
    ids = set()
    while True:
        try:
            ids.add(device.reply(timeout=quiet)[1]["id"])
        except queue.Empty:
            return ids


def test_broker_restart_reconnects_and_serves(daemon: Daemon, tmp_path: Path) -> None:
    daemon.broker.kill()
    time.sleep(0.5)
    daemon.broker.start()
    start = time.monotonic()
    wait_retained(daemon.broker.port, "edgert/node/testnode/status", b"online", timeout=20)
    with Client(daemon.broker.url) as client:
        reply = client.infer("occupancy", np.array(READING, np.float32), timeout=10)
    assert reply.outputs["probabilities"].shape == (1, 2)
    assert time.monotonic() - start < 20


def test_the_serving_process_loads_neither_onnx_nor_the_cli_libraries(daemon: Daemon) -> None:
    """`edgert serve` replaces itself with a lean daemon (same pid) that reads IO specs from the
    manifests: the onnx package and Typer's pydantic (~20 MB together) are never loaded."""
    assert daemon.process is not None
    maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    assert "onnxruntime_pybind11_state" in maps  # the check sees extension modules at all
    assert "onnx_cpp2py_export" not in maps
    assert "pydantic_core" not in maps
    cmdline = Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:3] == [b"-m", b"edgert.daemon"]
