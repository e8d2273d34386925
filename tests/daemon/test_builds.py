"""The daemon's build children without a broker: real compiles (ONNX Runtime) in a child
process, their progress relayed at most once an interval and logged at each tenth, failures
with their reason, a stop that ends a build, and the interim's rules and latency."""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from edgert.daemon.builds import Builds, BuildState, interim, main, measure_ms, target
from edgert.repository import Artifact, ModelDir
from edgert.runtime import open_model
from edgert.settings import DaemonConfig

REPO = Path(__file__).resolve().parents[2]


def _occupancy(tmp_path: Path) -> ModelDir:
    shutil.copytree(
        REPO / "engines" / "occupancy",
        tmp_path / "occupancy",
        ignore=shutil.ignore_patterns("build"),
    )
    return ModelDir(tmp_path / "occupancy")


class Recorder:
    """``on_progress``: when it was called, and the build's state then."""

    def __init__(self) -> None:
        self.builds: Builds | None = None
        self.calls: list[tuple[float, BuildState | None]] = []

    def __call__(self) -> None:
        assert self.builds is not None
        self.calls.append((time.monotonic(), self.builds.state("occupancy")))


def test_a_build_relays_its_progress_spaced_and_logs_each_tenth(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _occupancy(tmp_path)
    recorder = Recorder()
    builds = recorder.builds = Builds(threading.Event(), recorder, publish_every=0.3)
    with caplog.at_level(logging.INFO, "edgert.daemon"):
        assert builds.run("occupancy", model, "onnxruntime") == ""
    time.sleep(0.4)  # a progress line held back by the interval is published after it
    assert builds.state("occupancy") is None  # built: nothing to show
    built = [a.manifest.key.backend for a in model.artifacts() if isinstance(a, Artifact)]
    assert built == ["onnxruntime"]

    times = [at for at, _ in recorder.calls]
    assert len(times) >= 2
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(times)), times
    first = recorder.calls[0][1]
    assert first == BuildState("onnxruntime")  # published as the child starts
    shown = [state.fraction for _, state in recorder.calls if state is not None]
    assert shown == sorted(shown), shown

    logged = [
        int(found.group(1))
        for r in caplog.records
        if (found := re.match(r"occupancy: building for onnxruntime: (\d+)% ", r.getMessage()))
    ]
    assert logged == sorted(set(logged)) and logged[0] == 0 and logged[-1] == 100, logged


def test_a_failed_build_keeps_its_reason(tmp_path: Path) -> None:
    model = _occupancy(tmp_path)
    source = model.source_path.read_bytes()
    model.source_path.write_bytes(source[: len(source) // 3])
    builds = Builds(threading.Event(), lambda: None)
    reason = builds.run("occupancy", model, "onnxruntime")
    assert "truncated" in reason, reason
    state = builds.state("occupancy")
    assert state is not None and state.failed == reason
    assert state.to_dict() == {"backend": "onnxruntime", "reason": reason}
    builds.forget("occupancy")
    assert builds.state("occupancy") is None


def test_a_build_started_while_stopping_is_ended_and_leaves_nothing(tmp_path: Path) -> None:
    model = _occupancy(tmp_path)
    stopping = threading.Event()
    stopping.set()
    reason = Builds(stopping, lambda: None).run("occupancy", model, "onnxruntime")
    assert "the build process" in reason, reason
    assert not model.build_dir.exists() or list(model.build_dir.iterdir()) == []


def test_progress_to_the_catalogue_and_its_rounding() -> None:
    running = BuildState("tensorrt", 0.41666, "Building engine")
    assert running.to_dict() == {
        "backend": "tensorrt",
        "progress": 0.42,
        "stage": "Building engine",
    }


def test_the_interim_serves_only_while_a_tensorrt_engine_builds() -> None:
    assert interim(DaemonConfig(backend="tensorrt")) == "onnxruntime"
    assert interim(DaemonConfig(backend="tensorrt", interim_backend="none")) is None
    assert interim(DaemonConfig(backend="onnxruntime")) is None
    assert target("onnxruntime") == "onnxruntime"
    assert target("auto") == "onnxruntime"  # no TensorRT on this machine
    assert interim(DaemonConfig()) is None  # auto builds for ONNX Runtime here


def test_measure_ms_times_one_sample_request(tmp_path: Path) -> None:
    model = _occupancy(tmp_path)
    assert Builds(threading.Event(), lambda: None).run("occupancy", model, "onnxruntime") == ""
    loaded = open_model(ModelDir(model.path), "onnxruntime")
    try:
        measured = measure_ms(loaded)
    finally:
        loaded.close()
    assert measured is not None and 0 < measured < 1000


def test_the_child_refuses_a_wrong_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: python -m edgert.daemon.builds" in capsys.readouterr().err


def test_a_burst_of_progress_is_published_spaced_and_its_last_state_shown() -> None:
    """Progress lines faster than the interval: on_progress no closer than the interval (also
    when a line comes just as a held-back publish is due), and the last state published."""
    times: list[float] = []
    builds = Builds(threading.Event(), lambda: times.append(time.monotonic()), publish_every=0.05)
    end = time.monotonic() + 1.0
    count = 0
    while time.monotonic() < end:
        builds.starting(f"m{count % 3}", "onnxruntime")
        count += 1
        time.sleep(0.001)
    time.sleep(0.1)
    assert 10 <= len(times) <= 22, len(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.049, sorted(gaps)[:3]
    assert times[-1] >= end  # what came last was published after the burst
