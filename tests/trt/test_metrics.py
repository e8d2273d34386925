"""``/metrics`` of a daemon serving from (emulated) TensorRT: the GPU's memory is reported, read
through the same CUDA layer the engines use (here the host-memory CUDA of ``tests/trt/site``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgert import ModelDir, compile_model
from edgert.client import Client
from edgert.compile import CompileOptions
from tests.broker import Mosquitto, free_port, wait_for_port
from tests.daemon.conftest import Daemon
from tests.daemon.test_health import scraped
from tests.trt.emulation import REPO, emulate, purge


def test_gpu_memory_is_in_the_metrics_where_a_model_runs_on_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulate(monkeypatch, "10.3.0")
    repository = tmp_path / "engines"
    shutil.copytree(
        REPO / "engines" / "occupancy",
        repository / "occupancy",
        ignore=shutil.ignore_patterns("build"),
    )
    compile_model(ModelDir(repository / "occupancy"), CompileOptions(backend="tensorrt"))
    broker = Mosquitto(tmp_path).start()
    port = free_port()
    daemon = Daemon(
        broker,
        repository,
        tmp_path / "daemon",
        backend="tensorrt",
        http_settings={"listen": f"127.0.0.1:{port}"},
    )
    try:
        daemon.start()
        wait_for_port(port, 30)
        with Client(broker.url, node=daemon.node) as client:
            readings = np.array([[22.5, 45.0, 480.0, 1150.0]], np.float32)
            client.infer("occupancy", {"readings": readings}, timeout=10)
        metrics = scraped(port)
        gpu = (("gpu", "0"),)
        total = metrics[("edgert_gpu_memory_total_bytes", gpu)]
        used = metrics[("edgert_gpu_memory_used_bytes", gpu)]
        assert 0 < used < total, (used, total)  # the engine's buffers at least
        served = (("model", "occupancy"), ("version", "1"))
        assert metrics[("edgert_inference_request_success_total", served)] == 1
    finally:
        daemon.stop()
        broker.kill()
        monkeypatch.undo()
        purge()
