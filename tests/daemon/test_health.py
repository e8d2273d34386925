"""Health end to end: the daemon's HTTP endpoints (``[http] listen``) scraped over real HTTP,
its ``/metrics`` read with prometheus-client's own parser, and systemd's notify socket played
by a datagram socket of the test's own."""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.broker import Mosquitto, free_port, wait_for_port
from tests.daemon.conftest import Daemon
from tests.daemon.test_broker_features import Observer
from tests.daemon.test_contract import _uncompiled
from tests.test_cli import edgert, one_line_error

READING = [[22.5, 45.0, 480.0, 1150.0]]


def get(port: int, path: str) -> tuple[int, str]:
    """The status and body of ``GET path`` (an error status is an answer too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scraped(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus-client: sample name and sorted labels -> value."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_ready_flips_to_200_when_the_last_model_is_built_and_metrics_count_the_replies(
    broker: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    watch = Observer(broker, "edgert/reply/#", "edgert/node/+/models")
    daemon = Daemon(
        broker, _uncompiled(tmp_path), tmp_path / "d", http_settings={"listen": f"127.0.0.1:{port}"}
    )
    daemon.start(wait=False)
    try:
        wait_for_port(port, 60)
        assert get(port, "/health/live")[0] == 200
        status, body = get(port, "/health/ready")
        assert status == 503, body  # occupancy is still building in its child process
        waiting = [(w["name"], w["state"]) for w in json.loads(body)["waiting"]]
        # The broker is listed too while the daemon is still connecting.
        assert ("occupancy", "loading") in waiting, waiting
        assert {name for name, _ in waiting} <= {"occupancy", "broker"}, waiting
        watch.wait(
            lambda: any(b'"ready"' in m.payload for m in watch.on("edgert/node/")), 90, "ready"
        )
        assert get(port, "/health/ready") == (200, '{"ready": true}')

        bodies = [{"id": f"ok{i}", "inputs": READING} for i in range(3)]
        bodies += [{"id": f"bad{i}", "inputs": [[1.0, 2.0, 3.0]]} for i in range(2)]
        for body_ in bodies:
            watch.send("edgert/infer/occupancy/dev", body_)
        watch.send("edgert/infer/nosuch/dev", {"id": "none", "inputs": READING})
        replies = watch.wait(
            lambda: len(r := watch.on("edgert/reply/")) >= 6 and r, 30, "6 replies"
        )
        received: Counter[tuple[str, str | None]] = Counter()
        for reply in replies:
            model, doc = reply.topic.rsplit("/", 1)[1], reply.json()
            # A name the repository does not have is counted unlabelled (see edgert.daemon.counts).
            received[(model if model == "occupancy" else "", doc.get("error", {}).get("code"))] += 1
        assert received == {
            ("occupancy", None): 3,
            ("occupancy", "bad_input"): 2,
            ("", "no_model"): 1,
        }

        metrics = scraped(port)
        counted: Counter[tuple[str, str | None]] = Counter()
        for (name, labels), value in metrics.items():
            tags = dict(labels)
            if name == "edgert_inference_request_success_total":
                counted[(tags["model"], None)] += int(value)
            elif name == "edgert_inference_request_failure_total":
                counted[(tags["model"], tags["reason"])] += int(value)
        assert counted == received
        served = (("model", "occupancy"), ("version", "1"))
        assert metrics[("edgert_inference_count_total", served)] == 3
        assert 1 <= metrics[("edgert_inference_exec_count_total", served)] <= 3
        compute = metrics[("edgert_inference_compute_infer_duration_us_total", served)]
        queue = metrics[("edgert_inference_queue_duration_us_total", served)]
        assert compute > 0 and queue >= 0
        total = metrics[("edgert_inference_request_duration_us_total", served)]
        assert abs(total - (queue + compute)) <= 1  # each rounded to a microsecond
        assert metrics[("edgert_inference_pending_request_count", served)] == 0
        assert metrics[("process_resident_memory_bytes", ())] > 1 << 20
        assert not any(name.startswith("edgert_gpu") for name, _ in metrics)  # no TensorRT here
    finally:
        watch.close()
        daemon.stop()


def test_an_http_address_in_use_stops_the_start_in_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = tmp_path / "edgert.toml"
        config.write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n')
        result = edgert(
            "serve", "--config", config, "--broker", "mqtt://127.0.0.1:9", "--repository", tmp_path
        )
    assert one_line_error(result) == (
        f'error: [http] listen = "127.0.0.1:{port}": cannot listen there: Address already in '
        "use: another process listens there; choose another port"
    )


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket; every datagram with when it came."""

    def __init__(self) -> None:
        # A short path: a Unix socket's address is limited to 107 bytes.
        self.path = Path(tempfile.mkdtemp(prefix="sd-")) / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._changed:
                self.got.append((time.monotonic(), fields))
                self._changed.notify_all()

    def wait_for(self, key: str, timeout: float) -> float:
        """When the first datagram setting ``key`` came."""
        with self._changed:
            assert self._changed.wait_for(
                lambda: any(key in fields for _, fields in self.got), timeout
            ), f"no {key} within {timeout} s: {self.got}"
            return next(at for at, fields in self.got if key in fields)

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()
        self.path.unlink()
        self.path.parent.rmdir()


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    sd = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", str(sd.path))  # the daemon subprocess inherits these
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sd
    sd.close()


def test_systemd_hears_ready_only_once_the_model_is_built_then_the_watchdog_every_half_second(
    broker: Mosquitto, tmp_path: Path, notify: NotifySocket
) -> None:
    daemon = Daemon(broker, _uncompiled(tmp_path), tmp_path / "d").start(wait=False)
    try:
        ready_at = notify.wait_for("READY", 90)
        time.sleep(3.2)  # the watchdog's feeds, three seconds of them
        assert daemon.terminate() == 0
        notify.wait_for("STOPPING", 10)
    finally:
        daemon.stop()
    statuses = [(at, f["STATUS"]) for at, f in notify.got if "STATUS" in f]
    assert statuses[0][1] == "serving 0 models; loading occupancy" and statuses[0][0] < ready_at
    assert [s for at, s in statuses if at <= ready_at][-1] == "serving 1 model"  # when READY
    assert [f["READY"] for _, f in notify.got if "READY" in f] == ["1"]  # told once
    feeds = [at for at, f in notify.got if f == {"WATCHDOG": "1"} and at > ready_at]
    assert len(feeds) >= 4, feeds
    gaps = [b - a for a, b in itertools.pairwise(feeds)]
    assert 0.3 <= statistics.median(gaps) <= 0.8, gaps  # half of WATCHDOG_USEC
