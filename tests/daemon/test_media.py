"""Image payloads end to end: JPEG/PNG bytes → model.toml [preprocess] → model →
[postprocess] top-k with labels, in the reply's ``result`` and on the events topic."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from PIL import Image

from edgert import ModelDir, compile_model
from tests.broker import Mosquitto
from tests.corpus import make_model, tensor, write
from tests.daemon.conftest import Daemon
from tests.daemon.test_broker_features import Observer

TOML = """
labels = ["red", "blue"]

[inputs.image]
format = "png"          # what a device sends without a content type (MQTT 3.1.1)

[preprocess]
kind = "image"
resize = "letterbox"
scale = 0.00392156862745098

[postprocess]
top_k = 1
"""


def colours_model(root: Path) -> None:
    """[1, 3, 16, 16] → mean per channel → (red, blue) × 10 → softmax."""
    weights = np.array([[10, 0], [0, 0], [0, 10]], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inits = [numpy_helper.from_array(weights, "w")]
    model = make_model(
        nodes,
        [tensor("image", np.float32, [1, 3, 16, 16])],
        [tensor("probs", np.float32, [1, 2])],
        inits,
    )
    write(root / "colours", model, TOML)
    compile_model(ModelDir(root / "colours"))


def _image(colour: tuple[int, int, int], fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def media_daemon(broker: Mosquitto, tmp_path: Path) -> Iterator[Daemon]:
    colours_model(tmp_path / "engines")
    daemon = Daemon(broker, tmp_path / "engines", tmp_path / "daemon", node="cam").start()
    yield daemon
    daemon.stop()


def test_png_and_jpeg_give_the_labelled_result(media_daemon: Daemon, broker: Mosquitto) -> None:
    watch = Observer(broker, "edgert/reply/#", "edgert/node/cam/events/#")
    try:
        # MQTT 3.1.1 style: PNG bytes on a keyed topic; the model declares png.
        watch.send("edgert/infer/colours/door", _image((250, 10, 10), "PNG"))
        # MQTT 5: a JPEG with its content type and a response topic.
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "image/jpeg"
        props.ResponseTopic = "edgert/reply/garden/colours"
        props.UserProperty = [("id", "j1")]
        watch.client.publish(
            "edgert/infer/colours", _image((10, 10, 250), "JPEG"), qos=1, properties=props
        ).wait_for_publish(5)
        watch.wait(lambda: len(watch.on("edgert/reply/")) == 2, 10, "two replies")
        by_topic = {m.topic: m.json() for m in watch.on("edgert/reply/")}
        red = by_topic["edgert/reply/door/colours"]
        blue = by_topic["edgert/reply/garden/colours"]
        assert red["ok"] and red["result"][0]["label"] == "red" and red["result"][0]["score"] > 0.9
        assert blue["id"] == "j1" and blue["result"][0]["label"] == "blue"
        # The result reaches the events topic too (what Home Assistant reads).
        watch.wait(lambda: len(watch.on("edgert/node/cam/events/")) == 2, 10, "two events")
        labels = {m.json()["result"][0]["label"] for m in watch.on("edgert/node/cam/events/")}
        assert labels == {"red", "blue"}
        # Not an image: a structured error, and serving goes on.
        watch.send("edgert/infer/colours/bad", b"\x89PNG not really")
        watch.wait(lambda: watch.on("edgert/reply/bad/"), 10, "the error reply")
        error = json.loads(watch.on("edgert/reply/bad/")[0].payload)
        assert error["ok"] is False and error["error"]["code"] == "bad_input"
    finally:
        watch.close()


def test_a_binary_request_asks_for_a_compact_reply_in_a_user_property(
    media_daemon: Daemon, broker: Mosquitto
) -> None:
    """A camera's JPEG cannot carry "compact": true; its user property can (a detector's raw
    outputs would not fit a device's buffer). A value that is not a flag is a structured error."""
    watch = Observer(broker, "edgert/reply/#")
    try:
        for key, flag in (("full", None), ("compact", "true"), ("off", "0"), ("bad", "maybe")):
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "image/jpeg"
            props.ResponseTopic = f"edgert/reply/{key}/colours"
            props.UserProperty = [("id", key)] + ([("compact", flag)] if flag else [])
            watch.client.publish(
                "edgert/infer/colours", _image((10, 10, 250), "JPEG"), qos=1, properties=props
            ).wait_for_publish(5)
        watch.wait(lambda: len(watch.on("edgert/reply/")) == 4, 10, "four replies")
        by_key = {m.topic.split("/")[2]: m.json() for m in watch.on("edgert/reply/")}
        for key in ("full", "off"):
            assert {"outputs", "latency_ms"} <= set(by_key[key]), by_key[key]
        compact = by_key["compact"]
        assert compact["ok"] and compact["result"][0]["label"] == "blue"
        assert "outputs" not in compact and "latency_ms" not in compact, compact
        bad = by_key["bad"]
        assert bad["ok"] is False and bad["id"] == "bad", bad
        assert bad["error"]["code"] == "bad_request" and "compact" in bad["error"]["message"]
    finally:
        watch.close()


def _discovery(watch: Observer) -> list[dict[str, object]]:
    return [m.json() for m in watch.on("homeassistant/device/ha/config")]


def test_home_assistant_discovery_resend_and_removal(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    watch = Observer(broker, "homeassistant/device/ha/config")
    daemon = Daemon(broker, compiled_repository, tmp_path / "one", node="ha")
    try:
        daemon.start()
        watch.wait(lambda: _discovery(watch), 10, "discovery")
        first = _discovery(watch)[-1]
        components = first["cmps"]
        assert isinstance(components, dict)
        assert {"occupancy_event", "silero_vad_event", "node_requests"} <= set(components)
        assert first["avty"] == [
            {"t": "edgert/node/ha/status", "pl_avail": "online", "pl_not_avail": "offline"}
        ]
        # Home Assistant restarts: its birth message makes the daemon send discovery again.
        count = len(_discovery(watch))
        watch.send("homeassistant/status", b"online")
        watch.wait(lambda: len(_discovery(watch)) > count, 10, "discovery re-sent")
    finally:
        daemon.stop()
    # The next run serves occupancy only: silero_vad's entities are removed, then left out.
    daemon = Daemon(broker, compiled_repository, tmp_path / "two", node="ha", models=["occupancy"])
    try:
        before = len(_discovery(watch))
        daemon.start()
        removal = watch.wait(
            lambda: [
                d
                for d in _discovery(watch)[before:]
                if isinstance(d["cmps"], dict)
                and d["cmps"].get("silero_vad_event") == {"p": "event"}
            ],
            10,
            "silero_vad's removal",
        )
        assert removal
        watch.wait(
            lambda: "silero_vad_event" not in _discovery(watch)[-1]["cmps"],  # type: ignore[operator]
            10,
            "the config without silero_vad",
        )
    finally:
        watch.close()
        daemon.stop()
