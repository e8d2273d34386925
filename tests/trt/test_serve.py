"""`edgert serve` end to end on the emulated TensorRT of each version.

A real mosquitto, the daemon as a subprocess and real clients, with ``tests/trt/site`` first on
``PYTHONPATH`` (as in ``test_backend``), so the daemon, and the build child process it starts,
import the emulator. occupancy is compiled for TensorRT beforehand; silero_vad is not, and the
daemon compiles it in a child process (backend ``auto``) and serves it once built. Replies are
compared with ONNX Runtime running the source models directly.
"""

from __future__ import annotations

import json
import queue
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgert import ModelDir, compile_model
from edgert.client import Client
from edgert.compile import CompileOptions
from edgert.onnx import io_specs, load_source, with_io_dims
from edgert.repository import Manifest
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon, wait_retained
from tests.trt.emulation import REPO, emulate

NODE = "trtnode"
Catalogue = dict[str, Any]


class Watcher:
    """Every message on the node's retained catalogue and status topics, in order."""

    def __init__(self, port: int, node: str) -> None:
        self.models_topic = f"edgert/node/{node}/models"
        self.status_topic = f"edgert/node/{node}/status"
        self.catalogues: queue.Queue[Catalogue] = queue.Queue()
        self.arrivals: list[tuple[float, Catalogue]] = []  # (time.monotonic(), catalogue)
        self.statuses: queue.Queue[bytes] = queue.Queue()
        self.subscribed: queue.Queue[bool] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.put(True)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(self.models_topic, 1), (self.status_topic, 1)])
        self.client.loop_start()
        self.subscribed.get(timeout=5)  # subscribed before the daemon starts: it sees everything

    def _on_message(self, c: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        if message.topic == self.models_topic:
            catalogue = json.loads(message.payload)
            self.arrivals.append((time.monotonic(), catalogue))
            self.catalogues.put(catalogue)
        elif message.topic == self.status_topic:
            self.statuses.put(bytes(message.payload))

    def catalogue(self, until: Callable[[Catalogue], bool], timeout: float) -> list[Catalogue]:
        """The catalogues published until (and including) the first that satisfies ``until``."""
        seen: list[Catalogue] = []
        end = time.monotonic() + timeout
        while not seen or not until(seen[-1]):
            try:
                seen.append(self.catalogues.get(timeout=max(end - time.monotonic(), 0.01)))
            except queue.Empty:
                raise TimeoutError(f"catalogues seen in {timeout:g} s: {seen}") from None
        return seen

    def status(self, payload: bytes, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                if self.statuses.get(timeout=max(end - time.monotonic(), 0.01)) == payload:
                    return
            except queue.Empty:
                raise TimeoutError(f"{self.status_topic} never said {payload!r}") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _names(catalogue: Catalogue, state: str = "ready") -> list[str]:
    return sorted(m["name"] for m in catalogue["models"] if m["state"] == state)


def _entry(catalogue: Catalogue, name: str) -> dict[str, Any]:
    (entry,) = [m for m in catalogue["models"] if m["name"] == name]
    return dict(entry)


def _onnxruntime(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime on the source model, its IO dims as edgert reads them."""
    directory = ModelDir(model)
    source = load_source(directory.source_path)
    prepared = with_io_dims(source.model, io_specs(source, directory.config))
    session = ort.InferenceSession(prepared.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def _backend(catalogue: Catalogue, name: str) -> str | None:
    """The backend serving ``name`` in ``catalogue``; None while it is not ready."""
    found = [m for m in catalogue["models"] if m["name"] == name and m["state"] == "ready"]
    return str(found[0]["backend"]) if found else None


def _manifests(model: Path) -> list[Manifest]:
    build = model / "build"
    found = sorted(build.glob("*/manifest.json")) if build.is_dir() else []
    return [Manifest.from_dict(json.loads(p.read_text())) for p in found]


def test_serve_compiles_missing_engine_and_answers_like_onnxruntime(
    emulated: str, tmp_path: Path
) -> None:
    repository = tmp_path / "engines"
    for name in ("occupancy", "silero_vad"):
        shutil.copytree(
            REPO / "engines" / name, repository / name, ignore=shutil.ignore_patterns("build")
        )
    compile_model(ModelDir(repository / "occupancy"), CompileOptions(backend="tensorrt"))
    assert _manifests(repository / "silero_vad") == []

    broker = Mosquitto(tmp_path).start()
    watcher = Watcher(broker.port, NODE)
    daemon = Daemon(broker, repository, tmp_path / "daemon", node=NODE, backend="auto")
    try:
        daemon.start()
        # Served at start: occupancy alone, from its TensorRT engine.
        (first,) = watcher.catalogue(lambda c: True, timeout=10)
        assert first["node"] == NODE and _names(first) == ["occupancy"], first
        assert _names(first, "loading") == ["silero_vad"], first  # being built, not failed
        occupancy = _entry(first, "occupancy")
        assert occupancy["backend"] == "tensorrt" and occupancy["parity"]["passed"]
        assert [i["name"] for i in occupancy["inputs"]] == ["readings"]

        rng = np.random.default_rng(7)
        readings = (rng.standard_normal((5, 4)) * [5, 20, 300, 400] + [22, 45, 400, 800]).astype(
            np.float32
        )
        with Client(broker.url, node=NODE) as client:
            reply = client.infer("occupancy", {"readings": readings}, timeout=10)
            want = _onnxruntime(repository / "occupancy", {"readings": readings})
            got = reply.outputs["probabilities"]
            assert got.shape == (5, 2)
            np.testing.assert_allclose(got, want["probabilities"], rtol=1e-5, atol=1e-5)
            assert reply.model == "occupancy" and reply.version == "1"

            # silero_vad: compiled by the daemon in a child process, served on ONNX Runtime
            # while its engine builds, then on TensorRT.
            seen = watcher.catalogue(lambda c: _backend(c, "silero_vad") == "tensorrt", 30)
            assert _names(seen[-1]) == ["occupancy", "silero_vad"], seen
            assert _names(seen[-1], "failed") == [], seen[-1]
            interim = [_entry(c, "silero_vad") for c in seen if _backend(c, "silero_vad")]
            assert interim[0]["backend"] == "onnxruntime", interim
            assert interim[0]["building"]["backend"] == "tensorrt", interim
            vad = _entry(seen[-1], "silero_vad")
            assert vad["backend"] == "tensorrt" and vad["parity"]["passed"], vad
            assert "building" not in vad and "build_failed" not in vad, vad
            # The daemon fills in the constant sr and keeps the state and context per stream:
            # a device sends 512-sample chunks.
            specs = {i["name"]: i for i in vad["inputs"]}
            assert sorted(specs) == ["input"] and specs["input"]["shape"][-1] == 512, specs
            assert vad["stateful"] is True
            built = {m.key.backend: m.key for m in _manifests(repository / "silero_vad")}
            assert sorted(built) == ["onnxruntime", "tensorrt"], built  # the interim stays
            key = built["tensorrt"]
            assert (key.backend, key.backend_version, key.device) == ("tensorrt", emulated, "sm_87")
            log = daemon.log.read_text()
            assert "silero_vad" in log and "compiling it in a child process" in log, log

            chunks = rng.uniform(-1, 1, (2, 3, 512)).astype(np.float32)
            state, context = np.zeros((2, 3, 128), np.float32), np.zeros((3, 64), np.float32)
            for step, chunk in enumerate(chunks):  # two steps of one stream of batch 3
                reply = client.infer("silero_vad", {"input": chunk}, stream="s1", timeout=10)
                window = np.concatenate([context, chunk], axis=1)
                want = _onnxruntime(
                    repository / "silero_vad",
                    {"input": window, "state": state, "sr": np.array(16000, np.int64)},
                )
                assert reply.model == "silero_vad" and reply.version == "6.2.3"
                assert set(reply.outputs) == {"output"}, step  # stateN stays in the daemon
                np.testing.assert_allclose(reply.outputs["output"], want["output"], atol=1e-5)
                state, context = want["stateN"], window[:, -64:]

        # SIGTERM: exit code 0; offline is published live, and stays retained.
        assert daemon.terminate(timeout=20) == 0, daemon.log.read_text()
        watcher.status(b"offline", timeout=5)
        wait_retained(broker, watcher.status_topic, b"offline", timeout=5)
        assert "stopped" in daemon.log.read_text()
    finally:
        daemon.stop()
        broker.kill()
        watcher.close()
        broker.kill()


def _processes_with(*markers: str) -> list[int]:
    """Pids whose command line mentions every one of ``markers``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().decode(errors="replace")
                if all(marker in line for marker in markers):
                    found.append(int(entry.name))
            except OSError:
                continue  # exited meanwhile
    return found


def test_sigterm_during_a_build_ends_the_build_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A build still running when the daemon stops must not outlive it (holding the GPU,
    writing into build/ after the daemon is gone)."""
    emulate(monkeypatch, "10.3.0")
    monkeypatch.setenv("EMULATOR_BUILD_DELAY", "60")
    repository = tmp_path / "engines"
    shutil.copytree(
        REPO / "engines" / "occupancy",
        repository / "occupancy",
        ignore=shutil.ignore_patterns("build"),
    )
    broker = Mosquitto(tmp_path).start()
    daemon = Daemon(broker, repository, tmp_path / "daemon", node=NODE).start()
    try:
        end = time.monotonic() + 30
        # TensorRT's build process (its job file lies in the model's build dir), which starts
        # once the interim is built and served.
        while not _processes_with(str(repository), "trt_build"):
            assert time.monotonic() < end, "the engine's build process never started"
            time.sleep(0.1)
        assert daemon.terminate(timeout=20) == 0
        end = time.monotonic() + 10
        while _processes_with(str(repository)):
            assert time.monotonic() < end, f"left running: {_processes_with(str(repository))}"
            time.sleep(0.1)
        build = repository / "occupancy" / "build"  # the interim's artifact only: no engine,
        assert [p.name.split("-")[0] for p in build.iterdir()] == ["onnxruntime"]  # no leftovers
    finally:
        daemon.stop()
        broker.kill()
