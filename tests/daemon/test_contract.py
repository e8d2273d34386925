"""The serving contract, black box: every request gets exactly one reply, ids come back as sent,
a model still building holds its requests, the catalogue says each model's state, and a
refused subscription is never silence. A real mosquitto, `edgert serve` subprocesses, real
clients (paho MQTT 5 and 3.1.1, mosquitto_pub and mosquitto_sub)."""

from __future__ import annotations

import io
import json
import queue
import shutil
import subprocess
import threading
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

from tests.broker import Mosquitto, MosquittoSub
from tests.daemon.conftest import REPO, Daemon, wait_retained
from tests.daemon.test_broker_features import Observer

READING = [[22.5, 45.0, 480.0, 1150.0]]
QUIET = 0.6  # seconds to wait for a second reply that must not come


class Device:
    """A paho client as a device uses it: MQTT 5 or 3.1.1, replies read from a queue."""

    def __init__(self, port: int, protocol: int = paho.MQTTv5, replies: str = "edgert/reply/#"):
        self.replies: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.on_message = lambda c, u, m: self.replies.put(m)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(replies, 1)
        self.client.loop_start()
        assert subscribed.wait(5), "no SUBACK"

    def send(self, topic: str, body: Any, **props: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5)

    def reply(self, timeout: float = 15) -> tuple[str, dict[str, Any]]:
        message = self.replies.get(timeout=timeout)
        return message.topic, json.loads(message.payload)

    def nothing_more(self, wait: float = QUIET) -> None:
        with pytest.raises(queue.Empty):
            extra = self.replies.get(timeout=wait)
            pytest.fail(f"a second reply on {extra.topic}: {extra.payload!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def v5(broker: Mosquitto) -> Iterator[Device]:
    device = Device(broker.port, replies="edgert/reply/v5/#")
    yield device
    device.close()


@pytest.fixture
def v311(broker: Mosquitto) -> Iterator[Device]:
    device = Device(broker.port, paho.MQTTv311, replies="edgert/reply/dev311/#")
    yield device
    device.close()


def mosquitto_pub(port: int, topic: str, body: Any, *args: str) -> None:
    payload = body if isinstance(body, str) else json.dumps(body)
    command = ["mosquitto_pub", "-p", str(port), "-h", "127.0.0.1", "-q", "1", "-t", topic]
    subprocess.run([*command, *args, "-m", payload], check=True, timeout=10)


def mosquitto_sub(port: int, topic: str, *args: str) -> MosquittoSub:
    return MosquittoSub(
        ["mosquitto_sub", "-p", str(port), "-h", "127.0.0.1", "-t", topic, "-v", *args]
    )


def sub_reply(sub: MosquittoSub) -> tuple[str, dict[str, Any]]:
    topic, _, payload = sub.message().partition(" ")
    return topic, json.loads(payload)


# ----------------------------------------------------------------------- never silence


def test_an_unknown_model_gets_no_model_naming_the_served_ones_from_every_client(
    daemon: Daemon, v5: Device, v311: Device
) -> None:
    port = daemon.broker.port
    v5.send("edgert/infer/nosuch", {"id": "a", "inputs": [1]}, ResponseTopic="edgert/reply/v5/t1/x")
    topic, reply = v5.reply()
    assert topic == "edgert/reply/v5/t1/x" and reply["id"] == "a" and reply["ok"] is False
    assert reply["error"]["code"] == "no_model"
    assert "occupancy" in reply["error"]["message"] and "silero_vad" in reply["error"]["message"]
    v5.nothing_more()

    v311.send("edgert/infer/nosuch/dev311", {"id": 3, "inputs": [1]})
    topic, reply = v311.reply()
    assert topic == "edgert/reply/dev311/nosuch" and reply["id"] == 3
    assert reply["error"]["code"] == "no_model"

    sub = mosquitto_sub(port, "edgert/reply/cli/#", "-V", "311")
    try:
        mosquitto_pub(
            port,
            "edgert/infer/nosuch",
            {"id": "m", "reply_to": "edgert/reply/cli/x", "inputs": [1]},
            "-V",
            "311",
        )
        topic, reply = sub_reply(sub)
        assert topic == "edgert/reply/cli/x" and reply["error"]["code"] == "no_model"
        mosquitto_pub(
            port,
            "edgert/infer/nosuch",
            {"id": "n", "inputs": [1]},
            "-V",
            "5",
            "-D",
            "publish",
            "response-topic",
            "edgert/reply/cli/y",
        )
        topic, reply = sub_reply(sub)
        assert (topic, reply["id"]) == ("edgert/reply/cli/y", "n")
        assert reply["error"]["code"] == "no_model"
    finally:
        sub.close()


def test_a_served_model_is_answered_once_on_the_pooled_and_pinned_topics(
    daemon: Daemon, v5: Device, v311: Device
) -> None:
    v5.send(
        "edgert/infer/occupancy", {"id": "p", "inputs": READING}, ResponseTopic="edgert/reply/v5/a"
    )
    assert v5.reply()[1]["ok"] is True
    v5.send(
        "edgert/node/testnode/infer/occupancy",
        {"id": "q", "inputs": READING},
        ResponseTopic="edgert/reply/v5/b",
    )
    assert v5.reply()[1]["id"] == "q"
    v311.send("edgert/infer/occupancy/dev311", {"inputs": READING})
    topic, reply = v311.reply()
    assert topic == "edgert/reply/dev311/occupancy" and reply["ok"] is True and reply["id"] is None
    v5.nothing_more()
    v311.nothing_more()


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5])
def test_a_request_published_retained_is_answered_once_not_again_at_each_subscribe(
    daemon: Daemon, protocol: int
) -> None:
    """The broker keeps a retained request and hands it to every new subscription: to the
    daemon after each restart or reconnect. It was answered when it came; the copies are not
    new requests, and are logged instead of answered again."""
    device = Device(daemon.broker.port, protocol, replies="edgert/reply/kept/#")
    try:
        body = {"id": "r1", "reply_to": "edgert/reply/kept/x", "inputs": READING}
        info = device.client.publish("edgert/infer/occupancy", json.dumps(body), 1, retain=True)
        info.wait_for_publish(5)
        topic, reply = device.reply()
        assert topic == "edgert/reply/kept/x" and reply["id"] == "r1" and reply["ok"] is True
        assert daemon.terminate() == 0
        daemon.start()
        device.nothing_more(2 * QUIET)
        assert "a retained copy of a request on edgert/infer/occupancy" in daemon.log.read_text()
        body = {**body, "id": "r2"}  # and a live request on the same topic is still answered
        device.client.publish("edgert/infer/occupancy", json.dumps(body), 1).wait_for_publish(5)
        assert device.reply()[1]["id"] == "r2"
        device.nothing_more()
    finally:
        device.close()


# ------------------------------------------------------------------------ ids as sent


def test_ids_come_back_as_sent_on_every_request_path(daemon: Daemon, v5: Device) -> None:
    big = (1 << 64) - 1
    for sent in (2, 0, -5, big, "2", "x" * 128):
        v5.send(
            "edgert/infer/occupancy",
            {"id": sent, "inputs": READING},
            ResponseTopic="edgert/reply/v5/i",
        )
        _, reply = v5.reply()
        assert reply["id"] == sent and type(reply["id"]) is type(sent), (sent, reply)

    # Errors keep the id too, also a number.
    v5.send(
        "edgert/infer/occupancy", {"id": 9, "inputs": [[1.0]]}, ResponseTopic="edgert/reply/v5/i"
    )
    _, reply = v5.reply()
    assert reply["id"] == 9 and reply["error"]["code"] == "bad_input"

    # .npy with the id in a user property (a string there, and so in the reply).
    buffer = io.BytesIO()
    np.save(buffer, np.array(READING, np.float32))
    v5.send(
        "edgert/infer/occupancy",
        buffer.getvalue(),
        ResponseTopic="edgert/reply/v5/i",
        UserProperty=[("id", "77")],
    )
    _, reply = v5.reply()
    assert reply["id"] == "77" and reply["ok"] is True


def test_ids_of_other_types_are_bad_request_saying_what_is_taken(
    daemon: Daemon, v5: Device
) -> None:
    for sent in (1.5, True, None, {"a": 1}, [1], "", "x" * 129, 1 << 64):
        v5.send(
            "edgert/infer/occupancy",
            {"id": sent, "inputs": READING},
            ResponseTopic="edgert/reply/v5/i",
        )
        _, reply = v5.reply()
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request", (sent, reply)
        assert "string" in reply["error"]["message"] and "integer" in reply["error"]["message"]
        assert reply["id"] is None


def test_a_resent_integer_id_runs_once_and_its_string_twin_is_another_request(
    daemon: Daemon, v311: Device
) -> None:
    body = {"id": 41, "reply_to": "edgert/reply/dev311/x", "inputs": READING}
    v311.send("edgert/infer/occupancy", body)
    _, first = v311.reply()
    v311.send("edgert/infer/occupancy", body)
    _, again = v311.reply()
    assert first == again  # the cached reply: same latency figures, so not a second run
    v311.send("edgert/infer/occupancy", {**body, "id": "41"})
    _, twin = v311.reply()
    assert twin["id"] == "41" and twin["ok"] is True and twin["latency_ms"] != first["latency_ms"]


def test_a_topic_key_longer_than_an_id_is_bad_request(daemon: Daemon) -> None:
    key = "k" * 129
    device = Device(daemon.broker.port)
    try:
        device.send(f"edgert/infer/occupancy/{key}", {"id": 1, "inputs": READING})
        topic, reply = device.reply()
        assert topic == f"edgert/reply/{key}/occupancy"
        assert reply["error"]["code"] == "bad_request" and "128" in reply["error"]["message"]
    finally:
        device.close()


# ---------------------------------------------------------------- held while building


def _uncompiled(tmp_path: Path) -> Path:
    repository = tmp_path / "engines"
    shutil.copytree(
        REPO / "engines" / "occupancy",
        repository / "occupancy",
        ignore=shutil.ignore_patterns("build"),
    )
    return repository


def _send_when_online(broker: Mosquitto, body: dict[str, Any], protocol: int) -> Device:
    """A device that sends ``body`` the instant the node's status says online, and what the
    retained catalogue said at that instant."""
    device = Device(broker.port, protocol)
    online = threading.Event()
    device.client.message_callback_add(
        "edgert/node/+/status", lambda c, u, m: m.payload == b"online" and online.set()
    )
    device.client.subscribe("edgert/node/+/status", 1)
    assert online.wait(60), "never online"
    device.send("edgert/infer/occupancy/dev", body)
    return device


def test_a_request_sent_at_online_to_a_model_still_building_is_answered_once_ready(
    broker: Mosquitto, tmp_path: Path
) -> None:
    watch = Observer(broker, "edgert/node/+/models")
    daemon = Daemon(broker, _uncompiled(tmp_path), tmp_path / "d").start(wait=False)
    device = _send_when_online(broker, {"id": 5, "inputs": READING}, paho.MQTTv311)
    try:
        first = watch.wait(lambda: watch.on("edgert/node/"), 10, "a catalogue")[0].json()
        (entry,) = first["models"]  # with its build's progress once the build has begun
        assert (entry["name"], entry["state"]) == ("occupancy", "loading")
        assert set(entry) <= {"name", "state", "building"}, entry
        topic, reply = device.reply(timeout=90)
        assert topic == "edgert/reply/dev/occupancy" and reply["id"] == 5 and reply["ok"] is True
        device.nothing_more()
        last = watch.wait(
            lambda: [m for m in watch.on("edgert/node/") if "ready" in m.payload.decode()],
            10,
            "occupancy ready",
        )[0].json()
        (entry,) = last["models"]
        assert entry["state"] == "ready" and entry["outputs"][0]["name"] == "probabilities"
    finally:
        device.close()
        watch.close()
        daemon.stop()


def test_with_no_hold_a_request_to_a_building_model_gets_loading_at_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    daemon = Daemon(broker, _uncompiled(tmp_path), tmp_path / "d", hold_while_loading=0).start(
        wait=False
    )
    device = _send_when_online(broker, {"id": "h", "inputs": READING}, paho.MQTTv5)
    try:
        sent = time.monotonic()
        topic, reply = device.reply(timeout=10)
        assert time.monotonic() - sent < 5
        assert topic == "edgert/reply/dev/occupancy" and reply["id"] == "h"
        assert reply["error"]["code"] == "loading" and reply["error"]["retry_after_ms"] >= 1000
    finally:
        device.close()
        daemon.stop()


def test_a_held_request_past_the_bound_gets_loading_and_its_deadline_expired(
    broker: Mosquitto, tmp_path: Path
) -> None:
    repository = _uncompiled(tmp_path)
    daemon = Daemon(broker, repository, tmp_path / "d", hold_while_loading=0.5).start(wait=False)
    device = _send_when_online(broker, {"id": "b", "inputs": READING}, paho.MQTTv5)
    try:
        device.send(
            "edgert/infer/occupancy/dev", {"id": "dl", "deadline_ms": 100, "inputs": READING}
        )
        codes = {}
        for _ in range(2):
            _, reply = device.reply(timeout=10)
            codes[reply["id"]] = reply["error"]["code"]
        assert codes == {"b": "loading", "dl": "expired"}
        device.nothing_more()
    finally:
        device.close()
        daemon.stop()


# ------------------------------------------------------------------------------- pools


def test_in_a_pool_of_three_each_request_is_answered_exactly_once(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path, v5: Device
) -> None:
    """Two nodes serve occupancy, one only silero_vad: an unknown model gets one no_model, a
    served one one answer, from whichever node its shared group picks."""
    pool = {"share_group": "home"}
    daemons = [
        Daemon(broker, compiled_repository, tmp_path / n, node=n, node_settings=pool, **serve)
        for n, serve in (
            ("a", {"models": ["occupancy"]}),
            ("b", {"models": ["occupancy", "silero_vad"]}),
            ("c", {"models": ["silero_vad"]}),
        )
    ]
    try:
        for daemon in daemons:
            daemon.start()
        for node in "abc":  # each has its catalogue out, and has read the others'
            wait_retained(broker, f"edgert/node/{node}/status", b"online")
        time.sleep(0.5)
        for i in range(6):
            v5.send(
                "edgert/infer/nosuch", {"id": i, "inputs": [1]}, ResponseTopic="edgert/reply/v5/u"
            )
            _, reply = v5.reply()
            assert reply["id"] == i and reply["error"]["code"] == "no_model"
            assert "occupancy" in reply["error"]["message"]
            v5.nothing_more(0.3)
        for i in range(6):
            v5.send(
                "edgert/infer/occupancy",
                {"id": i, "inputs": READING},
                ResponseTopic="edgert/reply/v5/s",
            )
            _, reply = v5.reply()
            assert reply["id"] == i and reply["ok"] is True
            v5.nothing_more(0.3)
    finally:
        for daemon in daemons:
            daemon.stop()


def test_share_group_on_mqtt_311_is_refused_in_one_line(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    daemon = Daemon(
        broker,
        compiled_repository,
        tmp_path,
        node_settings={"share_group": "home"},
        broker_settings={"protocol": 4},
    ).start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(30) == 1
    assert "share_group needs [broker] protocol = 5" in daemon.log.read_text()


# ------------------------------------------------------------------ refused subscriptions

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def _denying(tmp_path: Path, *patterns: str) -> Mosquitto:
    """A mosquitto whose dynamic security plugin refuses SUBSCRIBE to ``patterns``: Debian's
    mosquitto 2.0 acl_file never refuses one (it filters deliveries), the plugin does."""
    acls = [
        {"acltype": "subscribePattern", "topic": p, "priority": 0, "allow": False} for p in patterns
    ]
    access = {"publishClientSend": True, "publishClientReceive": True}
    dynsec = {
        "defaultACLAccess": {**access, "subscribe": True, "unsubscribe": True},
        "clients": [],
        "anonymousGroup": "anon",
        "groups": [{"groupname": "anon", "roles": [{"rolename": "r"}]}],
        "roles": [{"rolename": "r", "acls": acls}],
    }
    (tmp_path / "dynsec.json").write_text(json.dumps(dynsec))
    extra = f"plugin {DYNSEC}\nplugin_opt_config_file {tmp_path / 'dynsec.json'}"
    return Mosquitto(tmp_path, extra).start()


def test_a_refused_model_subscription_shows_that_model_failed(
    compiled_repository: Path, tmp_path: Path
) -> None:
    broker = _denying(tmp_path, "$share/home/edgert/infer/occupancy/#")
    watch = Observer(broker, "edgert/node/+/models")
    daemon = Daemon(
        broker, compiled_repository, tmp_path / "d", node_settings={"share_group": "home"}
    )
    try:
        daemon.start()

        def failed() -> Any:
            for seen in reversed(watch.on("edgert/node/")):
                states = {m["name"]: m for m in seen.json()["models"]}
                if states["occupancy"]["state"] == "failed":
                    return states
            return None

        states = watch.wait(failed, 15, "occupancy failed")
        assert "refused the subscription" in states["occupancy"]["reason"]
        assert "0x87" in states["occupancy"]["reason"]
        assert states["silero_vad"]["state"] == "ready"
        # Its requests are not silence either: the unserved group answers them.
        device = Device(broker.port)
        try:
            device.send(
                "edgert/infer/occupancy",
                {"id": 1, "inputs": READING},
                ResponseTopic="edgert/reply/v5/r",
            )
            _, reply = device.reply()
            assert reply["error"]["code"] == "no_model" and "refused" in reply["error"]["message"]
        finally:
            device.close()
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        watch.close()
        daemon.stop()
        broker.kill()


def test_a_refused_request_subscription_stops_the_daemon_with_one_line(
    compiled_repository: Path, tmp_path: Path
) -> None:
    broker = _denying(tmp_path, "edgert/infer/#")
    daemon = Daemon(broker, compiled_repository, tmp_path / "d").start(wait=False)
    try:
        assert daemon.process is not None
        assert daemon.process.wait(30) == 1
        errors = [x for x in daemon.log.read_text().splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and "refused the subscription to edgert/infer/#" in errors[0]
        assert "Not authorized" in errors[0]
    finally:
        daemon.stop()
        broker.kill()


def test_a_model_toml_with_a_typo_stops_serve_at_start_in_one_line(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "engines"
    shutil.copytree(compiled_repository / "occupancy", repository / "occupancy")
    toml = repository / "occupancy" / "model.toml"
    toml.write_text(toml.read_text() + "\n[batching]\nmax_batchs = 8\n")
    daemon = Daemon(broker, repository, tmp_path / "d").start(wait=False)
    try:
        assert daemon.process is not None
        assert daemon.process.wait(30) == 1
        lines = daemon.log.read_text().splitlines()
        assert lines == [
            f"error: {toml}: [batching] max_batchs: unknown key; did you mean [batching] max_batch?"
        ], lines
    finally:
        daemon.stop()
