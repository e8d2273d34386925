"""Sources: ``[[sources]]`` in the daemon config, validated; and end to end, a camera served by a
local HTTP server (PNG bytes the test controls) that the daemon pulls on an interval or a
trigger topic, feeding the colour classifier, with events on the source's own topic."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgert.daemon.sources import Sources, announcements
from edgert.errors import ConfigError
from edgert.settings import DaemonConfig, SourceConfig
from edgert.transport.loop import EventLoopThread
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon
from tests.daemon.test_broker_features import Observer
from tests.daemon.test_media import colours_model

RED, BLUE = (250, 10, 10), (10, 10, 250)
DIM_RED = (120, 0, 100)  # red, but at ~0.69
EVENTS = "edgert/node/cam/events/"

# ------------------------------------------------------------------------------------- config


def _sources(*tables: dict[str, Any]) -> tuple[SourceConfig, ...]:
    return DaemonConfig.from_dict({"sources": list(tables)}).sources


def test_a_sources_labels_that_its_model_lacks_are_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A threshold's events are named by its state's label: a source that filters on the model's
    # name (or a typo) would let none through, and nothing else would say so.
    configs = _sources(
        {"name": "mic", "model": "occupancy", "stream": "m1", "labels": ["occupancy", "occupied"]},
        {"name": "hall", "model": "occupancy", "stream": "m2", "labels": ["occupied"]},
        {"name": "any", "model": "plain", "stream": "m3", "labels": ["x"]},  # no labels to check
    )
    labels = {"occupancy": ("empty", "occupied")}
    sources = Sources(
        configs,
        lambda name: f"{EVENTS}{name}",
        lambda *_: {},
        lambda *_: None,
        loop=EventLoopThread("test"),
        labels=lambda model: labels.get(model, ()),
    )
    sources.model_served("occupancy")
    sources.model_served("plain")
    warned = [r.getMessage() for r in caplog.records if "never become events" in r.getMessage()]
    assert warned == [
        "source mic: labels ['occupancy'] are not labels of model occupancy (empty, occupied): "
        "they never become events"
    ]


def test_sources_config_keys_and_defaults() -> None:
    (full, bare) = _sources(
        {
            "name": "front_door",
            "model": "person",
            "url": "https://cam.local/snap.jpg",
            "interval": 2,
            "trigger": "zigbee2mqtt/hall_motion",
            "labels": ["person"],
            "min_score": 0.7,
            "debounce": 30,
            "timeout": 3,
        },
        {"name": "garden-2", "model": "person", "url": "http://cam2/snap", "trigger": "a/+/#"},
    )
    assert full == SourceConfig(
        "front_door", "person", url="https://cam.local/snap.jpg", interval=2.0,
        trigger="zigbee2mqtt/hall_motion", labels=("person",), min_score=0.7, debounce=30.0,
        timeout=3.0,
    )  # fmt: skip
    assert (bare.interval, bare.labels, bare.min_score, bare.debounce, bare.timeout) == (
        0.0,
        None,
        0.5,
        0.0,
        5.0,
    )
    assert DaemonConfig.from_dict({}).sources == ()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"colour": "red"},
            " colour: unknown key; known: name, model, url, stream, interval, trigger, labels, "
            "min_score, debounce, timeout, video, fps, transport, max_pixels, snapshot_interval, "
            "reconnect_min, reconnect_max, motion",
        ),
        ({"url": "rtsp://cam/stream"}, " interval: a video source is decoded all the time"),
        (
            {"url": "ftp://u:secret@cam/x"},
            ' url: expected an http(s)://, rtsp(s):// or file:// URL, got "ftp://u:***@cam/x"',
        ),
        (
            {"url": "http:///nohost"},
            ' url: expected an http(s)://, rtsp(s):// or file:// URL, got "http:///nohost"',
        ),
        (
            {"name": "front door"},
            ' name: expected a name of letters, digits, "_" or "-", got "front door"',
        ),
        ({"interval": 0}, " interval: give an interval (seconds) or a trigger topic, or both"),
        ({"interval": -1, "trigger": "t"}, " interval: expected a number >= 0, got -1"),
        ({"trigger": "a/#/b"}, ' trigger: expected an MQTT topic filter, got "a/#/b"'),
        ({"min_score": 1.5}, " min_score: expected a number in [0, 1], got 1.5"),
        (
            {"labels": []},
            " labels: expected a non-empty list of labels (none: every label), got []",
        ),
        (
            {"labels": "person"},
            ' labels: expected a non-empty list of labels (none: every label), got "person"',
        ),
        ({"debounce": "30s"}, ' debounce: expected a number >= 0, got "30s"'),
        ({"model": 3}, " model: expected a non-empty string, got 3"),
        ({"stream": "mic-1"}, " stream: a source has a url (a camera) or a stream, not both"),
        ({"timeout": 0}, " timeout: expected a number > 0, got 0"),
    ],
)
def test_sources_config_refuses(table: dict[str, Any], message: str) -> None:
    base = {"name": "cam", "model": "m", "url": "http://cam/snap.jpg", "interval": 1}
    with pytest.raises(ConfigError) as caught:
        _sources({**base, **table})
    assert caught.value.message == f"config: [[sources]][0]{message}"


def test_sources_config_refuses_missing_keys_and_twice_the_name() -> None:
    with pytest.raises(ConfigError) as caught:
        _sources({"name": "cam"})
    assert (
        caught.value.message == "config: [[sources]][0] model: missing; expected a non-empty string"
    )
    with pytest.raises(ConfigError) as caught:
        _sources({"name": "mic", "model": "vad", "stream": "mic-1", "interval": 2})
    assert caught.value.message == (
        "config: [[sources]][0] interval: a stream source has no interval or trigger"
    )
    twice = {"name": "cam", "model": "m", "url": "http://cam/x", "interval": 1}
    with pytest.raises(ConfigError) as caught:
        _sources(twice, {**twice, "name": "other"}, twice)
    assert caught.value.message == 'config: [[sources]][2] name: "cam" names [[sources]][0] too'
    with pytest.raises(ConfigError) as caught:
        DaemonConfig.from_dict({"sources": {"name": "cam"}})
    assert (
        caught.value.message
        == 'config: [[sources]]: expected [[sources]] tables, got {name = "cam"}'
    )


def test_what_a_result_announces() -> None:
    top = [{"label": "person", "score": 0.9}, {"label": "cat", "score": 0.05}]
    assert announcements(top, None, 0.5, "m") == [("person", 0.9)]
    assert announcements(top, ["cat"], 0.0, "m") == []  # only the best entry counts
    assert announcements(top, None, 0.95, "m") == []
    assert announcements({"state": True, "score": 0.8}, None, 0.5, "door") == [("door", 0.8)]
    assert announcements({"state": False, "score": 0.8}, None, 0.5, "door") == []
    boxes = [
        {"label": "person", "score": 0.6, "box": [0, 0, 1, 1]},
        {"label": "person", "score": 0.8, "box": [2, 2, 3, 3]},
        {"label": "car", "score": 0.7, "box": [4, 4, 5, 5]},
        {"label": "dog", "score": 0.3, "box": [6, 6, 7, 7]},
    ]
    assert announcements(boxes, None, 0.5, "m") == [("person", 0.8), ("car", 0.7)]
    assert announcements(boxes, ["car", "dog"], 0.5, "m") == [("car", 0.7)]
    assert announcements(None, None, 0.5, "m") == []


# --------------------------------------------------------------------------------- end to end


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Camera:
    """What a local HTTP server answers, per path: (status, body); and how often each was hit."""

    port: int = 0
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def show(self, path: str, colour: tuple[int, int, int]) -> None:
        with self.lock:
            self.answers[path] = (200, _png(colour))

    def fail(self, path: str, status: int) -> None:
        with self.lock:
            self.answers[path] = (status, b"camera says no")

    def hit(self, path: str) -> int:
        with self.lock:
            return self.hits.get(path, 0)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def camera() -> Iterator[Camera]:
    state = Camera()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.hits[self.path] = state.hits.get(self.path, 0) + 1
                status, body = state.answers.get(self.path, (404, b"no such camera"))
            self.send_response(status)
            self.send_header("Content-Type", "image/png" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _daemon(
    broker: Mosquitto, tmp_path: Path, sources: list[dict[str, Any]], **serve: object
) -> Daemon:
    colours_model(tmp_path / "engines")
    daemon = Daemon(broker, tmp_path / "engines", tmp_path / "daemon", node="cam", **serve)
    tables = "".join(
        "[[sources]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        for table in sources
    )
    daemon.config.write_text(daemon.config.read_text() + tables)
    return daemon


def _events(watch: Observer, source: str) -> list[dict[str, Any]]:
    return [m.json() for m in watch.on(EVENTS + source) if m.topic == EVENTS + source]


def test_an_interval_source_announces_what_its_camera_sees(
    broker: Mosquitto, tmp_path: Path, camera: Camera
) -> None:
    camera.show("/porch.png", RED)
    camera.show("/hall.png", RED)
    daemon = _daemon(
        broker,
        tmp_path,
        [
            {"name": "porch", "model": "colours", "url": camera.url("/porch.png"), "interval": 0.1},
            {
                "name": "hall",
                "model": "colours",
                "url": camera.url("/hall.png"),
                "interval": 0.1,
                "debounce": 30,
            },
        ],
    )
    watch = Observer(broker, EVENTS + "#")
    try:
        daemon.start()
        # No device publishes: the daemon pulls the snapshot itself.
        first = watch.wait(lambda: _events(watch, "porch"), 10, "a porch event")[0]
        assert first["source"] == "porch" and first["model"] == "colours"
        assert first["event_type"] == "red" and first["score"] > 0.9
        assert first["result"][0]["label"] == "red" and abs(first["at"] - time.time()) < 5
        camera.show("/porch.png", BLUE)
        watch.wait(
            lambda: any(e["event_type"] == "blue" for e in _events(watch, "porch")),
            10,
            "a blue porch event",
        )
        # Debounce: the hall camera is pulled again and again; red is announced once.
        pulls = camera.hit("/hall.png")
        watch.wait(lambda: camera.hit("/hall.png") >= pulls + 5, 10, "more hall pulls")
        assert [e["event_type"] for e in _events(watch, "hall")] == ["red"]
        # The model's own events topic still gets every result.
        assert len(watch.on(EVENTS + "colours")) >= camera.hit("/hall.png") - 2
        # SIGTERM: the sources stop pulling, the daemon drains and exits.
        begun = time.monotonic()
        assert daemon.terminate(timeout=15) == 0
        assert time.monotonic() - begun < 5
        pulls = camera.hit("/porch.png")
        time.sleep(0.3)
        assert camera.hit("/porch.png") == pulls
    finally:
        watch.close()
        daemon.stop()


def test_a_trigger_topic_makes_a_source_pull(
    broker: Mosquitto, tmp_path: Path, camera: Camera
) -> None:
    camera.show("/door.png", BLUE)
    daemon = _daemon(
        broker,
        tmp_path,
        [
            {
                "name": "door",
                "model": "colours",
                "url": camera.url("/door.png"),
                "trigger": "home/+/motion",
            }
        ],
    )
    watch = Observer(broker, EVENTS + "#")
    try:
        daemon.start()
        time.sleep(0.5)
        assert camera.hit("/door.png") == 0 and not _events(watch, "door")  # interval 0: waits
        watch.send("home/hall/motion", b'{"occupancy": true}')
        event = watch.wait(lambda: _events(watch, "door"), 10, "a door event")[0]
        assert event["event_type"] == "blue" and camera.hit("/door.png") == 1
    finally:
        watch.close()
        daemon.stop()


def test_label_filter_and_min_score_hold_events_back(
    broker: Mosquitto, tmp_path: Path, camera: Camera
) -> None:
    camera.show("/garage.png", RED)
    camera.show("/yard.png", DIM_RED)
    sources = [
        {
            "name": "garage",
            "model": "colours",
            "url": camera.url("/garage.png"),
            "interval": 0.1,
            "labels": ["blue"],
        },
        {
            "name": "yard",
            "model": "colours",
            "url": camera.url("/yard.png"),
            "interval": 0.1,
            "min_score": 0.9,
        },
    ]
    daemon = _daemon(broker, tmp_path, sources)
    watch = Observer(broker, EVENTS + "#")
    try:
        daemon.start()
        watch.wait(
            lambda: camera.hit("/garage.png") >= 3 and camera.hit("/yard.png") >= 3,
            10,
            "pulls",
        )
        dim = [m.json()["result"][0] for m in watch.on(EVENTS + "colours")]
        assert any(r["label"] == "red" and 0.5 < r["score"] < 0.9 for r in dim)  # it was seen
        assert not _events(watch, "garage") and not _events(watch, "yard")
        camera.show("/garage.png", BLUE)  # a label in the filter
        event = watch.wait(lambda: _events(watch, "garage"), 10, "a garage event")[0]
        assert event["event_type"] == "blue"
        assert not _events(watch, "yard")
    finally:
        watch.close()
        daemon.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_failing_camera_is_logged_and_serving_goes_on(
    broker: Mosquitto, tmp_path: Path, camera: Camera
) -> None:
    camera.fail("/broken.png", 500)
    camera.answers["/mjpeg"] = (200, b"\xff\xd8\xff" + bytes(10_000))  # not a snapshot
    sources = [
        {"name": "broken", "model": "colours", "url": camera.url("/broken.png"), "interval": 0.1},
        {
            "name": "down",
            "model": "colours",
            "url": f"http://127.0.0.1:{_closed_port()}/snap.png",
            "interval": 0.1,
        },
        {"name": "orphan", "model": "nosuch", "url": camera.url("/x.png"), "interval": 0.1},
        {"name": "stream", "model": "colours", "url": camera.url("/mjpeg"), "interval": 0.1},
    ]
    daemon = _daemon(broker, tmp_path, sources, stats_interval=0.2, max_payload=4096)
    watch = Observer(broker, "edgert/reply/#", "edgert/node/cam/stats")
    try:
        daemon.start()
        watch.wait(lambda: camera.hit("/broken.png") >= 4, 10, "pulls of the broken camera")

        def failures() -> Any:
            stats = [m.json().get("sources", {}) for m in watch.on("edgert/node/cam/stats")]
            return stats and all(stats[-1].get(s, {}).get("failures", 0) >= 3 for s in sources_up)

        sources_up = ("broken", "down", "stream")
        watch.wait(failures, 10, "failures counted in stats")
        # A device's request is still answered.
        watch.send("edgert/infer/colours/kitchen", _png(RED))
        reply = watch.wait(lambda: watch.on("edgert/reply/kitchen/"), 10, "the reply")[0].json()
        assert reply["ok"] and reply["result"][0]["label"] == "red"
        assert daemon.terminate(timeout=15) == 0
        log = daemon.log.read_text()
        # Logged once each (rate-limited), however many pulls failed.
        assert (
            log.count("WARNING edgert.daemon.sources: source broken:") == 1
            and "answered HTTP 500" in log
        )
        assert (
            log.count("WARNING edgert.daemon.sources: source down:") == 1
            and "Connection refused" in log
        )
        assert "/mjpeg sent over 4096 bytes" in log
        assert "source orphan: not started: model 'nosuch' is not served here" in log
    finally:
        watch.close()
        daemon.stop()


def test_a_stream_source_announces_what_its_device_streams(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A microphone-like source: a device sends its own requests with a stream id; the results
    of that stream (and no other) become the source's events."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from tests.daemon.test_media import _image

    daemon = _daemon(
        broker, tmp_path, [{"name": "hall_mic", "model": "colours", "stream": "hall-1"}]
    )
    watch = Observer(broker, EVENTS + "#", "edgert/reply/#")
    try:
        daemon.start()
        for n, (stream, colour) in enumerate((("other", (250, 10, 10)), ("hall-1", (10, 10, 250)))):
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "image/png"
            props.ResponseTopic = f"edgert/reply/dev{n}/colours"
            props.UserProperty = [("id", f"s{n}"), ("stream", stream)]
            watch.client.publish(
                "edgert/infer/colours", _image(colour, "PNG"), qos=1, properties=props
            ).wait_for_publish(5)
        watch.wait(lambda: len(watch.on("edgert/reply/")) == 2, 10, "both replies")
        (event,) = watch.wait(lambda: _events(watch, "hall_mic"), 10, "the stream's event")
        assert event["event_type"] == "blue" and event["source"] == "hall_mic"
        time.sleep(0.3)
        assert len(_events(watch, "hall_mic")) == 1  # the other stream's red is not its
    finally:
        watch.close()
        daemon.stop()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://cam/x", "stream": "s", "interval": 1}, "a url (a camera) or a stream"),
        ({"stream": "s", "interval": 1}, "a stream source has no interval or trigger"),
        ({}, "a url (a camera) or a stream"),
    ],
)
def test_stream_sources_are_checked(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _sources({"name": "mic", "model": "m", **table})
