"""Helpers for the video-source tests and the bench: a seeded scene (a static room, then a red
figure entering, staying and leaving), a small detector that finds the figure, and the real
GStreamer RTSP server (``rtsp_server.py`` under Debian's python3) serving it."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

from edgert import ModelDir, compile_model
from tests.corpus import make_model, tensor, write

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: python3-gi and GStreamer's introspection data
WIDTH, HEIGHT, FPS = 320, 240, 10
# The figure's clip, frame by frame: static, entering, standing, leaving, static again.
STATIC_FRAMES, ENTER, STAY, LEAVE, AFTER = 30, 8, 10, 8, 24
FIGURE = (160, 10, 20)  # dark red: the detector sees red, the gate its contrast in grey

DETECTOR_TOML = """
labels = ["person"]

[inputs.image]
format = "jpeg"

[preprocess]
kind = "image"
resize = "letterbox"
scale = 0.00392156862745098

[postprocess]
detect = "yolov8"
score_threshold = 0.5
"""


def grid_detector(root: Path, side: int = 64, cell: int = 8) -> None:
    """A detector of red things, made here: each ``cell`` x ``cell`` cell of the ``side`` x
    ``side`` input is one candidate box, scored sigmoid(20 (R - G/2 - B/2 - 0.35)) from its mean
    colour, as a YOLOv8 head ``[1, 5, cells]`` (label "person")."""
    cells = (side // cell) ** 2
    kernel = np.zeros((1, 3, cell, cell), np.float32)
    kernel[0, 0], kernel[0, 1], kernel[0, 2] = 20 / cell**2, -10 / cell**2, -10 / cell**2
    ys, xs = np.mgrid[0 : side // cell, 0 : side // cell]
    boxes = np.stack(
        [xs.ravel() * cell + cell / 2, ys.ravel() * cell + cell / 2]
        + [np.full(cells, cell, np.float64)] * 2
    ).astype(np.float32)[np.newaxis]
    nodes = [
        helper.make_node("Conv", ["image", "k", "b"], ["logit"], strides=[cell, cell]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
        helper.make_node("Reshape", ["score", "shape"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["head"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(kernel, "k"),
        numpy_helper.from_array(np.array([-7.0], np.float32), "b"),
        numpy_helper.from_array(np.array([1, 1, cells], np.int64), "shape"),
        numpy_helper.from_array(boxes, "boxes"),
    ]
    model = make_model(
        nodes,
        [tensor("image", np.float32, [1, 3, side, side])],
        [tensor("head", np.float32, [1, 5, cells])],
        inits,
    )
    write(root / "grid", model, DETECTOR_TOML)
    compile_model(ModelDir(root / "grid"))


def room(width: int = WIDTH, height: int = HEIGHT, seed: int = 7) -> np.ndarray:
    """A static scene: a grey-blue gradient, some furniture, a little sensor noise."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, height)[:, None, None]
    base = np.concatenate([80 + 40 * ys, 90 + 40 * ys, 110 + 30 * ys], axis=2)
    frame = np.broadcast_to(base, (height, width, 3)).copy()
    for _ in range(5):
        x, y = rng.integers(0, width * 3 // 4), rng.integers(height // 3, height * 3 // 4)
        w, h = rng.integers(width // 10, width // 4), rng.integers(height // 10, height // 4)
        frame[y : y + h, x : x + w] = rng.integers(40, 160, 3) * [0.6, 0.9, 1.0]
    frame += rng.normal(0, 3, frame.shape)
    return np.asarray(frame.clip(0, 255), np.uint8)


def scene(figure: bool = True, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    """The clip's frames: with ``figure``, one walks in, stands a second and walks out."""
    still = room(width, height)
    if not figure:
        return [still] * (STATIC_FRAMES + ENTER + STAY + LEAVE + AFTER)
    # As wide as two of the detector's cells: wherever it stands, one cell is all figure.
    fw, fh = width // 4, height // 2
    stand = width // 2 - fw // 2
    xs = [
        *[None] * STATIC_FRAMES,
        *np.linspace(-fw, stand, ENTER + 1)[1:],
        *[stand] * STAY,
        *np.linspace(stand, width, LEAVE + 1)[1:],
        *[None] * AFTER,
    ]
    frames = []
    for x in xs:
        frame = still.copy()
        if x is not None:
            left = int(x)
            top = height // 3
            frame[top : top + fh, max(0, left) : max(0, left + fw)] = FIGURE
        frames.append(frame)
    return frames


def write_frames(directory: Path, frames: list[np.ndarray]) -> str:
    """The frames as ``directory/NNNN.rgb``; the server's ``raw:`` spec for them."""
    directory.mkdir(parents=True, exist_ok=True)
    for n, frame in enumerate(frames):
        frame.tofile(directory / f"{n:04d}.rgb")
    height, width = frames[0].shape[:2]
    return f"raw:{directory}:{width}x{height}@{FPS}"


class RtspServer:
    """The GStreamer RTSP server in a subprocess, serving ``mounts`` (name -> spec)."""

    def __init__(self, mounts: dict[str, str], port: int = 0) -> None:
        self.mounts, self.port = mounts, port
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start it and wait for its ``ready <port>`` line."""
        specs = [f"{mount}={spec}" for mount, spec in self.mounts.items()]
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), *specs],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                lines.append(line)
                if line.startswith("ready "):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            raise RuntimeError(f"the RTSP server did not start: {''.join(lines)[-2000:]}")
        ready_line = next(line for line in lines if line.startswith("ready "))
        self.port = int(ready_line.split()[1])
        return self

    def url(self, mount: str, credentials: str = "") -> str:
        return f"rtsp://{credentials}127.0.0.1:{self.port}/{mount}"

    def kill(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
