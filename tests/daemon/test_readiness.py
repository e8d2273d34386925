"""Readiness and what systemd is told, without a broker: the verdict from model states, READY=1
once, and the watchdog fed from an event loop (and not while that loop is blocked)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from edgert.daemon.readiness import Readiness, Watchdog, status_line, verdict
from edgert.transport import EventLoopThread
from tests.daemon.test_health import NotifySocket

LOADING = {"name": "person", "state": "loading"}
READY = {"name": "occupancy", "state": "ready", "version": "1"}
FAILED = {"name": "vad", "state": "failed", "reason": "build failed: out of memory"}


def test_ready_needs_the_broker_and_every_model_ready() -> None:
    assert verdict(True, [READY]).ready
    found = verdict(True, [READY, LOADING, FAILED])
    assert not found.ready and not found.settled
    assert found.waiting == (
        {"name": "person", "state": "loading", "reason": "building or loading"},
        {"name": "vad", "state": "failed", "reason": "build failed: out of memory"},
    )
    failed = verdict(True, [READY, FAILED])
    assert not failed.ready and failed.settled  # a failed model will not get ready by waiting
    offline = verdict(False, [READY])
    assert not offline.ready and not offline.settled
    assert offline.waiting[0]["name"] == "broker"


def test_the_status_line_says_what_is_served_and_what_is_not() -> None:
    assert status_line([READY, LOADING, FAILED]) == (
        "serving 1 model; loading person; failed vad (build failed: out of memory)"
    )
    assert status_line([READY, {**READY, "name": "b"}]) == "serving 2 models"


def test_a_build_in_progress_shows_in_the_status_line_and_the_readiness_reason() -> None:
    building = {"backend": "tensorrt", "progress": 0.42, "stage": "build"}
    interim = {**READY, "name": "person", "building": building}  # served on ONNX Runtime
    assert status_line([READY, interim]) == "serving 2 models; tensorrt build of person 42%"
    first = {**LOADING, "building": {"backend": "onnxruntime", "progress": 0.0, "stage": "parse"}}
    assert status_line([READY, first]) == "serving 1 model; onnxruntime build of person 0%"
    assert verdict(True, [READY, interim]).ready  # the interim answers meanwhile
    waiting = verdict(True, [first]).waiting
    assert waiting == (
        {"name": "person", "state": "loading", "reason": "onnxruntime build 0% (parse)"},
    )


def test_systemd_is_told_ready_once_when_connected_with_every_model_settled() -> None:
    told: list[str] = []
    states: list[dict[str, Any]] = [READY, LOADING]
    connected = threading.Event()
    readiness = Readiness(lambda: states, connected, told.append)
    readiness.changed()
    connected.set()
    readiness.changed()  # connected, but person is loading
    assert told == ["STATUS=serving 1 model; loading person"]
    states[1] = {"name": "person", "state": "ready"}
    readiness.changed()
    readiness.changed()  # nothing new: nothing said
    connected.clear()
    readiness.changed()  # a reconnect is no new start
    assert told[1:] == ["STATUS=serving 2 models\nREADY=1"]
    assert not readiness.check().ready  # /health/ready: disconnected now


def test_the_watchdog_is_the_one_systemd_asked_this_process_for() -> None:
    mine = str(os.getpid())
    watchdog = Watchdog.from_environment({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": mine})
    assert watchdog is not None and watchdog.interval_s == 20.0
    assert Watchdog.from_environment({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert Watchdog.from_environment({}) is None
    assert Watchdog.from_environment({"WATCHDOG_USEC": "soon"}) is None


@pytest.fixture
def loop() -> Iterator[EventLoopThread]:
    thread = EventLoopThread("test")
    thread.start()
    yield thread
    thread.stop()


def test_a_blocked_loop_stops_the_watchdog_and_it_resumes_after(
    loop: EventLoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", str(sd.path))
    try:
        loop.spawn(Watchdog(0.2).run())  # fed every 0.1 s, through the real notify socket
        sd.wait_for("WATCHDOG", 5)
        time.sleep(0.5)
        began: list[float] = []

        def block() -> None:  # the loop's own thread sleeps: it runs nothing else meanwhile
            began.append(time.monotonic())
            time.sleep(1.0)

        loop.call(block)
        time.sleep(1.6)
    finally:
        sd.close()
    (blocked,) = began
    feeds = [at for at, fields in sd.got if fields == {"WATCHDOG": "1"}]
    during = [at for at in feeds if blocked + 0.01 < at < blocked + 0.95]
    assert during == []
    assert len([at for at in feeds if at < blocked]) >= 3  # fed before the block
    assert len([at for at in feeds if at > blocked + 1.0]) >= 2  # and again after it
