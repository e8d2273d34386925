"""Serving on ONNX Runtime while the TensorRT engine builds, end to end on the emulator.

A real mosquitto, the daemon as a subprocess, real clients sending without pause; the emulated
TensorRT builds slowly (``EMULATOR_STEP_DELAY``: a property of the emulator, edgert's code is
unchanged). The daemon builds the model's ONNX Runtime artifact first and serves it, then swaps
the engine in between two requests: no request fails or goes unanswered, and each reply names
the backend that answered. A build that fails parity leaves ONNX Runtime serving, the reason in
the catalogue.
"""

from __future__ import annotations

import itertools
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

from edgert import ModelDir, compile_model
from edgert.client import Client
from edgert.compile import CompileOptions
from tests.broker import Mosquitto
from tests.corpus import make_model, tensor, write
from tests.daemon.conftest import Daemon
from tests.daemon.test_health import NotifySocket
from tests.trt.emulation import REPO, emulate
from tests.trt.test_serve import NODE, Catalogue, Watcher, _backend, _entry, _manifests

READINGS = np.array([[22.5, 45, 480, 1150], [19.0, 60, 3, 420]], np.float32)


@dataclass
class Load:
    """Devices sending requests one after another, each on its own connection, until stopped:
    the backend of every reply, in order, and every failure."""

    url: str
    model: str
    inputs: dict[str, np.ndarray]
    devices: int = 3
    backends: list[list[str]] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.threads = [
            threading.Thread(target=self._device, args=(i,), daemon=True)
            for i in range(self.devices)
        ]
        self.backends = [[] for _ in self.threads]
        for thread in self.threads:
            thread.start()

    def _device(self, index: int) -> None:
        with Client(self.url, node=NODE, key=f"dev{index}") as client:
            while not self.stop.is_set():
                with self.lock:
                    self.sent += 1
                try:
                    reply = client.infer(self.model, self.inputs, timeout=10)
                except Exception as exc:  # any failure is what the test counts
                    with self.lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self.lock:
                    self.backends[index].append(reply.backend)
                    self.outputs.append(next(iter(reply.outputs.values())))
                self.stop.wait(0.01)

    def until(self, done: Callable[[list[str]], bool], timeout: float) -> None:
        """Keep sending until ``done(every reply's backend)``; then stop and join."""
        finished = threading.Event()

        def check() -> None:
            while not finished.wait(0.05):
                with self.lock:
                    seen = [b for device in self.backends for b in device]
                if done(seen):
                    finished.set()

        watcher = threading.Thread(target=check, daemon=True)
        watcher.start()
        finished.wait(timeout)
        finished.set()
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)
        assert done([b for device in self.backends for b in device]), self.backends


def _repository(tmp_path: Path, name: str = "occupancy") -> Path:
    repository = tmp_path / "engines"
    shutil.copytree(
        REPO / "engines" / name, repository / name, ignore=shutil.ignore_patterns("build")
    )
    return repository


def _building(seen: list[tuple[float, Catalogue]], name: str) -> list[tuple[float, Any]]:
    """(arrival, entry) of each catalogue in which ONNX Runtime serves ``name`` while its
    engine builds."""
    found = []
    for at, catalogue in seen:
        if _backend(catalogue, name) == "onnxruntime":
            entry = _entry(catalogue, name)
            if "building" in entry:
                found.append((at, entry))
    return found


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_onnxruntime_serves_during_the_build_then_tensorrt_with_no_request_lost(
    version: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulate(monkeypatch, version)
    monkeypatch.setenv("EMULATOR_STEP_DELAY", "0.6")  # 8 steps: about 5 s of engine build
    systemd = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))  # the daemon subprocess inherits it
    repository = _repository(tmp_path)
    broker = Mosquitto(tmp_path).start()
    watcher = Watcher(broker.port, NODE)
    daemon = Daemon(broker, repository, tmp_path / "daemon", node=NODE)
    load: Load | None = None
    try:
        daemon.start()
        watcher.catalogue(lambda c: _backend(c, "occupancy") == "onnxruntime", timeout=60)
        load = Load(broker.url, "occupancy", {"readings": READINGS})
        load.until(lambda b: b.count("tensorrt") >= 30, timeout=90)
        assert load.failures == [], load.failures[:5]
        # Every request sent was answered; each device saw ONNX Runtime, then TensorRT only.
        assert sum(map(len, load.backends)) == load.sent
        for backends in load.backends:
            first_trt = backends.index("tensorrt")
            assert first_trt > 0 and set(backends[:first_trt]) == {"onnxruntime"}, backends
            assert set(backends[first_trt:]) == {"tensorrt"}, backends
        for got in load.outputs:  # the same answer from either backend, within parity
            np.testing.assert_allclose(got, load.outputs[0], rtol=1e-5, atol=1e-6)

        during = _building(watcher.arrivals, "occupancy")
        first = during[0][1]
        assert first["building"]["backend"] == "tensorrt", first
        assert first["latency_ms"] > 0 and first["slow"] is False, first
        progress = [entry["building"]["progress"] for _, entry in during]
        assert progress == sorted(progress) and len(set(progress)) >= 2, progress
        if version.startswith("10"):  # the builder's monitor moves it inside the build phase
            assert [p for p in progress if 0.1 < p < 0.8], progress
        else:  # 8.6: no monitor, the compile's phases (build, then parity)
            assert not [p for p in progress if 0.1 < p < 0.8], progress
        times = [at for at, _ in during]
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]  # the first: the swap's own
        assert all(gap > 0.8 for gap in gaps), gaps  # at most once a second

        served = _entry(watcher.arrivals[-1][1], "occupancy")
        assert served["backend"] == "tensorrt" and "building" not in served, served
        assert sorted(m.key.backend for m in _manifests(repository / "occupancy")) == [
            "onnxruntime",
            "tensorrt",
        ]
        log = daemon.log.read_text()
        logged = [int(p) for p in re.findall(r"occupancy: building for tensorrt: (\d+)%", log)]
        assert logged == sorted(set(logged)) and logged[-1] == 100, logged
        assert "occupancy: served on onnxruntime while its engine builds" in log, log
        # systemd: ready once the interim serves (before the engine is built), the build's
        # progress in its status line, then only what is served.
        statuses = [(at, f["STATUS"]) for at, f in systemd.got if "STATUS" in f]
        built = [
            at
            for at, s in statuses
            if re.fullmatch(r"serving 1 model; tensorrt build of occupancy \d+%", s)
        ]
        assert len(built) >= 2, statuses
        assert systemd.wait_for("READY", timeout=1) < built[-1], systemd.got
        assert statuses[-1][1] == "serving 1 model", statuses
        assert daemon.terminate(timeout=20) == 0, log
    finally:
        if load is not None:
            load.stop.set()
        daemon.stop()
        watcher.close()
        broker.kill()
        systemd.close()


def test_a_daemon_stopped_during_the_build_serves_the_interim_and_builds_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only the interim artifact on disk (the daemon was stopped while the engine built): it
    serves from the first catalogue on, and the engine is built and swapped in."""
    emulate(monkeypatch, "10.3.0")
    repository = _repository(tmp_path)
    compile_model(ModelDir(repository / "occupancy"), CompileOptions(backend="onnxruntime"))
    broker = Mosquitto(tmp_path).start()
    watcher = Watcher(broker.port, NODE)
    daemon = Daemon(broker, repository, tmp_path / "daemon", node=NODE)
    try:
        daemon.start()
        seen = watcher.catalogue(lambda c: _backend(c, "occupancy") == "tensorrt", timeout=60)
        first = _entry(seen[0], "occupancy")
        assert first["state"] == "ready" and first["backend"] == "onnxruntime", first
        assert first["building"]["backend"] == "tensorrt", first
        assert first["latency_ms"] > 0 and first["slow"] is False, first
        with Client(broker.url, node=NODE) as client:
            assert client.infer("occupancy", {"readings": READINGS}).backend == "tensorrt"
        assert "occupancy: building its engine; the interim serves meanwhile" in (
            daemon.log.read_text()
        )
    finally:
        daemon.stop()
        watcher.close()
        broker.kill()


def test_a_stale_engine_beside_the_interim_is_rebuilt_only_with_rebuild_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An engine built for another GPU: without ``rebuild_stale`` the ONNX Runtime artifact
    serves and no build starts (the log says why); with it, the engine is rebuilt."""
    emulate(monkeypatch, "10.3.0")
    repository = _repository(tmp_path)
    model = ModelDir(repository / "occupancy")
    monkeypatch.setenv("EMULATOR_SM", "sm_86")
    compile_model(model, CompileOptions(backend="tensorrt"))
    monkeypatch.setenv("EMULATOR_SM", "sm_87")
    compile_model(model, CompileOptions(backend="onnxruntime"))
    broker = Mosquitto(tmp_path).start()
    try:
        for rebuild in (False, True):
            watcher = Watcher(broker.port, NODE)
            daemon = Daemon(
                broker, repository, tmp_path / f"daemon{rebuild}", node=NODE, rebuild_stale=rebuild
            )
            try:
                daemon.start()
                if rebuild:
                    watcher.catalogue(lambda c: _backend(c, "occupancy") == "tensorrt", 60)
                    engines = [
                        m.key.device for m in _manifests(model.path) if m.key.device[:3] == "sm_"
                    ]
                    assert sorted(engines) == ["sm_86", "sm_87"], engines
                    continue
                (first,) = watcher.catalogue(lambda c: True, timeout=10)
                entry = _entry(first, "occupancy")
                assert entry["backend"] == "onnxruntime" and "building" not in entry, entry
                # A build would be in the catalogue at once (as it starts): none comes.
                with pytest.raises(TimeoutError):
                    watcher.catalogue(lambda c: "building" in _entry(c, "occupancy"), 3)
                assert daemon.terminate(timeout=20) == 0
                log = daemon.log.read_text()
                assert "is stale (serve with --rebuild-stale" in log, log
                assert "building its engine" not in log and "building for" not in log, log
            finally:
                daemon.stop()
                watcher.close()
    finally:
        broker.kill()


def _overflowing_fp16(directory: Path) -> None:
    """A model FP16 cannot hold (x * 70000): its TensorRT FP16 engine fails parity."""
    x = tensor("x", np.float32, ["batch", 4])
    y = tensor("y", np.float32, ["batch", 4])
    scale = helper.make_tensor("scale", onnx.TensorProto.FLOAT, [4], [7.0e4] * 4)
    node = helper.make_node("Mul", ["x", "scale"], ["y"])
    toml = 'name = "big"\nprecision = "fp16"\n[dims]\nbatch = { min = 1, opt = 2, max = 4 }\n'
    write(directory, make_model([node], [x], [y], [scale]), toml)


def test_a_build_that_fails_parity_leaves_onnxruntime_serving_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulate(monkeypatch, "10.3.0")
    repository = tmp_path / "engines"
    _overflowing_fp16(repository / "big")
    broker = Mosquitto(tmp_path).start()
    watcher = Watcher(broker.port, NODE)
    # A budget no CPU meets: the interim is marked slow, and served all the same.
    daemon = Daemon(broker, repository, tmp_path / "daemon", node=NODE, interim_budget_ms=1e-4)
    try:
        daemon.start()
        seen = watcher.catalogue(lambda c: "build_failed" in _entry(c, "big"), timeout=60)
        entry = _entry(seen[-1], "big")
        assert entry["state"] == "ready" and entry["backend"] == "onnxruntime", entry
        assert entry["precision"] == "fp32" and entry["parity"]["passed"], entry
        failed = entry["build_failed"]
        assert failed["backend"] == "tensorrt" and "'y'" in failed["reason"], failed
        assert "parity" in failed["reason"].lower(), failed
        assert entry["slow"] is True and entry["latency_ms"] > 1e-4, entry
        assert "building" not in entry, entry
        with Client(broker.url, node=NODE) as client:
            x = np.array([[1, 2, 3, 0.5]], np.float32)
            reply = client.infer("big", {"x": x}, timeout=10)
        assert reply.backend == "onnxruntime"
        np.testing.assert_allclose(reply.outputs["y"], x * 7.0e4, rtol=1e-6)
        assert [m.key.backend for m in _manifests(repository / "big")] == ["onnxruntime"]
        log = daemon.log.read_text()
        assert "big: build failed:" in log and "over interim_budget_ms (0.0001)" in log, log
    finally:
        daemon.stop()
        watcher.close()
        broker.kill()


def test_interim_none_holds_requests_until_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``interim_backend = "none"``: loading (with the build's progress) until the engine, and
    no ONNX Runtime artifact is built."""
    emulate(monkeypatch, "10.3.0")
    monkeypatch.setenv("EMULATOR_STEP_DELAY", "0.3")
    repository = _repository(tmp_path)
    broker = Mosquitto(tmp_path).start()
    watcher = Watcher(broker.port, NODE)
    daemon = Daemon(broker, repository, tmp_path / "daemon", node=NODE, interim_backend="none")
    try:
        daemon.start()
        seen = watcher.catalogue(lambda c: _backend(c, "occupancy") == "tensorrt", timeout=60)
        before = [_entry(c, "occupancy") for c in seen[:-1]]
        assert {e["state"] for e in before} == {"loading"}, before
        assert any(e.get("building", {}).get("backend") == "tensorrt" for e in before), before
        with Client(broker.url, node=NODE) as client:
            reply = client.infer("occupancy", {"readings": READINGS}, timeout=10)
        assert reply.backend == "tensorrt"
        assert [m.key.backend for m in _manifests(repository / "occupancy")] == ["tensorrt"]
    finally:
        daemon.stop()
        watcher.close()
        broker.kill()
