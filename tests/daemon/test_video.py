"""Video sources without a broker: their config keys and refusals, the motion gate and its mask,
the snapshot drawing and counts, Home Assistant's components, and a local file decoded with PyAV
through the gate."""

from __future__ import annotations

import contextlib
import functools
import io
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from edgert.daemon.cameras import StreamError, StreamStats, read_stream
from edgert.daemon.discovery import SourceEntity, component_platforms, device_discovery
from edgert.daemon.motion import MotionGate, polygon_mask
from edgert.daemon.snapshots import BOX_COLOUR, annotate, counts
from edgert.errors import ConfigError
from edgert.settings import DaemonConfig, MotionSection, SourceConfig, redact_url
from edgert.topics import Topics
from tests.daemon.cameras import RtspServer, room, scene, write_frames


def _source(**table: Any) -> SourceConfig:
    base = {"name": "door", "model": "m", "url": "rtsp://cam.local/live"}
    (config,) = DaemonConfig.from_dict({"sources": [{**base, **table}]}).sources
    return config


def test_video_keys_and_defaults() -> None:
    config = _source()
    assert (config.fps, config.transport, config.max_pixels) == (5.0, "tcp", 1920 * 1080)
    assert (config.snapshot_interval, config.reconnect_min, config.reconnect_max) == (10, 1, 30)
    assert config.motion == MotionSection()
    assert (config.motion.threshold, config.motion.min_area, config.motion.keepalive) == (
        24,
        0.004,
        10.0,
    )
    tuned = _source(
        url="http://cam/mjpeg",
        video=True,
        fps=2,
        transport="udp",
        motion={"keepalive": 0, "mask": [[[0, 0], [1, 0], [1, 0.25]]]},
    )
    assert tuned.fps == 2 and tuned.transport == "udp" and tuned.motion.keepalive == 0
    assert tuned.motion.mask == (((0.0, 0.0), (1.0, 0.0), (1.0, 0.25)),)
    assert _source(url="file:///clips/door.mkv").url == "file:///clips/door.mkv"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"fps": 0}, " fps: expected a number > 0 and <= 60, got 0"),
        ({"transport": "sctp"}, ' transport: expected one of "tcp", "udp", got "sctp"'),
        ({"max_pixels": 0}, " max_pixels: expected an integer >= 1, got 0"),
        ({"snapshot_interval": -1}, " snapshot_interval: expected a number >= 0, got -1"),
        ({"reconnect_min": 5, "reconnect_max": 2}, " reconnect_min: must be at most"),
        ({"interval": 2}, " interval: a video source is decoded all the time"),
        ({"trigger": "a/b"}, " trigger: a video source is decoded all the time"),
        ({"url": "rtsp:///nohost"}, " url: expected an http(s)://, rtsp(s):// or file://"),
        ({"motion": {"threshold": 0}}, " motion.threshold: expected an integer in 1..255, got 0"),
        ({"motion": {"min_area": 2}}, " motion.min_area: expected a number in [0, 1], got 2"),
        ({"motion": {"keepalive": -1}}, " motion.keepalive: expected a number >= 0, got -1"),
        (
            {"motion": {"mask": [[[0, 0], [1, 0]]]}},
            " motion.mask: expected a list of a polygon of at least 3 [x, y] points",
        ),
        ({"motion": {"mask": [[[0, 0], [2, 0], [1, 1]]]}}, " motion.mask: expected a list"),
        (
            {"motion": {"treshold": 3}},
            " motion.treshold: unknown key; did you mean [[sources]][0] motion.threshold?",
        ),
        ({"motion": True}, " motion: expected a table, got true"),
    ],
)
def test_video_keys_refused(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _source(**table)
    assert caught.value.message.startswith(f"config: [[sources]][0]{message}")


def test_credentials_are_redacted() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/h264") == (
        "rtsp://admin:***@10.0.0.5:554/h264"
    )
    assert redact_url("rtsps://cam/live") == "rtsps://cam/live"


def test_polygon_mask_covers_its_polygons() -> None:
    left_half = polygon_mask([((0, 0), (0.5, 0), (0.5, 1), (0, 1))], 8, 4)
    assert left_half[:, :4].all() and not left_half[:, 4:].any()
    triangle = polygon_mask([((0, 0), (1, 0), (0, 1))], 10, 10)
    assert triangle[0, 0] and not triangle[9, 9] and 45 <= triangle.sum() <= 55  # + the diagonal


def _grey(frame: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).convert("L").resize((96, 72), Image.BOX))


def test_the_gate_opens_on_change_and_keepalive_and_not_in_the_mask() -> None:
    frames = [_grey(f) for f in scene(figure=True)]
    gate = MotionGate(MotionSection(keepalive=2.0))
    opened = [gate.opens(grey, now=n * 0.1) for n, grey in enumerate(frames)]
    assert opened[0]  # the first frame: nothing to compare with
    static = opened[1:30]
    assert static.count(True) == 1 and opened[20]  # one keep-alive, at 2 s
    assert all(opened[30:38]) and all(opened[48:56])  # entering, leaving
    assert not any(opened[39:48])  # standing still: only a keep-alive would open it
    # The band the figure walks in masked: nothing opens the gate after the first frame.
    band = ((0.0, 0.3), (1.0, 0.3), (1.0, 0.9), (0.0, 0.9))
    masked = MotionGate(MotionSection(keepalive=0, mask=(band,)))
    assert [masked.opens(g, n * 0.1) for n, g in enumerate(frames)].count(True) == 1
    # A band above it masked: the figure still opens it.
    above = MotionGate(MotionSection(keepalive=0, mask=(((0, 0), (1, 0), (1, 0.25), (0, 0.25)),)))
    assert [above.opens(g, n * 0.1) for n, g in enumerate(frames)].count(True) > 10
    off = MotionGate(MotionSection(enabled=False))
    assert all(off.opens(g, 0) for g in frames[:5])


def test_the_gate_ignores_noise_under_its_threshold() -> None:
    rng = np.random.default_rng(3)
    still = _grey(room())
    gate = MotionGate(MotionSection(keepalive=0))
    noisy = [np.clip(still + rng.normal(0, 4, still.shape), 0, 255).astype(np.uint8)]
    assert gate.opens(still, 0) and not any(gate.opens(f, 1) for f in noisy * 5)


DETECTIONS = [
    {"label": "person", "score": 0.9, "box": [40.0, 60.0, 120.0, 200.0]},
    {"label": "person", "score": 0.3, "box": [200.0, 20.0, 240.0, 60.0]},
    {"label": "car", "score": 0.8, "box": [10.0, 10.0, 30.0, 30.0]},
]


def test_snapshot_draws_the_boxes_over_min_score() -> None:
    frame = room()
    image = Image.open(io.BytesIO(annotate(frame, DETECTIONS, 0.5)))
    assert image.format == "JPEG" and image.size == (320, 240)
    pixels = np.asarray(image.convert("RGB"), np.int16)
    amber = np.abs(pixels - BOX_COLOUR).sum(axis=2) < 90
    assert amber[100:180, 40:43].any(axis=1).mean() > 0.9  # the person's left edge
    assert not amber[25:55, 200:203].any()  # the 0.3 box is not drawn
    plain = np.asarray(Image.open(io.BytesIO(annotate(frame, [], 0.5))).convert("RGB"), np.int16)
    assert not (np.abs(plain - BOX_COLOUR).sum(axis=2) < 90).any()


def test_counts_per_label() -> None:
    assert counts(DETECTIONS, ("person", "car", "dog"), 0.5) == {"person": 1, "car": 1, "dog": 0}
    assert counts([], ("person",), 0.5) == {"person": 0}
    assert counts({"state": True, "score": 0.9}, ("door",), 0.5) == {"door": 1}


def test_a_video_source_has_an_image_counts_and_a_stream_sensor() -> None:
    topics = Topics(prefix="edgert", node="n1")
    video = SourceEntity("door", "det", ("person", "no_cat"), video=True)
    platforms = component_platforms([], [video, SourceEntity("snap", "det", ("person",))])
    assert {k: v for k, v in platforms.items() if k.startswith("door")} == {
        "door_seen": "event",
        "door_detected": "binary_sensor",
        "door_image": "image",
        "door_stream": "sensor",
        "door_person_count": "sensor",
        "door_no_cat_count": "sensor",
    }
    assert "snap_image" not in platforms
    _, payload = device_discovery("n1", topics, [], sources=[video])
    import json

    cmps = json.loads(payload)["cmps"]
    assert cmps["door_image"]["image_topic"] == "edgert/node/n1/snapshot/door"
    assert cmps["door_no_cat_count"]["stat_t"] == "edgert/node/n1/counts/door"
    assert cmps["door_no_cat_count"]["val_tpl"] == '{{ value_json.get("no_cat", 0) }}'
    _, removed = device_discovery("n1", topics, [], ["door_image", "door_person_count"])
    assert json.loads(removed)["cmps"]["door_image"] == {"p": "image"}


def _clip(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    with av.open(str(path), "w", format="mpegts" if path.suffix == ".ts" else None) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(fps)}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_a_file_is_decoded_sampled_and_gated(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "door.mkv", scene(figure=True))
    for enabled in (True, False):
        delivered: list[np.ndarray] = []
        config = _source(url=f"file://{clip}", fps=5, motion={"enabled": enabled})
        stats, gate = StreamStats(), MotionGate(config.motion)
        keep = functools.partial(_keep, delivered)
        read_stream(config, stats, gate, keep, threading.Event(), False)
        assert (stats.decoded, stats.sampled) == (80, 40)  # 8 s at 10 fps, sampled at 5
        assert len(delivered) == stats.sampled - stats.gated
        assert delivered[0].shape == (240, 320, 3)
        if enabled:  # the first frame, and those while the figure walks (8 of 13 sampled)
            assert 6 <= len(delivered) <= 14, len(delivered)
        else:
            assert stats.gated == 0


def test_a_stream_whose_clock_goes_back_is_sampled_on_from_there(tmp_path: Path) -> None:
    # Two MPEG-TS recordings back to back: the second's timestamps start again at 0, as a
    # camera's do when it restarts its encoder. Sampling goes on at the new times; waiting for
    # the old clock to come round again would sample nothing for as long as it had run.
    once = _clip(tmp_path / "door.ts", scene(figure=False)).read_bytes()
    twice = tmp_path / "twice.ts"
    twice.write_bytes(once + once)
    config = _source(url=f"file://{twice}", fps=5, motion={"enabled": False})
    stats, delivered = StreamStats(), list[np.ndarray]()
    keep = functools.partial(_keep, delivered)
    read_stream(config, stats, MotionGate(config.motion), keep, threading.Event(), False)
    assert (stats.decoded, stats.sampled, len(delivered)) == (160, 80, 80)


def test_a_reconnected_rtsp_stream_is_sampled_from_its_first_frames(tmp_path: Path) -> None:
    # An RTSP stream's first frame has no timestamp: it is placed by this connection's frames,
    # not by every frame decoded before the reconnect (that put it seconds ahead of the stream,
    # and nothing was sampled until the stream's clock caught up).
    server = RtspServer({"hall": write_frames(tmp_path / "hall", scene(figure=False))}).start()
    try:
        config = _source(url=server.url("hall"), fps=5, motion={"enabled": False})
        stats, gate = StreamStats(), MotionGate(config.motion)
        for seconds in (4.0, 3.0):  # a connection, then a reconnect after it
            sampled, stop = stats.sampled, threading.Event()
            timer = threading.Timer(seconds, stop.set)
            timer.start()
            read_stream(config, stats, gate, lambda frame, at: None, stop, False)
            timer.cancel()
        assert stats.decoded >= 30, stats.decoded
        assert stats.sampled - sampled >= 5, (stats.decoded, stats.sampled - sampled)
    finally:
        server.kill()


def _keep(into: list[np.ndarray], frame: np.ndarray, at: float) -> None:
    into.append(frame)


def test_a_file_over_max_pixels_or_not_video_is_refused(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "door.mkv", scene(figure=False)[:5])
    config = _source(url=f"file://{clip}", max_pixels=320 * 240 - 1)
    with pytest.raises(StreamError, match=r"320x240 is over max_pixels \(76799\)"):
        read_stream(
            config, StreamStats(), MotionGate(config.motion), print, threading.Event(), False
        )
    sound = tmp_path / "bell.wav"
    with wave.open(str(sound), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(8000)
        out.writeframes(bytes(16000))
    config = _source(url=f"file://{sound}")
    with pytest.raises(StreamError, match=r"bell.wav: no video stream \(it holds audio\)"):
        read_stream(
            config, StreamStats(), MotionGate(config.motion), print, threading.Event(), False
        )


def test_a_missing_file_is_refused_in_words(tmp_path: Path) -> None:
    config = _source(url=f"file://{tmp_path}/gone.mkv")
    with pytest.raises(StreamError, match=r"gone.mkv: No such file or directory$"):
        read_stream(
            config, StreamStats(), MotionGate(config.motion), print, threading.Event(), False
        )


def test_pyav_is_imported_only_for_a_video_source() -> None:
    """A daemon without cameras does not load FFmpeg (tens of MB resident)."""
    code = (
        "import sys, edgert.daemon.service, edgert.daemon.sources; "
        "print(sorted(m for m in ('av', 'edgert.daemon.cameras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def mjpeg_camera() -> Iterator[str]:
    """An HTTP camera sending the scene as MJPEG (multipart JPEGs) at 10 frames a second."""
    jpegs = []
    for frame in scene(figure=True)[:40]:
        out = io.BytesIO()
        Image.fromarray(frame).save(out, format="JPEG")
        jpegs.append(out.getvalue())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            with contextlib.suppress(OSError):  # the reader hung up
                for n in range(600):
                    body = jpegs[n % len(jpegs)]
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}"
                    self.wfile.write(head.encode() + b"\r\n\r\n" + body + b"\r\n")
                    time.sleep(0.1)  # the camera's frame rate

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://viewer:s3cret@127.0.0.1:{server.server_address[1]}/mjpeg"
    server.shutdown()
    server.server_close()


def test_an_mjpeg_camera_over_http_is_decoded(mjpeg_camera: str) -> None:
    config = _source(url=mjpeg_camera, video=True, fps=10, motion={"enabled": False})
    stats, stop, delivered = StreamStats(), threading.Event(), []

    def deliver(frame: np.ndarray, at: float) -> None:
        delivered.append(frame)
        if len(delivered) == 15:
            stop.set()

    read_stream(config, stats, MotionGate(config.motion), deliver, stop, False)
    assert len(delivered) == 15 and delivered[0].shape == (240, 320, 3)
    assert stats.state == "connected" and stats.decoded >= 15
