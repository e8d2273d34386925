"""edgert.settings: edgert.toml decoded strictly; every refusal one line naming file, table, key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from edgert.errors import ConfigError
from edgert.settings import BrokerConfig, DaemonConfig, parse_broker_url, split_listen
from tests.test_cli import edgert, one_line_error

REPO = Path(__file__).resolve().parents[1]


def refused(data: dict[str, Any], where: str = "edgert.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        DaemonConfig.from_dict(data, where=where)
    return caught.value.message


def test_the_issues_example_names_the_first_bad_key() -> None:
    bad = {"serve": {"queue_size": "big", "qos": 7, "max_payload": -1, "stats_interval": 0}}
    assert refused(bad) == 'edgert.toml: [serve] queue_size: expected an integer >= 1, got "big"'
    assert refused(bad, where="config") == (
        'config: [serve] queue_size: expected an integer >= 1, got "big"'
    )


@pytest.mark.parametrize(
    ("table", "key", "value", "expected"),
    [
        ("serve", "qos", 7, "an integer in 0..2"),
        ("serve", "qos", -1, "an integer in 0..2"),
        ("serve", "queue_size", 0, "an integer >= 1"),
        ("serve", "queue_size", "big", "an integer >= 1"),
        ("serve", "queue_size", 2.0, "an integer >= 1"),
        ("serve", "queue_size", True, "an integer >= 1"),
        ("serve", "reply_cache", 0, "an integer >= 1"),
        ("serve", "max_payload", -1, "an integer >= 1"),
        ("serve", "max_elements", 0, "an integer >= 1"),
        ("serve", "stats_interval", 0, "a number > 0"),
        ("serve", "stats_interval", -0.5, "a number > 0"),
        ("serve", "rate_limit", -1, "a number >= 0"),
        ("serve", "rate_burst", -1, "a number >= 0"),
        ("serve", "hold_while_loading", -1, "a number >= 0"),
        ("serve", "hold_while_loading", "30s", "a number >= 0"),
        ("serve", "events", "yes", "true or false"),
        ("serve", "models", "occupancy", "a list of strings"),
        ("serve", "backend", "gpu", 'one of "auto", "tensorrt", "onnxruntime"'),
        ("serve", "interim_backend", "tensorrt", 'one of "onnxruntime", "none"'),
        ("serve", "interim_backend", False, 'one of "onnxruntime", "none"'),
        ("serve", "interim_budget_ms", 0, "a number > 0"),
        ("serve", "interim_budget_ms", "fast", "a number > 0"),
        ("broker", "port", 0, "an integer in 1..65535"),
        ("broker", "port", 70000, "an integer in 1..65535"),
        ("broker", "keepalive", 0, "an integer in 1..65535"),
        ("broker", "receive_maximum", 0, "an integer in 1..65535"),
        ("broker", "receive_maximum", 65536, "an integer in 1..65535"),
        ("broker", "max_queued", 0, "an integer >= 1"),
        ("broker", "session_expiry", -1, "an integer in 0..4294967295"),
        ("broker", "reconnect_min", 0, "a number > 0"),
        ("broker", "reconnect_max", -1, "a number > 0"),
        ("broker", "tls", 1, "true or false"),
        ("broker", "protocol", 3, 'one of 5, 4, "5", "3.1.1", "311"'),
        ("broker", "protocol", "4", 'one of 5, 4, "5", "3.1.1", "311"'),
        ("node", "prefix", 3, "a string"),
    ],
)
def test_wrong_types_and_out_of_range_values(
    table: str, key: str, value: Any, expected: str
) -> None:
    shown = json.dumps(value)  # as TOML writes it: "big", true, 2.0
    assert refused({table: {key: value}}) == (
        f"edgert.toml: [{table}] {key}: expected {expected}, got {shown}"
    )


def test_non_finite_numbers_are_refused() -> None:
    assert refused({"serve": {"stats_interval": float("inf")}}) == (
        "edgert.toml: [serve] stats_interval: expected a finite number, got inf"
    )
    assert refused({"serve": {"rate_limit": float("nan")}}) == (
        "edgert.toml: [serve] rate_limit: expected a number >= 0, got nan"
    )


DID_YOU_MEAN = "unknown key; did you mean"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"node": {"queue_size": 8}}, f"[node] queue_size: {DID_YOU_MEAN} [serve] queue_size?"),
        ({"broker": {"qos": 1}}, f"[broker] qos: {DID_YOU_MEAN} [serve] qos?"),
        ({"serve": {"url": "mqtt://h"}}, f"[serve] url: {DID_YOU_MEAN} [broker] url?"),
        ({"serve": {"queue_sise": 8}}, f"[serve] queue_sise: {DID_YOU_MEAN} [serve] queue_size?"),
        ({"serve": {"hold": 1}}, f"[serve] hold: {DID_YOU_MEAN} [serve] hold_while_loading?"),
        ({"queue_size": 8}, f"queue_size: {DID_YOU_MEAN} [serve] queue_size?"),
        ({"nodes": {"id": "x"}}, "[nodes]: unknown table; did you mean [node]?"),
        ({"zzz": {}}, "[zzz]: unknown table; the tables are broker, node, serve, http, sources"),
        (
            {"node": {"zzzzzz": 1}},
            "[node] zzzzzz: unknown key; known: id, prefix, reply_prefix, share_group",
        ),
        (
            {"sources": [{"name": "a", "model": "m", "url": "http://c/", "intervl": 2}]},
            f"[[sources]][0] intervl: {DID_YOU_MEAN} [[sources]] interval?",
        ),
        ({"serve": 3}, "[serve]: expected a table, got 3"),
    ],
)
def test_unknown_keys_and_tables_name_the_nearest_known_one(
    data: dict[str, Any], message: str
) -> None:
    assert refused(data) == f"edgert.toml: {message}"


def test_rules_across_keys() -> None:
    assert refused({"broker": {"reconnect_min": 60}}) == (
        "edgert.toml: [broker] reconnect_min: must be at most reconnect_max (30), got 60"
    )
    assert refused({"broker": {"max_queued": 10}}) == (
        "edgert.toml: [broker] receive_maximum: must be at most max_queued (10), got 64"
    )
    assert refused({"serve": {"rate_limit": 2, "rate_burst": 0.5}}) == (
        "edgert.toml: [serve] rate_burst: must be at least 1 request (or 0: twice rate_limit), "
        "got 0.5"
    )
    assert DaemonConfig.from_dict({"serve": {"rate_limit": 2}}).burst == 4.0
    cam = {"name": "cam", "model": "m", "url": "http://cam/x", "interval": 1}
    assert refused({"sources": [cam, {**cam, "name": "door", "interval": -1}]}) == (
        "edgert.toml: [[sources]][1] interval: expected a number >= 0, got -1"
    )


def test_defaults_and_the_new_hold_while_loading() -> None:
    config = DaemonConfig.from_dict({})
    assert config == DaemonConfig()
    assert (config.hold_while_loading, config.queue_size, config.qos) == (30.0, 256, 1)
    assert config.repository == Path("engines") and config.broker == BrokerConfig()
    held = DaemonConfig.from_dict({"serve": {"hold_while_loading": 0, "stats_interval": 2}})
    assert (held.hold_while_loading, held.stats_interval) == (0.0, 2.0)
    assert isinstance(held.hold_while_loading, float)  # TOML's 0 is an int
    assert (config.interim_backend, config.interim_budget_ms) == ("onnxruntime", 250.0)
    off = DaemonConfig.from_dict({"serve": {"interim_backend": "none", "interim_budget_ms": 40}})
    assert (off.interim_backend, off.interim_budget_ms) == ("none", 40.0)


@pytest.mark.parametrize(("written", "level"), [(5, 5), (4, 4), ("5", 5), ("3.1.1", 4), ("311", 4)])
def test_protocol_names(written: Any, level: int) -> None:
    assert DaemonConfig.from_dict({"broker": {"protocol": written}}).broker.protocol == level
    assert BrokerConfig(protocol=written).protocol == level


def test_url_first_then_the_keys_over_it() -> None:
    broker = DaemonConfig.from_dict(
        {"broker": {"url": "mqtts://ed%40ge:s3cret@hub.local", "port": 9999, "username": "x"}}
    ).broker
    assert (broker.host, broker.port, broker.tls) == ("hub.local", 9999, True)
    assert (broker.username, broker.password) == ("x", "s3cret")
    assert refused({"broker": {"url": "http://u:pw@hub"}}) == (
        "edgert.toml: [broker] url: use mqtt://[user:password@]host[:port] or mqtts://, got "
        '"http://u:***@hub"'
    )
    assert parse_broker_url("mqtt://h:1884").port == 1884
    with pytest.raises(ConfigError, match=r"^broker URL 'ftp://h': use mqtt://"):
        parse_broker_url("ftp://h")


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("  hunter2\n")
    path = tmp_path / "edgert.toml"
    path.write_text(
        '[broker]\nca_file = "ca.crt"\nkey_file = "/etc/k.key"\npassword_file = "password"\n'
        '[serve]\nrepository = "models"\n'
    )
    config = DaemonConfig.load(path)
    assert config.repository == tmp_path / "models"
    assert config.broker.ca_file == str(tmp_path / "ca.crt")
    assert config.broker.key_file == "/etc/k.key"
    assert config.broker.password == "hunter2"
    path.write_text('[broker]\npassword_file = "missing"\n')
    with pytest.raises(ConfigError) as caught:
        DaemonConfig.load(path)
    assert caught.value.message == (
        f"{path}: [broker] password_file: cannot read {tmp_path / 'missing'}: "
        "No such file or directory"
    )


def test_errors_name_the_file_as_given(tmp_path: Path) -> None:
    path = tmp_path / "edgert.toml"
    path.write_text('[serve]\nqueue_size = "big"\n')
    with pytest.raises(ConfigError) as caught:
        DaemonConfig.load(path)
    assert caught.value.message == (
        f'{path}: [serve] queue_size: expected an integer >= 1, got "big"'
    )
    path.write_text("[serve\n")
    with pytest.raises(ConfigError, match=rf"^{path}: "):
        DaemonConfig.load(path)


def test_the_shipped_config_loads() -> None:
    config = DaemonConfig.load(REPO / "device" / "edgert.toml")
    assert config.repository == Path("/var/lib/edgert/engines")
    assert (config.broker.protocol, config.broker.session_expiry, config.qos) == (5, 300, 1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: DaemonConfig(queue_size=0),
            "DaemonConfig: [serve] queue_size: expected an integer >= 1, got 0",
        ),
        (
            lambda: DaemonConfig(qos=7),
            "DaemonConfig: [serve] qos: expected an integer in 0..2, got 7",
        ),
        (
            lambda: DaemonConfig(stats_interval=0),
            "DaemonConfig: [serve] stats_interval: expected a number > 0, got 0",
        ),
        (
            lambda: dataclasses.replace(DaemonConfig(), max_payload=-1),
            "DaemonConfig: [serve] max_payload: expected an integer >= 1, got -1",
        ),
        (
            lambda: BrokerConfig(port=0),
            "BrokerConfig: [broker] port: expected an integer in 1..65535, got 0",
        ),
        (
            lambda: BrokerConfig(reconnect_min=9, reconnect_max=3),
            "BrokerConfig: [broker] reconnect_min: must be at most reconnect_max (3), got 9",
        ),
        (
            lambda: parse_broker_url("mqtt://h", BrokerConfig(keepalive=70000)),
            "BrokerConfig: [broker] keepalive: expected an integer in 1..65535, got 70000",
        ),
    ],
)
def test_values_built_in_python_follow_the_same_rules(build: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.message == message


def test_overrides_as_the_command_line_makes_them() -> None:
    base = DaemonConfig.from_dict({"serve": {"queue_size": 8}})
    changed = dataclasses.replace(
        base, repository=Path("/srv/engines"), node="kitchen", broker=parse_broker_url("mqtt://hub")
    )
    assert (changed.queue_size, changed.node, changed.broker.host) == (8, "kitchen", "hub")


def test_serve_refuses_a_bad_config_in_one_line_before_connecting(tmp_path: Path) -> None:
    path = tmp_path / "edgert.toml"
    path.write_text('[serve]\nqueue_size = "big"\n[broker]\nurl = "mqtt://127.0.0.1:9"\n')
    line = one_line_error(edgert("serve", "--config", path))
    assert line == f'error: {path}: [serve] queue_size: expected an integer >= 1, got "big"'
    path.write_text("[node]\nqueue_size = 8\n")
    line = one_line_error(edgert("serve", "--config", path))
    assert (
        line == f"error: {path}: [node] queue_size: unknown key; did you mean [serve] queue_size?"
    )


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8080", 'expected "host:port", e.g. "127.0.0.1:8080", got "8080"'),
        ("http://127.0.0.1:8080", 'expected "host:port", e.g. "127.0.0.1:8080", got '),
        ("127.0.0.1:70000", 'the port must be in 1..65535, got "127.0.0.1:70000"'),
        (8080, 'expected "host:port", e.g. "127.0.0.1:8080", got 8080'),
    ],
)
def test_http_listen_is_a_host_and_port(listen: Any, message: str) -> None:
    assert refused({"http": {"listen": listen}}).startswith(
        f"edgert.toml: [http] listen: {message}"
    )


def test_http_is_off_unless_listen_is_set() -> None:
    assert DaemonConfig().http_listen is None
    config = DaemonConfig.from_dict({"http": {"listen": "[::1]:9100"}})
    assert config.http_listen == "[::1]:9100" and split_listen(config.http_listen) == ("::1", 9100)
    assert refused({"http": {"listn": "h:1"}}) == (
        f"edgert.toml: [http] listn: {DID_YOU_MEAN} [http] listen?"
    )
