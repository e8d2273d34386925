"""The daemon's settings (``edgert serve --config``, see device/edgert.toml): broker, node, serve
and sources, as frozen value types validated when built."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgert.config import load_toml
from edgert.config import table as _table
from edgert.errors import ConfigError

__all__ = ["BrokerConfig", "DaemonConfig", "SourceConfig", "parse_broker_url", "redact_url"]


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the daemon (or a client) connects to the MQTT broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = ""
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1
    keepalive: int = 30
    session_expiry: int = 300  # seconds the broker keeps the session (and its QoS 1 queue)
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    # Publishes (replies) not yet acknowledged by the broker. A reconnect's backlog of requests
    # is answered faster than the broker acknowledges the replies, and a reply refused here is
    # lost, so this is high: it holds only replies to requests already taken.
    max_queued: int = 65536
    receive_maximum: int = 64  # QoS 1 messages in flight each way (MQTT 5 Receive Maximum)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"broker port {self.port} is not a TCP port")
        if self.protocol not in (4, 5):
            raise ConfigError(f"broker protocol {self.protocol}: use 5 or 4 (MQTT 3.1.1)")
        if not 1 <= self.receive_maximum <= 65535 or self.max_queued < self.receive_maximum:
            raise ConfigError("broker receive_maximum must be 1..65535 and at most max_queued")


def parse_broker_url(url: str, base: BrokerConfig | None = None) -> BrokerConfig:
    """``mqtt://[user:password@]host[:port]`` or ``mqtts://…`` applied over ``base``."""
    base = base or BrokerConfig()
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"broker URL {url!r}: use mqtt://[user:password@]host[:port] or mqtts://")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r}: {exc}") from exc
    changes: dict[str, Any] = {"host": parts.hostname, "port": port, "tls": tls}
    if parts.username is not None:
        changes["username"] = unquote(parts.username)
    if parts.password is not None:
        changes["password"] = unquote(parts.password)
    return replace(base, **changes)


@dataclass(frozen=True)
class DaemonConfig:
    """``edgert serve``'s config file (TOML: [broker], [node], [serve]); defaults for all."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    node: str = ""  # "" = the host name, reduced to [a-zA-Z0-9_-]
    prefix: str = "edgert"
    reply_prefix: str = ""  # "" = <prefix>/reply/
    share_group: str = ""  # "" = no shared subscription
    repository: Path = Path("engines")
    models: tuple[str, ...] = ()  # () = every model in the repository
    backend: str = "auto"
    rebuild_stale: bool = False  # rebuild artifacts for another machine or an older source
    homeassistant: bool = True  # publish Home Assistant device discovery
    qos: int = 1
    max_payload: int = 1 << 20  # bytes, checked before decoding
    max_elements: int = 1 << 22  # tensor elements in one request, all inputs together
    queue_size: int = 256
    reply_cache: int = 4096
    rate_limit: float = 0.0  # requests per second per device (reply key); 0 = no limit
    rate_burst: float = 0.0  # requests a device may send at once; 0 = twice rate_limit
    stats_interval: float = 60.0
    events: bool = True
    sources: tuple[SourceConfig, ...] = ()  # [[sources]]: cameras the daemon pulls from

    def __post_init__(self) -> None:
        if self.rate_limit < 0 or self.rate_burst < 0:
            raise ConfigError("[serve] rate_limit and rate_burst must be >= 0")
        if self.rate_limit and 0 < self.rate_burst < 1:
            raise ConfigError("[serve] rate_burst must be at least 1 request")

    @property
    def burst(self) -> float:
        """The burst a device may send: ``rate_burst``, else twice the rate (at least 1)."""
        return self.rate_burst or max(1.0, 2 * self.rate_limit)

    @classmethod
    def load(cls, path: Path | None) -> DaemonConfig:
        if path is None:
            return cls()
        return cls.from_dict(load_toml(path), where=str(path), base_dir=path.parent)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, where: str = "config", base_dir: Path = Path(".")
    ) -> DaemonConfig:
        unknown = set(data) - {"broker", "node", "serve", "sources"}
        if unknown:
            raise ConfigError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
        sources = _sources_from_list(data.get("sources", []), where)
        broker_raw = dict(_table(data, "broker", where))
        node_raw = dict(_table(data, "node", where))
        serve_raw = dict(_table(data, "serve", where))
        try:
            broker = _broker_from_dict(broker_raw, where, base_dir)
            node = {
                "id": "node",
                "prefix": "prefix",
                "reply_prefix": "reply_prefix",
                "share_group": "share_group",
            }
            fields: dict[str, Any] = {node[k]: str(v) for k, v in node_raw.items() if k in node}
            bad = set(node_raw) - set(node)
            if bad:
                raise ConfigError(f"unknown [node] key(s) {', '.join(sorted(bad))}")
            if "repository" in serve_raw:
                serve_raw["repository"] = base_dir / str(serve_raw["repository"])
            if "models" in serve_raw:
                serve_raw["models"] = tuple(str(m) for m in serve_raw["models"])
            return cls(broker=broker, sources=sources, **fields, **serve_raw)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


# [broker] keys that name files: relative paths are relative to the config file, as systemd
# starts the daemon in /.
_BROKER_FILES = ("ca_file", "cert_file", "key_file")


def _broker_from_dict(raw: Mapping[str, Any], where: str, base_dir: Path) -> BrokerConfig:
    """The ``[broker]`` table: ``url`` first, then the other keys over it; ``password_file``
    read (stripped); file paths resolved against ``base_dir``."""
    raw = dict(raw)
    known = {f.name for f in dataclass_fields(BrokerConfig)} | {"url", "password_file"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown [broker] key(s) {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(known))}"
        )
    broker = BrokerConfig()
    url = raw.pop("url", None)
    if url is not None:
        broker = parse_broker_url(str(url), broker)
    password_file = raw.pop("password_file", None)
    if password_file is not None:
        path = base_dir / str(password_file)
        try:
            raw["password"] = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: [broker] password_file {path}: {exc}") from exc
    for key in _BROKER_FILES:
        if isinstance(raw.get(key), str):
            raw[key] = str(base_dir / raw[key])
    if isinstance(raw.get("protocol"), str):
        raw["protocol"] = {"5": 5, "3.1.1": 4, "311": 4}.get(raw["protocol"], 0)
    return replace(broker, **raw)


_SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SourceConfig:
    """One ``[[sources]]`` table: a camera the daemon pulls a snapshot from (``url``, on an
    interval or when a message arrives on ``trigger``), or a device that streams its own
    requests (``stream``: a microphone's stream id), feeding ``model``; results that pass
    ``labels`` and ``min_score`` become events on the source's own events topic."""

    name: str  # a topic level: [a-zA-Z0-9_-]
    model: str
    url: str | None = None  # http:// or https://, answering with a JPEG or PNG
    stream: str | None = None  # or: the stream id whose results are this source's
    interval: float = 0.0  # seconds between pulls; 0 = only on trigger
    trigger: str | None = None  # MQTT topic filter: any message on it pulls once now
    labels: tuple[str, ...] | None = None  # None = every label counts
    min_score: float = 0.5
    debounce: float = 0.0  # seconds the same label is not announced again
    timeout: float = 5.0  # HTTP, seconds

    def __post_init__(self) -> None:
        where = f"source {self.name!r}"
        if not _SOURCE_NAME.fullmatch(self.name):
            raise ConfigError(f"{where}: name must be letters, digits, '_' or '-'")
        if not self.model:
            raise ConfigError(f"{where}: model must name a served model")
        if (self.url is None) == (self.stream is None):
            raise ConfigError(f"{where}: give a url (a camera) or a stream (a microphone), one")
        if self.stream is not None:
            if self.interval or self.trigger is not None:
                raise ConfigError(f"{where}: a stream source has no interval or trigger")
        else:
            parts = urlsplit(self.url or "")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"{where}: url {redact_url(self.url or '')!r} must be http:// or https://"
                )
            if self.trigger is not None and not _topic_filter_ok(self.trigger):
                raise ConfigError(f"{where}: trigger {self.trigger!r} is not an MQTT topic filter")
            if self.interval <= 0 and self.trigger is None:
                raise ConfigError(
                    f"{where}: give an interval (seconds) or a trigger topic, or both"
                )
        if self.interval < 0 or self.debounce < 0 or self.timeout <= 0:
            raise ConfigError(f"{where}: interval and debounce must be >= 0, timeout > 0")
        if not 0 <= self.min_score <= 1:
            raise ConfigError(f"{where}: min_score must be within [0, 1]")
        if self.labels is not None and not self.labels:
            raise ConfigError(f"{where}: labels is empty; leave it out to take every label")


_SOURCE_KEYS = {f.name for f in dataclass_fields(SourceConfig)}
_SOURCE_NUMBERS = ("interval", "min_score", "debounce", "timeout")


def _sources_from_list(raw: Any, where: str) -> tuple[SourceConfig, ...]:
    """``[[sources]]``: each table validated; names unique."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{where}: sources must be [[sources]] tables")
    sources = []
    for index, table in enumerate(raw):
        at = f"{where}: sources[{index}]"
        unknown = set(table) - _SOURCE_KEYS
        if unknown:
            raise ConfigError(
                f"{at}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(_SOURCE_KEYS))}"
            )
        missing = [k for k in ("name", "model") if k not in table]
        if missing:
            raise ConfigError(f"{at}: missing {', '.join(missing)}")
        for key in ("name", "model", "url", "stream", "trigger"):
            if key in table and not isinstance(table[key], str):
                raise ConfigError(f"{at}: {key} must be a string")
        for key in _SOURCE_NUMBERS:
            value = table.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ConfigError(f"{at}: {key} must be a number, got {value!r}")
        labels = table.get("labels")
        if labels is not None:
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                raise ConfigError(f"{at}: labels must be a list of strings")
            labels = tuple(labels)
        numbers = {k: float(table[k]) for k in _SOURCE_NUMBERS if k in table}
        try:
            source = SourceConfig(
                name=table["name"],
                model=table["model"],
                url=table.get("url"),
                stream=table.get("stream"),
                trigger=table.get("trigger"),
                labels=labels,
                **numbers,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        sources.append(source)
    names = [s.name for s in sources]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: source name(s) {', '.join(twice)} used more than once")
    return tuple(sources)


def _topic_filter_ok(text: str) -> bool:
    """An MQTT subscription filter: '+' alone in a level, '#' alone and last."""
    if not text or "\0" in text:
        return False
    levels = text.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or (
            "#" in level and (level != "#" or i < len(levels) - 1)
        ):
            return False
    return True


def redact_url(url: str) -> str:
    """``url`` without its password (camera URLs often carry credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()
