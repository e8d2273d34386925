"""Daemon features that need a broker set up for them, end to end: shared subscriptions across
two daemons, TLS with passwords, builds in child processes, raw byte payloads, and the broker's
Maximum Packet Size. A real mosquitto, `edgert serve` subprocesses, real clients."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as paho
import pytest
from onnx import helper, numpy_helper

from edgert import ModelDir, compile_model, open_model
from edgert.client import Client, RemoteError
from edgert.errors import EdgertError
from edgert.settings import BrokerConfig, parse_broker_url
from tests.broker import Mosquitto, TlsFiles
from tests.corpus import make_model, tensor, write
from tests.daemon.conftest import REPO, Daemon, wait_retained
from tests.daemon.tls import make_tls

READING = [[22.5, 45.0, 480.0, 1150.0]]
USER, PASSWORD = "edgert", "s3cret-pass"


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() on arrival
    topic: str
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


class Observer:
    """A real MQTT 5 client that records everything on ``topics``, and publishes requests."""

    def __init__(self, broker: Mosquitto, *topics: str) -> None:
        self.messages: list[Seen] = []
        self._changed = threading.Condition()
        self.client = broker.client()
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe([(t, 1) for t in topics])
        self.client.loop_start()
        assert subscribed.wait(5), "no SUBACK"

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(Seen(time.monotonic(), msg.topic, bytes(msg.payload)))
            self._changed.notify_all()

    def send(self, topic: str, body: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def on(self, prefix: str) -> list[Seen]:
        with self._changed:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """The first true value of ``predicate()``, re-checked on every message."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self._changed.wait(min(left, 0.1))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def direct(repository: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    loaded = open_model(ModelDir(repository / model))
    try:
        return loaded.infer(feeds)
    finally:
        loaded.close()


def latest_stats(observer: Observer, node: str, since: float = 0.0) -> dict[str, Any] | None:
    seen = [m for m in observer.on(f"edgert/node/{node}/stats") if m.at > since]
    return dict(seen[-1].json()) if seen else None


def requests_seen(observer: Observer, node: str, since: float = 0.0) -> int | None:
    stats = latest_stats(observer, node, since)
    return None if stats is None else int(stats["models"]["occupancy"]["requests"])


# ------------------------------------------------------------------ shared subscriptions


def test_shared_subscription_splits_pooled_requests_and_pinned_stay_on_their_node(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    nodes = ("alpha", "beta")
    daemons = [
        Daemon(
            broker,
            compiled_repository,
            tmp_path / node,
            node=node,
            node_settings={"share_group": "pool"},
        )
        for node in nodes
    ]
    watch = Observer(broker, "edgert/reply/#", "edgert/node/+/stats")
    try:
        for daemon in daemons:
            daemon.start()
        sent = {f"p{i}" for i in range(40)}
        for request_id in sorted(sent):
            watch.send("edgert/infer/occupancy/pool", {"id": request_id, "inputs": READING})
        watch.wait(lambda: len(watch.on("edgert/reply/pool/")) >= 40, 15, "40 pooled replies")
        time.sleep(1.0)  # a request answered twice would show up by now
        replies = [m.json() for m in watch.on("edgert/reply/pool/")]
        assert sorted(r["id"] for r in replies) == sorted(sent)  # each exactly once
        assert all(r["ok"] for r in replies)

        # The reply does not say which node answered; each daemon's stats do.
        split = watch.wait(
            lambda: (
                (a := requests_seen(watch, "alpha")) is not None
                and (b := requests_seen(watch, "beta")) is not None
                and a + b == 40
                and (a, b)
            ),
            5,
            "stats of both nodes adding up to 40",
        )
        print(f"pooled requests answered: alpha {split[0]}, beta {split[1]}")
        assert split[0] > 0 and split[1] > 0

        # Pinned to alpha: alpha answers all, beta none.
        for i in range(10):
            watch.send("edgert/node/alpha/infer/occupancy/pin", {"id": f"n{i}", "inputs": READING})
        watch.wait(lambda: len(watch.on("edgert/reply/pin/")) >= 10, 10, "10 pinned replies")
        after = time.monotonic()
        watch.wait(
            lambda: (
                requests_seen(watch, "alpha", after) == split[0] + 10
                and requests_seen(watch, "beta", after) is not None
            ),
            5,
            "stats after the pinned requests",
        )
        assert requests_seen(watch, "beta", after) == split[1]
        assert sorted(m.json()["id"] for m in watch.on("edgert/reply/pin/")) == sorted(
            f"n{i}" for i in range(10)
        )
    finally:
        watch.close()
        for daemon in daemons:
            daemon.stop()


# ----------------------------------------------------------------- TLS and passwords


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, TlsFiles]]:
    tls = make_tls(tmp_path / "tls")
    server = Mosquitto(tmp_path, tls=tls, users={USER: PASSWORD}).start()
    yield server, tls
    server.kill()


def tls_client(broker: Mosquitto, tls: TlsFiles, **kwargs: Any) -> Client:
    url = f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{broker.port}"
    return Client(parse_broker_url(url, BrokerConfig(ca_file=str(tls.ca))), **kwargs)


def test_tls_daemon_with_credentials_in_the_url(
    tls_broker: tuple[Mosquitto, TlsFiles], compiled_repository: Path, tmp_path: Path
) -> None:
    broker, tls = tls_broker
    daemon = Daemon(
        broker,
        compiled_repository,
        tmp_path / "daemon",
        node="tlsurl",
        broker_url=f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{broker.port}",
        broker_settings={"ca_file": str(tls.ca)},
    ).start()
    try:
        readings = np.array(READING * 2, np.float32)
        with tls_client(broker, tls, node="tlsurl") as client:
            reply = client.infer("occupancy", {"readings": readings}, timeout=10)
        want = direct(compiled_repository, "occupancy", {"readings": readings})
        np.testing.assert_allclose(reply.outputs["probabilities"], want["probabilities"], rtol=1e-6)
        assert daemon.terminate() == 0
    finally:
        daemon.stop()


def test_tls_daemon_with_password_file_and_ca_beside_its_config(
    tls_broker: tuple[Mosquitto, TlsFiles], compiled_repository: Path, tmp_path: Path
) -> None:
    broker, tls = tls_broker
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "password").write_text(PASSWORD + "\n")
    shutil.copy(tls.ca, config_dir / "ca.crt")
    # Relative paths are relative to the config file, not to the daemon's working directory.
    daemon = Daemon(
        broker,
        compiled_repository,
        config_dir,
        node="tlsfile",
        broker_url=broker.url,  # mqtts://127.0.0.1:<port>, no credentials
        broker_settings={"username": USER, "password_file": "password", "ca_file": "ca.crt"},
    ).start()
    try:
        readings = np.array(READING, np.float32)
        with tls_client(broker, tls, node="tlsfile") as client:
            reply = client.infer("occupancy", readings, timeout=10)
        want = direct(compiled_repository, "occupancy", {"readings": readings})
        np.testing.assert_allclose(reply.outputs["probabilities"], want["probabilities"], rtol=1e-6)
    finally:
        daemon.stop()


def test_wrong_password_daemon_says_not_authorised_and_never_reports_online(
    tls_broker: tuple[Mosquitto, TlsFiles], compiled_repository: Path, tmp_path: Path
) -> None:
    # The daemon retries the broker with a capped backoff (the broker may be down at boot, or
    # its password file fixed and reloaded), so a refusal is a clear log line, not an exit.
    broker, tls = tls_broker
    daemon = Daemon(
        broker,
        compiled_repository,
        tmp_path / "daemon",
        node="wrongpw",
        broker_url=f"mqtts://{USER}:wrong@127.0.0.1:{broker.port}",
        broker_settings={"ca_file": str(tls.ca)},
    ).start(wait=False)
    try:
        end = time.monotonic() + 15
        while "Not authorized" not in daemon.log.read_text() and time.monotonic() < end:
            time.sleep(0.1)
        with pytest.raises(TimeoutError):
            wait_retained(broker, "edgert/node/wrongpw/status", b"online", timeout=1.5)
        assert daemon.process is not None and daemon.process.poll() is None
        log = daemon.log.read_text()
        refusals = [line for line in log.splitlines() if "Not authorized" in line]
        assert refusals, log
        assert f"the broker at 127.0.0.1:{broker.port} refused the connection" in refusals[0]
        assert "Traceback" not in log
        # Nothing else is logged as a problem: no misleading "Protocol error" disconnects.
        problems = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
        assert problems == refusals, log
        assert daemon.terminate(timeout=15) == 0
    finally:
        daemon.stop()


def test_unreadable_ca_file_is_one_clear_line_and_exit_1(
    tls_broker: tuple[Mosquitto, TlsFiles], compiled_repository: Path, tmp_path: Path
) -> None:
    broker, _ = tls_broker
    daemon = Daemon(
        broker,
        compiled_repository,
        tmp_path / "daemon",
        node="noca",
        broker_url=f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{broker.port}",
        broker_settings={"ca_file": "missing-ca.crt"},
    ).start(wait=False)
    try:
        assert daemon.process is not None and daemon.process.wait(timeout=20) == 1
        lines = daemon.log.read_text().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: broker TLS files (ca_file ")
        assert str(tmp_path / "daemon" / "missing-ca.crt") in lines[0]  # beside the config
    finally:
        daemon.stop()


def test_anonymous_plain_and_untrusted_clients_are_refused(
    tls_broker: tuple[Mosquitto, TlsFiles], tmp_path: Path
) -> None:
    broker, tls = tls_broker
    port = broker.port
    other = make_tls(tmp_path / "other", name="other-ca")
    attempts = {
        "plain": parse_broker_url(f"mqtt://127.0.0.1:{port}"),
        "anonymous": parse_broker_url(
            f"mqtts://127.0.0.1:{port}", BrokerConfig(ca_file=str(tls.ca))
        ),
        "wrong CA": parse_broker_url(
            f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{port}", BrokerConfig(ca_file=str(other.ca))
        ),
    }
    messages = {}
    for name, config in attempts.items():
        with pytest.raises(EdgertError) as caught:
            Client(config, connect_timeout=2)
        messages[name] = caught.value.message
    assert "closed the connection before accepting it" in messages["plain"]
    assert "refused the connection: Not authorized" in messages["anonymous"]
    assert "CERTIFICATE_VERIFY_FAILED" in messages["wrong CA"]
    plain = subprocess.run(
        ["mosquitto_pub", "-p", str(port), "-t", "x", "-m", "y"], capture_output=True, timeout=10
    )
    assert plain.returncode != 0


# ------------------------------------------------------------- builds in a child process


def copy_model(source: Path, target: Path, name: str) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("build"))
    toml = target / "model.toml"
    toml.write_text(toml.read_text().replace('name = "occupancy"', f'name = "{name}"'))


def catalogue_names(seen: Seen, state: str = "ready") -> set[str]:
    return {m["name"] for m in seen.json()["models"] if m["state"] == state}


def test_uncompiled_models_build_in_a_child_while_the_compiled_one_serves(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "engines"
    shutil.copytree(compiled_repository / "occupancy", repository / "occupancy")
    copy_model(REPO / "engines" / "occupancy", repository / "occupancy_b", "occupancy_b")
    # Builds fail in the child: a sample that does not fit the model fails the parity step.
    copy_model(REPO / "engines" / "occupancy", repository / "badsample", "badsample")
    shutil.rmtree(repository / "badsample" / "samples")
    (repository / "badsample" / "samples").mkdir()
    (repository / "badsample" / "samples" / "short.json").write_text(
        json.dumps({"readings": [[1.0, 2.0, 3.0]]})
    )
    # Not even loadable: its build fails.
    (repository / "broken").mkdir()
    source = (compiled_repository / "occupancy" / "model.onnx").read_bytes()
    (repository / "broken" / "model.onnx").write_bytes(source[: len(source) // 3])

    watch = Observer(broker, "edgert/node/builder/models", "edgert/reply/#")
    daemon = Daemon(broker, repository, tmp_path / "daemon", node="builder")
    try:
        daemon.start()
        with Client(broker.url) as client:
            readings = np.array(READING, np.float32)
            first = client.infer("occupancy", readings, timeout=10)
            served_at = time.monotonic()
            announced = watch.wait(lambda: watch.on("edgert/node/"), 5, "a catalogue")
            # Online, and announced with the compiled model ready and the others loading: the
            # builds run afterwards (and two of them fail, below).
            assert catalogue_names(announced[0]) == {"occupancy"}
            loading = {"occupancy_b", "badsample", "broken"}
            assert catalogue_names(announced[0], "loading") == loading
            with_b = watch.wait(
                lambda: [
                    m for m in watch.on("edgert/node/") if "occupancy_b" in catalogue_names(m)
                ],
                30,
                "occupancy_b in the catalogue",
            )
            assert served_at < with_b[0].at, "the compiled model was not served during the build"
            entry = next(m for m in with_b[0].json()["models"] if m["name"] == "occupancy_b")
            assert entry["parity"]["passed"] is True
            built = client.infer("occupancy_b", readings, timeout=10)
        np.testing.assert_allclose(
            built.outputs["probabilities"], first.outputs["probabilities"], rtol=1e-6
        )

        def reasons_logged() -> bool:  # whole lines: a long one may be mid-write
            log = daemon.log.read_text()
            return "does not fit the model" in log and "truncated" in log

        end = time.monotonic() + 20
        while not reasons_logged() and time.monotonic() < end:
            time.sleep(0.1)
        log = daemon.log.read_text()
        assert "badsample: not served: build failed" in log and "does not fit the model" in log, log
        assert "broken: not served" in log and "truncated" in log, log
        assert "Traceback" not in log

        # A device asking for them is told why they are not served.
        for name, why in (("badsample", "does not fit the model"), ("broken", "truncated")):
            watch.send(f"edgert/node/builder/infer/{name}/ask", {"id": name, "inputs": READING})
            asked = partial(watch.on, f"edgert/reply/ask/{name}")
            reply = watch.wait(asked, 5, f"the {name} reply")[0].json()
            assert reply["error"]["code"] == "no_model" and why in reply["error"]["message"]

        final = watch.on("edgert/node/")[-1]
        assert catalogue_names(final) == {"occupancy", "occupancy_b"}
        assert catalogue_names(final, "failed") == {"badsample", "broken"}
        assert daemon.process is not None and daemon.process.poll() is None
        assert daemon.terminate() == 0
    finally:
        watch.close()
        daemon.stop()


# ------------------------------------------------------------------------- raw payloads


def bytesum_model(repository: Path) -> None:
    """uint8[1, 16] bytes → float32[1] their sum; model.toml declares raw input."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["bytes"], ["wide"], to=1),  # FLOAT
        helper.make_node("ReduceSum", ["wide", "axes"], ["sum"], keepdims=0),
    ]
    model = make_model(
        nodes, [tensor("bytes", np.uint8, [1, 16])], [tensor("sum", np.float32, [1])], [axes]
    )
    write(repository / "bytesum", model, '[inputs.bytes]\nformat = "raw"\n')
    compile_model(ModelDir(repository / "bytesum"))


def test_raw_bytes_payload_for_a_model_that_declares_raw(broker: Mosquitto, tmp_path: Path) -> None:
    repository = tmp_path / "engines"
    bytesum_model(repository)
    watch = Observer(broker, "edgert/reply/#")
    daemon = Daemon(broker, repository, tmp_path / "daemon").start()
    try:
        payload = b"{" + bytes(range(200, 215))  # raw bytes may start like JSON
        watch.send("edgert/infer/bytesum/raw1", payload)
        reply = watch.wait(lambda: watch.on("edgert/reply/raw1/"), 10, "the raw reply")[0].json()
        assert reply["ok"] is True, reply
        assert reply["outputs"]["sum"] == [float(sum(payload))]

        watch.send("edgert/infer/bytesum/raw2", payload[:15])
        reply = watch.wait(lambda: watch.on("edgert/reply/raw2/"), 10, "the short reply")[0].json()
        assert reply["ok"] is False and reply["error"]["code"] == "bad_input", reply
        assert "16" in reply["error"]["message"] and "15" in reply["error"]["message"]
    finally:
        watch.close()
        daemon.stop()


# ---------------------------------------------------------------- maximum packet size


MAX_PACKET = 4096


def fanout_model(repository: Path) -> None:
    """float32[1, 1] → float32[1, 2048]: a tiny request whose reply is about 8 KiB of JSON."""
    repeats = numpy_helper.from_array(np.array([1, 2048], np.int64), "repeats")
    model = make_model(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        [tensor("x", np.float32, [1, 1])],
        [tensor("y", np.float32, [1, 2048])],
        [repeats],
    )
    write(repository / "fanout", model)
    compile_model(ModelDir(repository / "fanout"))


@pytest.fixture
def small_packet_daemon(tmp_path: Path) -> Iterator[Daemon]:
    repository = tmp_path / "engines"
    fanout_model(repository)
    server = Mosquitto(tmp_path, f"max_packet_size {MAX_PACKET}").start()
    daemon = Daemon(server, repository, tmp_path / "daemon").start()
    yield daemon
    daemon.stop()
    server.kill()


def test_reply_over_the_broker_packet_limit_is_replaced_and_serving_goes_on(
    small_packet_daemon: Daemon,
) -> None:
    # Sending it would make mosquitto disconnect the daemon, and paho would send it again after
    # every reconnect: the daemon would never serve again.
    broker = small_packet_daemon.broker
    watch = Observer(broker, "edgert/reply/#")
    try:
        watch.send("edgert/infer/fanout/big", {"id": "big", "inputs": [[1.5]]})
        watch.send("edgert/infer/fanout/small", {"id": "small", "inputs": [[1.5]], "compact": True})
        reply = watch.wait(lambda: watch.on("edgert/reply/small/"), 10, "the compact reply")
        assert reply[0].json()["ok"] is True
        big = watch.wait(lambda: watch.on("edgert/reply/big/"), 10, "the big one's answer")
        assert big[0].json()["error"]["code"] == "too_large"  # in place of the oversize reply
        time.sleep(0.5)
        with Client(broker.url) as client:
            assert client.infer("fanout", {"x": [[2.0]]}, compact=True, timeout=5).id
        log = small_packet_daemon.log.read_text()
        assert "disconnected" not in log and "connect #2" not in log, log
        assert "oversize packet" not in broker.log.read_text()
    finally:
        watch.close()


def test_reply_over_the_broker_packet_limit_answers_too_large(
    small_packet_daemon: Daemon,
) -> None:
    with Client(small_packet_daemon.broker.url) as client, pytest.raises(RemoteError) as caught:
        client.infer("fanout", {"x": [[1.5]]}, timeout=5)
    assert caught.value.code == "too_large"
    assert str(MAX_PACKET) in caught.value.remote_message


@pytest.mark.parametrize("rebuild", [False, True])
def test_stale_artifact_is_refused_unless_rebuild_stale(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path, rebuild: bool
) -> None:
    """model.onnx changed since the build: refused (with why, in the catalogue and in no_model
    replies), or with --rebuild-stale rebuilt in a child process and served."""
    repository = tmp_path / "engines"
    shutil.copytree(compiled_repository / "occupancy", repository / "occupancy")
    source = onnx.load(str(repository / "occupancy" / "model.onnx"))
    source.doc_string = "retrained"
    onnx.save(source, str(repository / "occupancy" / "model.onnx"))
    watch = Observer(broker, "edgert/node/stale/models", "edgert/reply/#")
    daemon = Daemon(broker, repository, tmp_path / "daemon", node="stale", rebuild_stale=rebuild)
    try:
        daemon.start()
        if rebuild:
            served = watch.wait(
                lambda: [m for m in watch.on("edgert/node/") if catalogue_names(m)],
                30,
                "the rebuilt model in the catalogue",
            )
            assert catalogue_names(served[0]) == {"occupancy"}
            with Client(broker.url) as client:
                reply = client.infer("occupancy", np.array(READING, np.float32), timeout=10)
            expected = direct(repository, "occupancy", {"readings": np.array(READING, np.float32)})
            np.testing.assert_allclose(
                reply.outputs["probabilities"], expected["probabilities"], rtol=1e-6
            )
        else:
            announced = watch.wait(lambda: watch.on("edgert/node/"), 5, "a catalogue")[0].json()
            (failed,) = announced["models"]
            assert failed["name"] == "occupancy" and failed["state"] == "failed"
            assert "stale" in failed["reason"]
            assert "--rebuild-stale" in failed["reason"] and "edgert compile" in failed["reason"]
            # Pinned: pooled topics are subscribed per served model only.
            watch.send("edgert/node/stale/infer/occupancy/dev1", {"id": "s1", "inputs": READING})
            asked = partial(watch.on, "edgert/reply/dev1/")
            reply = watch.wait(asked, 5, "the no_model reply")[0].json()
            assert reply["error"]["code"] == "no_model" and "stale" in reply["error"]["message"]
    finally:
        watch.close()
        daemon.stop()


@pytest.mark.parametrize("events", [True, False])
def test_every_result_goes_to_the_events_topic_unless_off(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path, events: bool
) -> None:
    watch = Observer(broker, "edgert/node/ev/events/#", "edgert/reply/#")
    daemon = Daemon(broker, compiled_repository, tmp_path / "daemon", node="ev", events=events)
    try:
        daemon.start()
        for n in range(3):
            watch.send("edgert/infer/occupancy/dev", {"id": f"e{n}", "inputs": READING})
        watch.wait(lambda: len(watch.on("edgert/reply/dev/")) >= 3, 10, "three replies")
        if events:
            watch.wait(lambda: len(watch.on("edgert/node/ev/events/occupancy")) == 3, 10, "events")
            seen = watch.on("edgert/node/ev/events/occupancy")
            replies = {m.json()["id"]: m.json() for m in watch.on("edgert/reply/dev/")}
            for event in (m.json() for m in seen):
                assert event == replies[event["id"]]  # the result as the device got it
        else:
            time.sleep(0.5)  # replies came; an event would have come with them
            assert watch.on("edgert/node/ev/events/") == []
    finally:
        watch.close()
        daemon.stop()
