"""The daemon's settings (``edgert serve --config``, see device/edgert.toml).

The file is decoded strictly into the tables below, which are the reference for every key (its
type, bounds and default); anything they refuse is one line naming the file, table and key (see
:mod:`edgert.schema`). The daemon reads the resolved, flat values: :class:`DaemonConfig` (its
``broker`` a :class:`BrokerConfig`, its ``sources`` :class:`SourceConfig` tables). Both are
frozen dataclasses (``dataclasses.replace`` gives the command line's overrides) and check
themselves against the same tables when built in Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec
from msgspec import Meta

from edgert.errors import ConfigError, ConfigKeyError
from edgert.schema import Table, decode, load_toml, located, show
from edgert.sourcesettings import MotionSection, SourceConfig, redact_url

__all__ = [
    "BrokerConfig",
    "BrokerSection",
    "DaemonConfig",
    "EdgertFile",
    "HttpSection",
    "MotionSection",
    "NodeSection",
    "ServeSection",
    "SourceConfig",
    "parse_broker_url",
    "redact_url",
    "split_listen",
]

Size = Annotated[int, Meta(ge=1)]
Qos = Annotated[int, Meta(ge=0, le=2)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Short = Annotated[int, Meta(ge=1, le=65535)]  # MQTT's two-byte fields: keep alive, receive max
Seconds = Annotated[float, Meta(gt=0)]
Delay = Annotated[float, Meta(ge=0)]  # seconds; 0 = none
Rate = Annotated[float, Meta(ge=0)]
# MQTT 5, or 4 (3.1.1, as its protocol level); the names people write for them too.
PROTOCOLS = {5: 5, 4: 4, "5": 5, "3.1.1": 4, "311": 4}
Protocol = Literal[5, 4, "5", "3.1.1", "311"]
Backend = Literal["auto", "tensorrt", "onnxruntime"]
Interim = Literal["onnxruntime", "none"]
Listen = Annotated[  # host:port, or [IPv6]:port
    str,
    Meta(
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description='"host:port", e.g. "127.0.0.1:8080"',
    ),
]


class BrokerSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[broker]``: where and how the daemon connects to the MQTT broker. ``url`` is applied
    first, the other keys the file gives over it."""

    url: str | None = None  # mqtt://[user:password@]host[:port] or mqtts://...
    host: str = "127.0.0.1"
    port: Port = 1883
    tls: bool = False
    # Files: a relative path is relative to the config file (systemd starts the daemon in /).
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None  # read, stripped: keeps the password out of this file
    client_id: str = ""  # "" = edgert-<node>
    protocol: Protocol = 5
    keepalive: Short = 30  # seconds
    session_expiry: Annotated[int, Meta(ge=0, le=0xFFFFFFFF)] = 300  # seconds the broker keeps
    # the session (and its QoS 1 queue)
    reconnect_min: Seconds = 1.0
    reconnect_max: Seconds = 30.0
    # Publishes (replies) not yet acknowledged by the broker. A reconnect's backlog of requests
    # is answered faster than the broker acknowledges the replies, and a reply refused here is
    # lost, so this is high: it holds only replies to requests already taken.
    max_queued: Size = 65536
    receive_maximum: Short = 64  # QoS 1 messages in flight each way (MQTT 5 Receive Maximum)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reconnect_min > self.reconnect_max:
            raise ConfigKeyError(
                "reconnect_min",
                f"must be at most reconnect_max ({self.reconnect_max:g}), got "
                f"{self.reconnect_min:g}",
            )
        if self.receive_maximum > self.max_queued:
            raise ConfigKeyError(
                "receive_maximum",
                f"must be at most max_queued ({self.max_queued}), got {self.receive_maximum}",
            )


class NodeSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[node]``: this daemon's name and its topics."""

    id: str = ""  # "" = the host name, reduced to [a-zA-Z0-9_-]
    prefix: str = "edgert"
    reply_prefix: str = ""  # "" = <prefix>/reply/
    share_group: str = ""  # "" = no shared subscription


class ServeSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[serve]``: what the daemon serves, and its limits."""

    repository: str | None = None  # relative: to the config file; none = ./engines
    models: tuple[str, ...] = ()  # () = every model in the repository
    backend: Backend = "auto"
    rebuild_stale: bool = False  # rebuild artifacts for another machine or an older source
    homeassistant: bool = True  # publish Home Assistant device discovery
    qos: Qos = 1
    max_payload: Size = 1 << 20  # bytes, checked before decoding
    max_elements: Size = 1 << 22  # tensor elements in one request, all inputs together
    queue_size: Size = 256
    reply_cache: Size = 4096
    rate_limit: Rate = 0.0  # requests per second per device (reply key); 0 = no limit
    rate_burst: Rate = 0.0  # requests a device may send at once; 0 = twice rate_limit
    stats_interval: Seconds = 60.0
    events: bool = True
    # How long a request for a model still building or loading waits for it, before its
    # `loading` reply.
    hold_while_loading: Delay = 30.0
    # What serves a model while its TensorRT engine builds (missing, or stale with
    # rebuild_stale): its ONNX Runtime artifact, built first; "none" holds its requests.
    interim_backend: Interim = "onnxruntime"
    # One sample request on the interim backend slower than this (ms, measured at load): the
    # catalogue marks the model "slow" (it is served all the same; deadlines apply).
    interim_budget_ms: Annotated[float, Meta(gt=0)] = 250.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rate_limit and 0 < self.rate_burst < 1:
            raise ConfigKeyError(
                "rate_burst",
                f"must be at least 1 request (or 0: twice rate_limit), got {self.rate_burst:g}",
            )


class HttpSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[http]``: ``/health/live``, ``/health/ready`` and Prometheus ``/metrics``, served from
    the daemon's event loop; off unless ``listen`` is set."""

    listen: Listen | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.listen is not None and not 1 <= split_listen(self.listen)[1] <= 65535:
            raise ConfigKeyError("listen", f"the port must be in 1..65535, got {show(self.listen)}")


def split_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class EdgertFile(Table, forbid_unknown_fields=True, frozen=True):
    """The whole of edgert.toml; every table optional."""

    broker: BrokerSection = BrokerSection()
    node: NodeSection = NodeSection()
    serve: ServeSection = ServeSection()
    http: HttpSection = HttpSection()
    sources: Annotated[tuple[SourceConfig, ...], Meta(description="[[sources]] tables")] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        first: dict[str, int] = {}
        for index, source in enumerate(self.sources):
            if source.name in first:
                raise ConfigKeyError(
                    ("sources", index, "name"),
                    f"{show(source.name)} names [[sources]][{first[source.name]}] too",
                )
            first[source.name] = index


_BROKER, _NODE, _SERVE = BrokerSection(), NodeSection(), ServeSection()


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the daemon (or a client) connects to the MQTT broker: ``[broker]``
    resolved (``url`` applied, ``password_file`` read, file paths made absolute)."""

    host: str = _BROKER.host
    port: int = _BROKER.port
    tls: bool = _BROKER.tls
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = _BROKER.client_id
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1 ("3.1.1" and "311" are taken, as in the file)
    keepalive: int = _BROKER.keepalive
    session_expiry: int = _BROKER.session_expiry
    reconnect_min: float = _BROKER.reconnect_min
    reconnect_max: float = _BROKER.reconnect_max
    max_queued: int = _BROKER.max_queued
    receive_maximum: int = _BROKER.receive_maximum

    def __post_init__(self) -> None:
        # Built in Python (a client, --broker, tests) too: the file's rules either way.
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        decode({"broker": values}, EdgertFile, "BrokerConfig")
        object.__setattr__(self, "protocol", PROTOCOLS[self.protocol])


def _url_changes(url: str) -> dict[str, Any]:
    """The BrokerConfig fields a broker URL sets; ConfigError(its problem) if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("use mqtt://[user:password@]host[:port] or mqtts://")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    changes: dict[str, Any] = {"host": parts.hostname, "port": port, "tls": tls}
    if parts.username is not None:
        changes["username"] = unquote(parts.username)
    if parts.password is not None:
        changes["password"] = unquote(parts.password)
    return changes


def parse_broker_url(url: str, base: BrokerConfig | None = None) -> BrokerConfig:
    """``mqtt://[user:password@]host[:port]`` or ``mqtts://…`` applied over ``base``."""
    try:
        return dataclasses.replace(base or BrokerConfig(), **_url_changes(url))
    except ConfigError as exc:
        raise ConfigError(f"broker URL {redact_url(url)!r}: {exc.message}") from exc


@dataclass(frozen=True)
class DaemonConfig:
    """``edgert serve``'s config file, resolved: ``[node]`` and ``[serve]`` flat (``node`` is
    ``[node] id``), ``[broker]`` and ``[[sources]]`` as values of their own."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    node: str = _NODE.id
    prefix: str = _NODE.prefix
    reply_prefix: str = _NODE.reply_prefix
    share_group: str = _NODE.share_group
    repository: Path = Path("engines")
    models: tuple[str, ...] = _SERVE.models
    backend: str = _SERVE.backend
    rebuild_stale: bool = _SERVE.rebuild_stale
    homeassistant: bool = _SERVE.homeassistant
    qos: int = _SERVE.qos
    max_payload: int = _SERVE.max_payload
    max_elements: int = _SERVE.max_elements
    queue_size: int = _SERVE.queue_size
    reply_cache: int = _SERVE.reply_cache
    rate_limit: float = _SERVE.rate_limit
    rate_burst: float = _SERVE.rate_burst
    stats_interval: float = _SERVE.stats_interval
    events: bool = _SERVE.events
    hold_while_loading: float = _SERVE.hold_while_loading
    interim_backend: str = _SERVE.interim_backend
    interim_budget_ms: float = _SERVE.interim_budget_ms
    sources: tuple[SourceConfig, ...] = ()  # [[sources]]: cameras the daemon pulls from
    http_listen: str | None = None  # [http] listen: health and metrics over HTTP

    def __post_init__(self) -> None:
        # Built in Python (overrides, tests) too: the file's rules either way.
        decode(self._as_file(), EdgertFile, "DaemonConfig")

    def _as_file(self) -> dict[str, Any]:
        """This config as edgert.toml would hold it (but [broker], which checks itself)."""
        node = {"id": self.node, "prefix": self.prefix}
        node |= {"reply_prefix": self.reply_prefix, "share_group": self.share_group}
        serve = {k: getattr(self, k) for k in ServeSection.__struct_fields__}
        serve["repository"] = str(self.repository)
        sources = [
            msgspec.structs.asdict(s) if isinstance(s, SourceConfig) else s for s in self.sources
        ]
        return {
            "node": node,
            "serve": serve,
            "sources": sources,
            "http": {"listen": self.http_listen},
        }

    @property
    def burst(self) -> float:
        """The burst a device may send: ``rate_burst``, else twice the rate (at least 1)."""
        return self.rate_burst or max(1.0, 2 * self.rate_limit)

    @classmethod
    def load(cls, path: Path | None) -> DaemonConfig:
        """The config in ``path`` (errors name it as given); the defaults for None."""
        if path is None:
            return cls()
        return cls.from_dict(load_toml(path), where=str(path), base_dir=path.parent)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, where: str = "config", base_dir: Path = Path(".")
    ) -> DaemonConfig:
        """A parsed config file (``where`` names it in errors; relative paths in it are
        relative to ``base_dir``)."""
        file = decode(data, EdgertFile, where)
        serve = file.serve
        repository = Path("engines") if serve.repository is None else base_dir / serve.repository
        values = {k: getattr(serve, k) for k in ServeSection.__struct_fields__}
        return cls(
            broker=_broker(file.broker, set(data.get("broker", {})), where, base_dir),
            node=file.node.id,
            prefix=file.node.prefix,
            reply_prefix=file.node.reply_prefix,
            share_group=file.node.share_group,
            **{**values, "repository": repository},
            sources=file.sources,
            http_listen=file.http.listen,
        )


def _broker(section: BrokerSection, given: set[str], where: str, base_dir: Path) -> BrokerConfig:
    """``[broker]`` resolved: ``url`` first, then the keys the file gives over it;
    ``password_file`` read (stripped); file paths made relative to ``base_dir``."""
    changes: dict[str, Any] = {}
    if section.url is not None:
        try:
            changes = _url_changes(section.url)
        except ConfigError as exc:
            head = located(where, "broker", "url")
            raise ConfigError(
                f"{head}: {exc.message}, got {show(redact_url(section.url))}"
            ) from exc
    fields = {f.name for f in dataclasses.fields(BrokerConfig)}
    changes |= {k: getattr(section, k) for k in given & fields}
    if section.password_file is not None:
        path = base_dir / section.password_file
        try:
            changes["password"] = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            head = located(where, "broker", "password_file")
            raise ConfigError(f"{head}: cannot read {path}: {reason}") from exc
    for key in ("ca_file", "cert_file", "key_file"):
        if changes.get(key) is not None:
            changes[key] = str(base_dir / changes[key])
    return BrokerConfig(**changes)
