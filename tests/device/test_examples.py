"""The device-maker kit in device/examples/, run against a real daemon and a real mosquitto.

- micropython_sensor.py: its protocol functions run on CPython over an adapter that offers
  umqtt.simple's API on top of paho (MQTT 3.1.1, keyed topic, compact reply).
- esphome_occupancy.yaml: topics and payload keys match the protocol.
- shell.md: every ``sh`` block with a mosquitto_sub is run as written (bar the port).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgert import ModelDir, open_model
from tests.broker import Mosquitto, MosquittoSub
from tests.daemon.conftest import Daemon, broker, compiled_repository  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "device" / "examples"
READING = [22.5, 45.0, 480.0, 1150.0]


def load_sensor() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "micropython_sensor", EXAMPLES / "micropython_sensor.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class UmqttSimple:
    """umqtt.simple.MQTTClient's API (set_callback, subscribe, publish, check_msg) over paho,
    MQTT 3.1.1. ``drop`` replies are lost on the way in, as a flaky link would lose them."""

    def __init__(self, client_id: str, port: int, drop: int = 0) -> None:
        self.drop = drop
        self.received: list[bytes] = []
        self.published: list[tuple[str, bytes]] = []
        self._inbox: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        self._callback: Any = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311
        )
        self._client.on_message = lambda c, u, m: self._inbox.put(
            (m.topic.encode(), bytes(m.payload))
        )
        self._subacks: queue.Queue[int] = queue.Queue()
        self._client.on_subscribe = lambda c, u, mid, codes, p: self._subacks.put(mid)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def set_callback(self, callback: Any) -> None:
        self._callback = callback

    def subscribe(self, topic: str | bytes, qos: int = 0) -> None:
        name = topic.decode() if isinstance(topic, bytes) else topic
        result, mid = self._client.subscribe(name, qos)
        assert result == paho.MQTT_ERR_SUCCESS
        assert self._subacks.get(timeout=5) == mid  # umqtt.simple waits for the SUBACK

    def publish(
        self, topic: str | bytes, msg: str | bytes, retain: bool = False, qos: int = 0
    ) -> None:
        name = topic.decode() if isinstance(topic, bytes) else topic
        payload = msg.encode() if isinstance(msg, str) else msg
        self.published.append((name, payload))
        self._client.publish(name, payload, qos, retain).wait_for_publish(5)

    def check_msg(self) -> None:
        try:
            topic, payload = self._inbox.get_nowait()
        except queue.Empty:
            return None
        self.received.append(payload)
        if self.drop:
            self.drop -= 1
            return None
        self._callback(topic, payload)
        return None

    def disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, compiled_repository: Path) -> Path:  # noqa: F811
    """The compiled example models (occupancy's [postprocess] gives compact replies a result)."""
    assert "[postprocess]" in (compiled_repository / "occupancy" / "model.toml").read_text()
    return compiled_repository


@pytest.fixture
def daemon(broker: Mosquitto, repository: Path, tmp_path: Path) -> Iterator[Daemon]:  # noqa: F811
    server = Daemon(broker, repository, tmp_path / "daemon").start()
    yield server
    server.stop()


def direct(repository: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    loaded = open_model(ModelDir(repository / model))
    try:
        return loaded.infer(feeds)
    finally:
        loaded.close()


def occupancy_direct(repository: Path, reading: list[float]) -> np.ndarray:
    feeds = {"readings": np.array([reading], np.float32)}
    return np.asarray(direct(repository, "occupancy", feeds)["probabilities"][0])


def inferences_after(port: int, since: float, node: str = "testnode") -> int:
    """``models.occupancy.inferences`` from the first stats message published after ``since``
    (time.monotonic()); stats come every 0.3 s in the test daemon."""
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.put(bytes(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(f"edgert/node/{node}/stats", 0)
    client.loop_start()
    try:
        while True:
            payload = got.get(timeout=5)
            if time.monotonic() > since + 0.35:
                return int(json.loads(payload)["models"]["occupancy"]["inferences"])
    finally:
        client.disconnect()
        client.loop_stop()


def test_micropython_sensor_gets_the_models_answer_in_a_compact_reply(
    daemon: Daemon, repository: Path
) -> None:
    sensor = load_sensor()
    client = UmqttSimple("esp32-test", daemon.broker.port)
    try:
        inbox = sensor.subscribe_replies(client, "esp32-test")
        request_id = sensor.new_id("esp32-test", sensor.boot_tag(), 1)
        reply = sensor.infer(client, inbox, "esp32-test", request_id, READING, timeout_ms=5000)
    finally:
        client.disconnect()
    assert client.published == [
        (
            "edgert/infer/occupancy/esp32-test",
            json.dumps({"id": request_id, "compact": True, "inputs": [READING]}).encode(),
        )
    ]
    assert len(client.received) == 1 and len(client.received[0]) < 1024
    assert reply["id"] == request_id and reply["ok"] is True
    assert reply["model"] == "occupancy" and reply["version"] == "1"
    assert "outputs" not in reply and "latency_ms" not in reply
    want = occupancy_direct(repository, READING)
    assert reply["result"]["score"] == pytest.approx(float(want[1]), abs=1e-4)
    assert sensor.occupied(reply) is bool(want[1] >= 0.5)


def test_micropython_sensor_resends_a_lost_reply_with_the_same_id_without_a_second_run(
    daemon: Daemon, repository: Path
) -> None:
    sensor = load_sensor()
    port = daemon.broker.port
    empty = [20.0, 35.0, 5.0, 420.0]  # dark, fresh air: a different answer from READING
    client = UmqttSimple("esp32-flaky", port, drop=1)
    log: list[str] = []
    try:
        inbox = sensor.subscribe_replies(client, "esp32-flaky")
        reply = sensor.infer(
            client, inbox, "esp32-flaky", "flaky-1", empty, timeout_ms=800, log=log.append
        )
        assert inferences_after(port, time.monotonic()) == 1
        # The control: a new id is a new question, and runs.
        sensor.infer(client, inbox, "esp32-flaky", "flaky-2", READING, timeout_ms=5000)
        assert inferences_after(port, time.monotonic()) == 2
    finally:
        client.disconnect()
    sent = [json.loads(payload) for _, payload in client.published]
    assert [m["id"] for m in sent] == ["flaky-1", "flaky-1", "flaky-2"]
    assert sent[0] == sent[1] and len(log) == 1 and "flaky-1" in log[0]
    dropped, answered = (json.loads(p) for p in client.received[:2])
    assert dropped == answered == reply  # the cached reply, byte for byte the same answer
    want = occupancy_direct(repository, empty)
    assert reply["result"]["score"] == pytest.approx(float(want[1]), abs=1e-4)
    assert sensor.occupied(reply) is bool(want[1] >= 0.5)


def test_micropython_sensor_surfaces_error_replies_and_timeouts(daemon: Daemon) -> None:
    sensor = load_sensor()
    client = UmqttSimple("esp32-bad", daemon.broker.port)
    try:
        inbox = sensor.subscribe_replies(client, "esp32-bad")
        with pytest.raises(sensor.ReplyError) as error:
            sensor.infer(client, inbox, "esp32-bad", "bad-1", READING[:3], timeout_ms=5000)
        assert error.value.code == "bad_input"
        with pytest.raises(sensor.ReplyTimeout):  # no such model: nobody answers
            sensor.infer(
                client, inbox, "esp32-bad", "bad-2", READING, 200, 2, model="nosuch", log=str
            )
    finally:
        client.disconnect()
    assert [t for t, _ in client.published][-2:] == ["edgert/infer/nosuch/esp32-bad"] * 2
    with pytest.raises(sensor.ReplyError):
        sensor.parse_reply(b"{" + b" " * 1100 + b"}", "x")
    assert sensor.parse_reply(b'{"id": "other", "ok": true}', "x") is None


def test_micropython_sensor_imports_nothing_board_only_at_module_level() -> None:
    source = (EXAMPLES / "micropython_sensor.py").read_text()
    top_level = [line for line in source.splitlines() if re.match(r"(import|from) ", line)]
    assert top_level == [], top_level  # every module-level import is guarded in try/except
    body = source.split("def main():", 1)[1]
    assert "import machine" in body and "import network" in body
    assert "from umqtt.simple import MQTTClient" in body


def test_esphome_config_publishes_and_subscribes_the_protocols_topics() -> None:
    text = (EXAMPLES / "esphome_occupancy.yaml").read_text()
    assert "\t" not in text
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # not a dependency of edgert: check the lines the protocol needs
        yaml = None
    if yaml is not None:
        config = yaml.safe_load(text)
        client_id = config["mqtt"]["client_id"]
        on_reply = config["mqtt"]["on_json_message"]
        reply_topic = on_reply["topic"]
        [publish] = [
            step["mqtt.publish_json"]
            for script in config["script"]
            for step in script["then"]
            if "mqtt.publish_json" in step
        ]
        request_topic, payload = publish["topic"], publish["payload"]
        handler = on_reply["then"][0]["lambda"]
        assert any(i["interval"] == "30s" for i in config["interval"])
    else:
        client_id = re.search(r"^  client_id: (\S+)", text, re.M)[1]  # type: ignore[index]
        assert re.search(r"^  on_json_message:$", text, re.M)
        reply_topic = re.search(r"^    topic: (edgert/reply/\S+)", text, re.M)[1]  # type: ignore[index]
        assert "      - mqtt.publish_json:" in text
        request_topic = re.search(r"^          topic: (edgert/infer/\S+)", text, re.M)[1]  # type: ignore[index]
        payload = handler = text
        assert re.search(r"^interval:\n  - interval: 30s", text, re.M)
    assert request_topic == f"edgert/infer/occupancy/{client_id}"
    assert reply_topic == f"edgert/reply/{client_id}/occupancy"
    for line in ('root["id"]', 'root["compact"] = true;', 'createNestedArray("inputs")'):
        assert line in payload
    keys = set(re.findall(r'root\["(\w+)"\]', payload)) | {"inputs"}
    assert keys <= {"id", "reply_to", "deadline_ms", "stream", "reset", "compact", "inputs"}
    for field in ('x["id"]', 'x["ok"]', 'x["result"]["state"]', 'x["error"]["code"]'):
        assert field in handler
    assert "1 KiB" in text and "compact" in text


def shell_blocks() -> list[list[str]]:
    """The commands of each ``sh`` block in shell.md, continuation lines joined."""
    text = (EXAMPLES / "shell.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, re.M | re.S)
    return [[c for c in block.replace("\\\n", " ").splitlines() if c.strip()] for block in blocks]


def test_shell_md_blocks_run_against_the_daemon(
    daemon: Daemon, repository: Path, tmp_path: Path
) -> None:
    port = str(daemon.broker.port)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran: dict[str, list[dict[str, Any]]] = {}  # by the first reply's id
    versions: list[str] = []
    for commands in shell_blocks():
        commands = [c.replace("-p 1883", f"-p {port}") for c in commands]
        subs = [c for c in commands if c.startswith("mosquitto_sub ")]
        if not subs:
            continue  # illustrative: raw bytes need a model that declares a raw input
        [sub_command] = subs
        sub = MosquittoSub([*shlex.split(sub_command), "-W", "15"])
        for command in commands:
            if command is not sub_command:
                subprocess.run(
                    ["bash", "-c", command], cwd=tmp_path, env=env, check=True, timeout=15
                )
        lines = sub.rest()
        assert sub.process.returncode == 0, (sub_command, daemon.log.read_text()[-2000:])
        replies = [json.loads(line) for line in lines]
        ran[replies[0]["id"]] = replies
        versions.append(shlex.split(sub_command)[shlex.split(sub_command).index("-V") + 1])

    assert sorted(ran) == ["c1", "dev1", "r1", "r5"] and {"311", "5"} <= set(versions)
    assert all(r["ok"] is True for replies in ran.values() for r in replies), ran
    want = occupancy_direct(repository, READING)
    for full in (ran["r1"][0], ran["dev1"][0]):  # JSON over 3.1.1, .npy keyed by the topic
        np.testing.assert_allclose(full["outputs"]["probabilities"], [want], rtol=1e-5)
    compact = ran["r5"][0]  # MQTT 5, compact
    assert "outputs" not in compact
    assert compact["result"]["score"] == pytest.approx(float(want[1]), abs=1e-4)
    vad = ran["c1"]
    assert [r["id"] for r in vad] == ["c1", "c2"]
    assert all(0.0 <= r["outputs"]["output"][0][0] <= 1.0 for r in vad)
