"""Hot reload under load (SIGHUP swaps a recompiled model in) and per-device rate limits."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgert import ModelDir, compile_model
from edgert.client import Client, RemoteError
from edgert.daemon.limits import RateLimiter
from tests.broker import Mosquitto
from tests.daemon.conftest import REPO, Daemon

READING = np.array([[22.5, 45.0, 480.0, 1150.0]], np.float32)


class Catalogue:
    """The node's retained catalogue, as it changes."""

    def __init__(self, port: int, node: str = "testnode") -> None:
        self.latest: dict[str, Any] = {}
        self.changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"edgert/node/{node}/models", 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self.changed:
            self.latest = json.loads(msg.payload)
            self.changed.notify_all()

    def versions(self) -> dict[str, str]:
        return {m["name"]: m["version"] for m in self.latest.get("models", []) if "version" in m}

    def wait_for(self, model: str, version: str, timeout: float = 30) -> None:
        with self.changed:
            if not self.changed.wait_for(
                lambda: self.versions().get(model) == version, timeout=timeout
            ):
                raise TimeoutError(f"{model} {version} never served: {self.versions()}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


def set_version(model: Path, version: str) -> None:
    toml = model / "model.toml"
    text = re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', toml.read_text())
    toml.write_text(text)


def test_ten_reloads_under_load_fail_nothing_and_keep_memory(
    broker: Mosquitto, tmp_path: Path
) -> None:
    repository = tmp_path / "engines"
    model = repository / "occupancy"
    shutil.copytree(REPO / "engines" / "occupancy", model, ignore=shutil.ignore_patterns("build"))
    compile_model(ModelDir(model))
    daemon = Daemon(broker, repository, tmp_path / "daemon").start()
    catalogue = Catalogue(broker.port)
    assert daemon.process is not None
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    expected = None

    def load() -> None:
        with Client(broker.url) as client:
            while not stop.is_set():
                try:
                    reply = client.infer("occupancy", READING, timeout=10)
                except Exception as exc:  # counted: the assertion below shows them
                    outcomes[type(exc).__name__] += 1
                    continue
                outcomes["ok"] += 1
                versions[reply.version] += 1
                assert expected is not None
                np.testing.assert_allclose(reply.outputs["probabilities"], expected, rtol=1e-5)

    try:
        catalogue.wait_for("occupancy", "1")
        with Client(broker.url) as client:
            expected = client.infer("occupancy", READING).outputs["probabilities"]
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)  # warm: every code path has run, allocator pools are filled
        rss_start = rss_kib(daemon.process.pid)
        started = time.monotonic()
        for i in range(1, 11):
            set_version(model, f"1.{i}")
            compile_model(ModelDir(model))
            daemon.process.send_signal(signal.SIGHUP)
            catalogue.wait_for("occupancy", f"1.{i}")
        swaps = time.monotonic() - started
        time.sleep(1)
        rss_end = rss_kib(daemon.process.pid)
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
    finally:
        stop.set()
        catalogue.close()
        daemon.stop()
    growth = (rss_end - rss_start) / rss_start
    print(
        f"10 reloads in {swaps:.1f} s under load: {sum(outcomes.values())} requests, "
        f"{dict(outcomes)}; replies by version {dict(sorted(versions.items()))}; "
        f"RSS {rss_start / 1024:.1f} → {rss_end / 1024:.1f} MiB ({growth:+.1%})"
    )
    assert set(outcomes) == {"ok"}, outcomes
    assert versions["1.10"] > 0 and len(versions) >= 5  # the load saw the versions change
    assert abs(growth) <= 0.05
    log = daemon.log.read_text()
    assert log.count("swapped in") == 10 and "Traceback" not in log


def test_a_broken_new_build_keeps_the_old_version_serving(
    broker: Mosquitto, tmp_path: Path
) -> None:
    repository = tmp_path / "engines"
    model = repository / "occupancy"
    shutil.copytree(REPO / "engines" / "occupancy", model, ignore=shutil.ignore_patterns("build"))
    compile_model(ModelDir(model))
    daemon = Daemon(broker, repository, tmp_path / "daemon").start()
    try:
        assert daemon.process is not None
        set_version(model, "2")
        compile_model(ModelDir(model))  # replaces the artifact directory: a new manifest
        for artifact in (model / "build").glob("*/model.ort"):
            artifact.write_bytes(artifact.read_bytes()[:100])  # its sha256 no longer matches
        daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "kept version 1" not in daemon.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "kept version 1" in daemon.log.read_text()
        with Client(broker.url) as client:
            assert client.infer("occupancy", READING).version == "1"
    finally:
        daemon.stop()


def test_a_removed_model_stops_being_served_and_a_new_one_starts(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "engines"
    shutil.copytree(compiled_repository / "occupancy", repository / "occupancy")
    daemon = Daemon(broker, repository, tmp_path / "daemon").start()
    catalogue = Catalogue(broker.port)
    try:
        assert daemon.process is not None
        catalogue.wait_for("occupancy", "1")
        shutil.copytree(compiled_repository / "silero_vad", repository / "silero_vad")
        shutil.rmtree(repository / "occupancy")
        daemon.process.send_signal(signal.SIGHUP)
        catalogue.wait_for("silero_vad", "6.2.3")
        assert catalogue.versions() == {"silero_vad": "6.2.3"}
        # Pooled requests are left to other daemons (unsubscribed); pinned ones are refused.
        with Client(broker.url, node="testnode") as client, pytest.raises(RemoteError) as error:
            client.infer("occupancy", READING, timeout=5)
        assert error.value.code == "no_model"
    finally:
        catalogue.close()
        daemon.stop()


def test_rate_limiter_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=3, devices=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert limiter.take("a") == pytest.approx(0.5)  # one token comes every 0.5 s
    assert limiter.take("b") == 0.0  # another device's budget is its own
    now[0] = 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    now[0] = 100.0  # idle: refilled up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] > 0
    limiter.take("c")  # a third device evicts the least recently seen (b)
    assert len(limiter._buckets) == 2 and "b" not in limiter._buckets


def test_a_device_over_its_budget_is_rate_limited_and_others_are_served(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    daemon = Daemon(
        broker, compiled_repository, tmp_path, rate_limit=2, rate_burst=5, events=False
    ).start()
    try:
        with Client(broker.url, key="greedy") as greedy, Client(broker.url, key="calm") as calm:
            codes: Counter[str] = Counter()
            for _ in range(30):  # far faster than 2/s: the burst, then refusals
                try:
                    greedy.infer("occupancy", READING, timeout=5)
                    codes["ok"] += 1
                except RemoteError as exc:
                    codes[exc.code] += 1
                    assert "greedy" in exc.remote_message and "retry in" in exc.remote_message
            calm_replies = [calm.infer("occupancy", READING, timeout=5) for _ in range(4)]
    finally:
        daemon.stop()
    print(f"greedy device: {dict(codes)}; calm device: {len(calm_replies)} of 4 answered")
    assert set(codes) == {"ok", "rate_limited"}
    assert 5 <= codes["ok"] <= 8  # the burst of 5, plus what refilled at 2/s meanwhile
    assert len(calm_replies) == 4
