"""The workloads measured, their requests, and the temporary model repository the servers load."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = [
    "REPO",
    "WORKLOADS",
    "Workload",
    "available",
    "daemon_config",
    "default_config",
    "inference_ms",
    "prepare_repository",
]

REPO = Path(__file__).resolve().parents[2]
ENGINES = REPO / "engines"
# The CNN is a bench workload, not an example the demo serves: it lives beside the harness.
MODEL_DIRS = {"cnn": Path(__file__).resolve().parent / "cnn"}
SCRIPTS = REPO / "scripts"
# The model files a server needs; build/ is left behind and rebuilt in the temporary repository.
_MODEL_FILES = ("model.onnx", "model.toml", "samples")
# Scripts that write a model.onnx that is not committed; silero_vad (idle RSS only) comes from
# scripts/fetch-models, which downloads, so the bench only uses it when it is already there.
_MAKERS = {"occupancy": "make-sensor-model", "cnn": "make-cnn-model"}


@dataclass(frozen=True)
class Workload:
    """One model under load and the one request every server gets for it.

    A JSON request is ``json_head + id + json_tail``; a binary request is ``npy`` (``body``, or
    ``feed`` as ``.npy`` bytes) with the id in the MQTT 5 user property ``id`` (what edgert reads
    for binary payloads) and ``user``'s properties after it. ``feed`` is the model's input
    tensor, for timing ONNX Runtime alone.
    """

    key: str
    model: str
    title: str
    content_type: str
    feed: np.ndarray
    json_head: bytes = b""
    json_tail: bytes = b""
    body: bytes = b""  # a binary request that is not the feed's .npy: a camera's JPEG
    user: tuple[tuple[str, str], ...] = ()

    @property
    def is_json(self) -> bool:
        return self.content_type == "application/json"

    @property
    def npy(self) -> bytes:
        if self.body:
            return self.body
        buffer = io.BytesIO()
        np.save(buffer, self.feed, allow_pickle=False)
        return buffer.getvalue()

    def payload(self, request_id: str, reply_to: str = "") -> bytes:
        """The request with ``request_id``; a JSON one names ``reply_to`` (if given) too, for a
        server on MQTT 3.1.1, where there is no Response Topic."""
        if self.is_json:
            field = b'","reply_to":"' + reply_to.encode() if reply_to else b""
            return self.json_head + request_id.encode() + field + self.json_tail
        return self.npy


def _mlp() -> Workload:
    reading = [[22.5, 45.0, 480.0, 1150.0]]  # a lit, stuffy room
    tail = b'","inputs":' + str(reading).replace(" ", "").encode() + b"}"
    return Workload(
        key="mlp",
        model="occupancy",
        title="tiny sensor MLP (occupancy, JSON request)",
        content_type="application/json",
        feed=np.asarray(reading, np.float32),
        json_head=b'{"id":"',
        json_tail=tail,
    )


def _recipe() -> ModuleType:
    """scripts/make-cnn-model as a module (no .py suffix), for its seeded scenes."""
    loader = SourceFileLoader("make_cnn_model", str(SCRIPTS / "make-cnn-model"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _cnn() -> Workload:
    from PIL import Image

    recipe = _recipe()
    # A 640x480 camera frame whose scene gives the detector a few dozen boxes to post-process.
    frame = recipe.scene(np.random.default_rng(107), 480, 640)
    jpeg = io.BytesIO()
    Image.fromarray(frame).save(jpeg, format="JPEG", quality=90)
    size = recipe.SIZE
    return Workload(
        key="cnn",
        model="cnn",
        title=f"YOLO11n detector (cnn, {size}x{size}; a 640x480 JPEG in, boxes out)",
        content_type="image/jpeg",
        feed=np.random.default_rng(7).random((1, 3, size, size), dtype=np.float32),
        body=jpeg.getvalue(),
        # The boxes alone: the raw head (84 x 2100 floats) is no reply for a camera.
        user=(("compact", "true"),),
    )


WORKLOADS = {"mlp": _mlp(), "cnn": _cnn()}


def available(model: str) -> bool:
    """Whether ``model`` can be served: its model.onnx is there or a script here makes it."""
    return (_source(model) / "model.onnx").is_file() or model in _MAKERS


def _source(model: str) -> Path:
    return MODEL_DIRS.get(model, ENGINES / model)


def _to_make(source: Path, model: str) -> bool:
    """Whether ``model``'s model.onnx must be made: missing, or older than the script that makes
    it (a cached model from before the recipe changed would not match its model.toml)."""
    onnx = source / "model.onnx"
    if not onnx.is_file():
        return True
    maker = SCRIPTS / _MAKERS[model] if model in _MAKERS else None
    return maker is not None and maker.stat().st_mtime > onnx.stat().st_mtime


def prepare_repository(root: Path, models: list[str], log: Path) -> None:
    """Copy ``models`` from engines/ or MODEL_DIRS (making a missing model.onnx with its script)
    into ``root``
    and compile each there for ONNX Runtime, so the servers never compile while measured."""
    root.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        for model in models:
            source = _source(model)
            if _to_make(source, model):
                if model not in _MAKERS:
                    raise RuntimeError(f"{source}/model.onnx is missing; run scripts/fetch-models")
                subprocess.run(
                    [sys.executable, str(SCRIPTS / _MAKERS[model])]
                    + ([str(source)] if model in MODEL_DIRS else []),
                    check=True,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            target = root / model
            target.mkdir()
            for name in _MODEL_FILES:
                path = source / name
                if path.is_dir():
                    shutil.copytree(path, target / name)
                elif path.is_file():
                    shutil.copy2(path, target / name)
            command = [sys.executable, "-m", "edgert", "compile", str(target)]
            result = subprocess.run(
                [*command, "--backend", "onnxruntime"], stdout=out, stderr=subprocess.STDOUT
            )
            if result.returncode != 0:
                raise RuntimeError(f"edgert compile {model} failed; see {log}")


def daemon_config(
    path: Path,
    broker_url: str,
    node: str,
    repository: Path,
    models: list[str],
    stats_interval: float,
    events: bool,
) -> Path:
    """A config for ``edgert serve`` (see device/edgert.toml): the bench's broker, a node id of
    its own (so no broker session of an earlier daemon is resumed), ``models`` from
    ``repository``, on ONNX Runtime, stats every ``stats_interval`` s, the events topic on or
    off (``[serve] events``: every result also published to <prefix>/node/<node>/events/<model>
    at QoS 0). Everything else, batching included (model.toml's [batching]), is what the daemon
    and the model's own files say."""
    listed = ", ".join(f'"{m}"' for m in models)
    path.write_text(
        "[broker]\n"
        f'url = "{broker_url}"\n'
        "session_expiry = 0\n"
        "\n[node]\n"
        f'id = "{node}"\n'
        "\n[serve]\n"
        f'repository = "{repository}"\n'
        f"models = [{listed}]\n"
        'backend = "onnxruntime"\n'
        f"stats_interval = {stats_interval}\n"
        f"events = {'true' if events else 'false'}\n"
    )
    return path


def default_config(path: Path, broker_url: str, repository: Path) -> Path:
    """A config for ``edgert serve`` at its defaults: only the broker and the repository (its
    models, backend, events topic, session and the rest are the daemon's own defaults)."""
    path.write_text(f'[broker]\nurl = "{broker_url}"\n\n[serve]\nrepository = "{repository}"\n')
    return path


def inference_ms(model_path: Path, feed: np.ndarray, runs: int = 200) -> dict[str, float]:
    """Median ONNX Runtime time per call on ``feed`` alone, no MQTT: 1 intra-op thread and the
    default (one per core), as the plain loop and edgert both use."""
    import onnxruntime as ort

    timings = {}
    for label, threads in (("1_thread", 1), ("default_threads", 0)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(10):
            session.run(None, {name: feed})
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {name: feed})
            times.append(time.perf_counter() - start)
        timings[label] = round(float(np.median(times)) * 1000, 4)
    return timings
