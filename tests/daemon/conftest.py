"""Fixtures for end-to-end daemon tests: a broker, a compiled repository, a daemon subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgert import ModelDir, compile_model
from tests.broker import Mosquitto

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def compiled_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    for name in ("occupancy", "silero_vad"):
        shutil.copytree(
            REPO / "engines" / name, root / name, ignore=shutil.ignore_patterns("build")
        )
        compile_model(ModelDir(root / name))
    return root


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path).start()
    yield server
    server.kill()


class Daemon:
    """`edgert serve` as a subprocess; its log in ``log``.

    ``broker_settings`` and ``node_settings`` become the config's ``[broker]`` and ``[node]``
    tables, ``http_settings`` its ``[http]``; ``broker_url`` replaces the ``--broker`` flag
    (default: the broker's own URL); ``serve`` keys go into ``[serve]``.
    """

    def __init__(
        self,
        broker: Mosquitto,
        repository: Path,
        directory: Path,
        *,
        node: str = "testnode",
        broker_url: str | None = None,
        broker_settings: Mapping[str, object] | None = None,
        node_settings: Mapping[str, object] | None = None,
        http_settings: Mapping[str, object] | None = None,
        **serve: object,
    ):
        self.broker = broker
        self.node = node
        self.broker_url = broker_url or broker.url
        settings = {"stats_interval": 0.3, "queue_size": 64, **serve}
        lines = ["[serve]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        broker_table = {"reconnect_min": 1, "reconnect_max": 2, **(broker_settings or {})}
        lines += ["[broker]"] + [f"{k} = {json.dumps(v)}" for k, v in broker_table.items()]
        if node_settings:
            lines += ["[node]"] + [f"{k} = {json.dumps(v)}" for k, v in node_settings.items()]
        if http_settings:
            lines += ["[http]"] + [f"{k} = {json.dumps(v)}" for k, v in http_settings.items()]
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "edgert.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = directory / "daemon.log"
        self.repository = repository
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> Daemon:
        """Start it; with ``wait``, block until its status topic says online."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgert",
                    "serve",
                    "--config",
                    str(self.config),
                    "--broker",
                    self.broker_url,
                    "--repository",
                    str(self.repository),
                    "--node",
                    self.node,
                ],
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            wait_retained(self.broker, f"edgert/node/{self.node}/status", b"online")
        return self

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9: no drain and no ``offline`` of its own (the broker sends its Last Will)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_retained(broker: int | Mosquitto, topic: str, payload: bytes, timeout: float = 30) -> None:
    """Block until ``topic`` carries ``payload`` (retained or live). ``broker`` is a port
    (plain, anonymous) or a :class:`Mosquitto` (its TLS and credentials)."""
    seen = threading.Event()
    if isinstance(broker, Mosquitto):
        client, port = broker.client(), broker.port
    else:
        client, port = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5), broker

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        if msg.payload == payload:
            seen.set()

    client.on_message = on_message
    client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not seen.wait(timeout):
            raise TimeoutError(f"{topic} never said {payload!r}")
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def daemon(broker: Mosquitto, compiled_repository: Path, tmp_path: Path) -> Iterator[Daemon]:
    server = Daemon(broker, compiled_repository, tmp_path).start()
    yield server
    server.stop()
