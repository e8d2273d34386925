"""edgert.toml end to end: [serve] tables the config fuzz makes (and edgert.settings accepts) run
the real daemon, which answers an occupancy request as running the model directly does; a table
it refuses stops `edgert serve` before it connects, with one line naming the file and key."""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from paho.mqtt.enums import CallbackAPIVersion

from edgert import ModelDir, open_model
from edgert.errors import ConfigError
from edgert.settings import DaemonConfig
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon
from tests.test_config_fuzz import serve_tables

READING = [[22.5, 45.0, 480.0, 1150.0]]
_nodes = itertools.count()


def ask_occupancy(port: int, key: str) -> dict[str, Any]:
    """One MQTT 3.1.1 request with the key in the topic, as an ESPHome device sends it."""
    replies: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.on_message = lambda c, u, m: replies.put(m.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(f"edgert/reply/{key}/#", 1)
    client.loop_start()
    try:
        time.sleep(0.2)
        body = json.dumps({"id": "r1", "inputs": READING})
        client.publish(f"edgert/infer/occupancy/{key}", body, qos=1).wait_for_publish(5)
        return dict(json.loads(replies.get(timeout=15)))
    finally:
        client.disconnect()
        client.loop_stop()


def retained(port: int, topic: str) -> list[bytes]:
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.put(m.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(topic, 1)
    client.loop_start()
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()
    return list(got.queue)


@pytest.fixture(scope="module")
def expected(compiled_repository: Path) -> np.ndarray:
    loaded = open_model(ModelDir(compiled_repository / "occupancy"))
    try:
        return loaded.infer({"readings": np.array(READING, np.float32)})["probabilities"]
    finally:
        loaded.close()


@settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(serve=serve_tables())
def test_accepted_serve_tables_answer_occupancy(
    serve: dict[str, Any],
    broker: Mosquitto,
    compiled_repository: Path,
    expected: np.ndarray,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    DaemonConfig.from_dict({"serve": serve})  # accepted, as the fuzz drew it
    node = f"cfg{next(_nodes)}"  # its own status topic: no retained "online" of another's
    daemon = Daemon(broker, compiled_repository, tmp_path_factory.mktemp(node), node=node, **serve)
    daemon.start()
    try:
        body = ask_occupancy(broker.port, node)
    finally:
        assert daemon.terminate() == 0, daemon.log.read_text()
    assert body["ok"] is True and body["id"] == "r1", body
    np.testing.assert_allclose(body["outputs"]["probabilities"], expected, rtol=1e-5)


def test_a_refused_serve_table_stops_serve_before_it_connects(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    serve = {"qos": 1, "queue_size": "big", "stats_interval": 1}
    with pytest.raises(ConfigError):
        DaemonConfig.from_dict({"serve": serve})
    daemon = Daemon(broker, compiled_repository, tmp_path, node="refused", **serve)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "edgert", "serve", "--config", str(daemon.config)),
            *("--broker", broker.url, "--repository", str(compiled_repository)),
            *("--node", "refused"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f'error: {daemon.config}: [serve] queue_size: expected an integer >= 1, got "big"'
    ], result.stderr
    assert retained(broker.port, "edgert/node/refused/status") == []
