"""Video sources end to end: Debian's GStreamer RTSP server (a real one, under the system's
python3) serves a clip made here, a static room and a red figure walking in, standing and
walking out; the daemon decodes it with PyAV behind its motion gate and feeds a small detector.
Events, counts, the annotated snapshot and Home Assistant's discovery are read from a real
mosquitto; the server is killed and restarted; bad streams fail clearly."""

from __future__ import annotations

import functools
import io
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgert.daemon.snapshots import BOX_COLOUR
from edgert.settings import MotionSection
from tests.broker import Mosquitto
from tests.daemon.cameras import RtspServer, closed_port, grid_detector, scene, write_frames
from tests.daemon.conftest import Daemon
from tests.daemon.test_broker_features import Observer

NODE = "edgert/node/cam/"
DISCOVERY = "homeassistant/device/cam/config"


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _daemon(broker: Mosquitto, tmp_path: Path, sources: list[dict[str, Any]]) -> Daemon:
    engines = tmp_path / "engines"
    if not (engines / "grid").exists():
        grid_detector(engines)
    daemon = Daemon(broker, engines, tmp_path / "daemon", node="cam", stats_interval=0.5)
    text = daemon.config.read_text().split("[[sources]]")[0]
    for table in sources:
        text += "[[sources]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
    daemon.config.write_text(text)
    return daemon


def _stats(watch: Observer, source: str) -> dict[str, Any]:
    seen = [m.json().get("sources", {}) for m in watch.on(NODE + "stats")]
    return dict(seen[-1].get(source, {})) if seen else {}


def _json_on(watch: Observer, topic: str) -> list[dict[str, Any]]:
    return [m.json() for m in watch.on(topic) if m.topic == topic]


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, str]:
    return {
        "door": write_frames(tmp_path / "door", scene(figure=True)),
        "hall": write_frames(tmp_path / "hall", scene(figure=False)),
    }


@pytest.fixture
def rtsp(clips: dict[str, str]) -> Iterator[RtspServer]:
    server = RtspServer({**clips, "mic": "audio", "uhd": "4k"}).start()
    yield server
    server.kill()


def _door(url: str, **more: Any) -> dict[str, Any]:
    return {
        "name": "door",
        "model": "grid",
        "url": url,
        "fps": 5,
        "debounce": 1,
        "snapshot_interval": 0.5,
        "reconnect_min": 0.5,
        "reconnect_max": 1,
        "timeout": 2,
        **more,
    }


def test_a_camera_stream_announces_the_figure_and_the_gate_skips_the_static_room(
    broker: Mosquitto, tmp_path: Path, rtsp: RtspServer
) -> None:
    sources = [
        _door(rtsp.url("door", "viewer:s3cret@"), motion={"keepalive": 30}),
        {"name": "hall", "model": "grid", "url": rtsp.url("hall"), "fps": 5},
    ]
    daemon = _daemon(broker, tmp_path, sources)
    watch = Observer(broker, NODE + "#", DISCOVERY)
    try:
        daemon.start()
        counts = NODE + "counts/door"
        # The figure comes (a count of at least one), and goes (0 again): in one loop of the clip.
        watch.wait(lambda: any(c["person"] >= 1 for c in _json_on(watch, counts)), 20, "a figure")
        shown = len(_json_on(watch, counts))
        watch.wait(
            lambda: any(c["person"] == 0 for c in _json_on(watch, counts)[shown:]), 10, "it left"
        )
        left = time.monotonic()
        events = _json_on(watch, NODE + "events/door")
        assert events and {e["event_type"] for e in events} == {"person"}
        assert all(e["source"] == "door" and e["score"] >= 0.5 for e in events)
        # Debounced: one event a second at most while the figure is seen (about 2.6 s).
        times = [m.at for m in watch.on(NODE + "events/door")]
        assert len(events) <= 4 and all(b - a > 0.8 for a, b in itertools.pairwise(times))
        watch.wait(lambda: time.monotonic() - left > 2, 3, "2 s of the empty room")
        assert len(_json_on(watch, NODE + "events/door")) == len(events)  # none after it left
        assert not _json_on(watch, NODE + "events/hall")
        # The gate: of the static room's sampled frames, the model saw at most 10 %.
        hall = watch.wait(lambda: _stats(watch, "hall").get("sampled", 0) >= 30, 15, "hall")
        hall = _stats(watch, "hall")
        assert hall["state"] == "connected" and hall["decoded"] >= hall["sampled"]
        assert hall["gated"] >= 0.9 * hall["sampled"], hall
        door = _stats(watch, "door")
        assert 0 < door["inferred"] < door["sampled"], door
        assert 9 <= door["fps"] <= 11, door  # the camera's 10 frames a second, all decoded
        # The retained snapshot: a JPEG of the frame with the figure boxed.
        _check_snapshot(broker)
        _check_discovery(watch)
        log = daemon.log.read_text()
        assert "s3cret" not in log and "viewer:***@127.0.0.1" in log
        # Nor in anything published: stats, catalogue, discovery, events.
        assert not any(b"s3cret" in m.payload for m in watch.on(""))
        assert daemon.terminate(timeout=15) == 0
        # The door camera goes: its entities are removed from Home Assistant's device.
        before = len(watch.on(DISCOVERY))
        daemon = _daemon(broker, tmp_path, sources[1:]).start()

        def removal() -> list[dict[str, Any]]:
            later = [m.json()["cmps"] for m in watch.on(DISCOVERY)[before:]]
            return [cmps for cmps in later if "door_image" in cmps]

        removed = watch.wait(removal, 15, "the removal")[0]
        assert removed["door_image"] == {"p": "image"}
        assert removed["door_person_count"] == {"p": "sensor"}
        assert removed["door_stream"] == {"p": "sensor"} and "hall_image" in removed
        # Its retained snapshot and counts are cleared (an empty retained message each).
        for state in ("snapshot/door", "counts/door"):
            watch.wait(functools.partial(_cleared, watch, NODE + state), 10, f"{state} cleared")
    finally:
        watch.close()
        daemon.stop()


def _cleared(watch: Observer, topic: str) -> bool:
    return any(not m.payload for m in watch.on(topic) if m.topic == topic)


def _check_snapshot(broker: Mosquitto) -> None:
    """The retained snapshot, read by a client that comes later (as Home Assistant would)."""
    late = Observer(broker, NODE + "snapshot/door")
    try:
        (message,) = late.wait(lambda: late.on(NODE + "snapshot/door"), 5, "the snapshot")
    finally:
        late.close()
    image = Image.open(io.BytesIO(message.payload))
    assert image.format == "JPEG" and image.size == (320, 240)
    pixels = np.asarray(image.convert("RGB"), np.int16)
    amber = (np.abs(pixels - BOX_COLOUR).sum(axis=2) < 60).sum()
    assert amber > 100, "no box drawn"  # the label's background and the box's lines


def _check_discovery(watch: Observer) -> None:
    cmps = watch.on(DISCOVERY)[-1].json()["cmps"]
    image = cmps["door_image"]
    assert image["p"] == "image" and image["image_topic"] == NODE + "snapshot/door"
    assert image["content_type"] == "image/jpeg"
    count = cmps["door_person_count"]
    assert count["p"] == "sensor" and count["stat_t"] == NODE + "counts/door"
    stream = cmps["door_stream"]
    assert stream["p"] == "sensor" and stream["ent_cat"] == "diagnostic"
    assert stream["stat_t"] == NODE + "stats"
    assert cmps["door_seen"]["event_types"] == ["person"]
    assert "s3cret" not in json.dumps(cmps)


def test_a_dropped_stream_reconnects_and_serving_goes_on(
    broker: Mosquitto, tmp_path: Path, clips: dict[str, str]
) -> None:
    server = RtspServer(clips).start()
    daemon = _daemon(broker, tmp_path, [_door(server.url("door"))])
    watch = Observer(broker, NODE + "#", "edgert/reply/#")
    try:
        daemon.start()
        watch.wait(lambda: _json_on(watch, NODE + "events/door"), 20, "a first event")
        port = server.port
        server.kill()  # mid-stream
        failed = watch.wait(lambda: _stats(watch, "door").get("state") == "failed", 10, "failed")
        assert failed
        error = _stats(watch, "door")["last_error"]
        assert error.startswith(f"rtsp://127.0.0.1:{port}/door: "), error
        # The rest of the daemon is not affected: a device's request is answered.
        from tests.daemon.test_media import _image

        watch.send("edgert/infer/grid/kitchen", _image((10, 200, 10), "JPEG"))
        reply = watch.wait(lambda: watch.on("edgert/reply/kitchen/"), 10, "the reply")[0].json()
        assert reply["ok"] and reply["result"] == []
        before = len(_json_on(watch, NODE + "events/door"))
        restarted = time.monotonic()
        server = RtspServer(clips, port=port).start()
        watch.wait(lambda: _stats(watch, "door").get("state") == "connected", 15, "reconnected")
        # Within the backoff (at most 1 s here) plus the stream's opening.
        assert time.monotonic() - restarted < 10
        assert _stats(watch, "door")["reconnects"] >= 1
        try:
            watch.wait(lambda: len(_json_on(watch, NODE + "events/door")) > before, 20, "events")
        except AssertionError as exc:  # what the source did meanwhile, for a failure under load
            seen = [m.json().get("sources", {}).get("door") for m in watch.on(NODE + "stats")]
            raise AssertionError(f"{exc}; the door source's last stats: {seen[-4:]}") from exc
        assert daemon.terminate(timeout=15) == 0
    finally:
        watch.close()
        daemon.stop()
        server.kill()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts and never says a word (a camera hung mid-handshake)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for sock in accepted:
        sock.close()
    listener.close()


def test_bad_streams_fail_clearly_and_nothing_gets_stuck(
    broker: Mosquitto, tmp_path: Path, rtsp: RtspServer, silent_port: int
) -> None:
    bad = {
        "down": f"rtsp://127.0.0.1:{closed_port()}/x",
        "silent": f"rtsp://127.0.0.1:{silent_port}/x",
        "mic": rtsp.url("mic"),
        "uhd": rtsp.url("uhd"),
    }
    sources = [{"name": n, "model": "grid", "url": u, "timeout": 2} for n, u in bad.items()]
    daemon = _daemon(broker, tmp_path, sources)
    watch = Observer(broker, NODE + "#", "edgert/reply/#")
    try:
        daemon.start()
        watch.wait(lambda: all(_stats(watch, n).get("last_error") for n in bad), 30, "every error")
        errors = {n: _stats(watch, n)["last_error"] for n in bad}
        assert errors["down"].endswith("cannot connect: Connection refused"), errors
        assert errors["silent"].endswith("no answer within 2 s"), errors
        assert errors["mic"].endswith("no video stream (it holds audio)"), errors
        assert "3840x2160 is over max_pixels (2073600)" in errors["uhd"], errors
        assert all(_stats(watch, n)["inferred"] == 0 for n in bad)
        from tests.daemon.test_media import _image

        watch.send("edgert/infer/grid/kitchen", _image((220, 30, 30), "JPEG"))
        reply = watch.wait(lambda: watch.on("edgert/reply/kitchen/"), 10, "the reply")[0].json()
        assert reply["ok"] and reply["result"][0]["label"] == "person"
        # SIGTERM while streams hang or retry: out promptly (reads are bounded by timeout).
        begun = time.monotonic()
        assert daemon.terminate(timeout=15) == 0
        assert time.monotonic() - begun < 6
        assert "Traceback" not in daemon.log.read_text()
    finally:
        watch.close()
        daemon.stop()


def test_rtsp_over_udp_is_read(rtsp: RtspServer) -> None:
    """``transport = "udp"``: the camera sends RTP over UDP (the reader alone, no daemon)."""
    from edgert.daemon.cameras import StreamStats, read_stream
    from edgert.daemon.motion import MotionGate
    from edgert.settings import DaemonConfig

    table = {"name": "door", "model": "grid", "url": rtsp.url("door"), "transport": "udp"}
    (config,) = DaemonConfig.from_dict({"sources": [table | {"fps": 10}]}).sources
    stats, stop = StreamStats(), threading.Event()

    def deliver(frame: np.ndarray, at: float) -> None:
        if stats.sampled >= 10:
            stop.set()

    read_stream(config, stats, MotionGate(MotionSection(enabled=False)), deliver, stop, False)
    assert stats.sampled >= 10 and stats.state == "connected"
