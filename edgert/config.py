"""Model configuration (``engines/<model>/model.toml``): frozen value types, validated when built.

A model directory needs no model.toml when its ONNX has fixed shapes; the directory name is then
the model's name. Example::

    name = "occupancy"            # default: the directory name
    version = "3"                 # the model's own version, echoed in replies
    source = "model.onnx"         # default
    precision = "fp32"            # fp32 | fp16 | int8 (default build precision)
    labels = ["empty", "occupied"]

    [dims]                        # bounds of dynamic axes, by name (see `edgert inspect`)
    batch = { min = 1, opt = 1, max = 64 }

    [inputs.sr]
    kind = "constant"             # request | constant | carried | windowed
    value = 16000

    [inputs.x]
    shape = ["batch", 4]          # rename or fix dims the exporter left unnamed
    range = [0.0, 1.0]            # range of seeded random samples for the parity check

    [parity]                      # override the per-precision tolerances
    atol = 1e-4
    rtol = 1e-3
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from edgert.errors import ConfigError
from edgert.spec import Dim, DimRange, Shape

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "INPUT_FORMATS",
    "INPUT_KINDS",
    "PRECISIONS",
    "BrokerConfig",
    "DaemonConfig",
    "InputConfig",
    "InputKind",
    "ModelConfig",
    "Precision",
    "SourceConfig",
    "Tolerance",
    "load_toml",
    "parse_broker_url",
    "redact_url",
]

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
InputKind = Literal["request", "constant", "carried", "windowed"]
INPUT_KINDS: tuple[InputKind, ...] = ("request", "constant", "carried", "windowed")
INPUT_FORMATS = ("json", "raw", "npy", "jpeg", "png", "wav")

# Sections owned by later layers (pipelines, batching, stream state, Home Assistant): kept raw here
# and validated by their owners, so model.toml can hold them without this module knowing them.
_RAW_SECTIONS = ("preprocess", "postprocess", "batching", "state", "homeassistant", "tensorrt")
_TOP_KEYS = {
    "name",
    "version",
    "source",
    "description",
    "precision",
    "labels",
    "dims",
    "inputs",
    "outputs",
    "parity",
    *_RAW_SECTIONS,
}


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, mapping every failure to ConfigError naming the file."""
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact's outputs must be to the FP32 reference: |a-b| <= atol + rtol*|b|."""

    atol: float
    rtol: float

    @classmethod
    def for_precision(cls, precision: Precision) -> Tolerance:
        # FP32 artifacts differ from the reference only by fused/reordered arithmetic.
        return {
            "fp32": cls(atol=1e-4, rtol=1e-3),
            "fp16": cls(atol=1e-2, rtol=1e-2),
            "int8": cls(atol=5e-2, rtol=5e-2),
        }[precision]


@dataclass(frozen=True)
class InputConfig:
    """What model.toml says about one input."""

    name: str
    kind: InputKind = "request"
    shape: Shape | None = None
    value: Any = None
    range: tuple[float, float] | None = None
    format: str | None = None  # how a device sends it without a content type: raw, npy, jpeg...
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any], where: str) -> InputConfig:
        data = dict(data)
        kind = data.pop("kind", "request")
        if kind not in INPUT_KINDS:
            raise ConfigError(f"{where}: inputs.{name}.kind is {kind!r}; one of {INPUT_KINDS}")
        shape = data.pop("shape", None)
        if shape is not None:
            shape = _parse_shape(shape, f"{where}: inputs.{name}.shape")
        value = data.pop("value", None)
        if kind == "constant" and value is None:
            raise ConfigError(f"{where}: inputs.{name} is constant but has no value")
        rng = data.pop("range", None)
        if rng is not None:
            if (
                not isinstance(rng, list)
                or len(rng) != 2
                or not all(isinstance(v, int | float) for v in rng)
                or rng[0] >= rng[1]
            ):
                raise ConfigError(f"{where}: inputs.{name}.range must be [low, high], low < high")
            rng = (float(rng[0]), float(rng[1]))
        fmt = data.pop("format", None)
        if fmt is not None and (fmt not in INPUT_FORMATS or kind != "request"):
            raise ConfigError(
                f"{where}: inputs.{name}.format is {fmt!r}; a request input's format is one of "
                f"{', '.join(INPUT_FORMATS)}"
            )
        return cls(name, cast(InputKind, kind), shape, value, rng, fmt, MappingProxyType(data))


def _parse_shape(raw: Any, where: str) -> Shape:
    if not isinstance(raw, list) or not all(
        (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or (isinstance(d, str) and d)
        for d in raw
    ):
        raise ConfigError(f"{where} must be a list of sizes and dim names, got {raw!r}")
    return tuple(cast(Dim, d) for d in raw)


def _parse_dim(name: str, raw: Any, where: str) -> DimRange:
    if isinstance(raw, int) and not isinstance(raw, bool):
        lo = opt = hi = cast(Any, raw)  # Any like the other forms; all are checked below
    elif isinstance(raw, list) and len(raw) == 3:
        lo, opt, hi = raw
    elif isinstance(raw, dict) and set(raw) <= {"min", "opt", "max"} and {"min", "max"} <= set(raw):
        lo, hi = raw["min"], raw["max"]
        opt = raw.get("opt", lo)
    else:
        raise ConfigError(
            f"{where}: dims.{name} must be a size, [min, opt, max] or {{ min, opt, max }}, "
            f"got {raw!r}"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, opt, hi)):
        raise ConfigError(f"{where}: dims.{name} bounds must be integers, got {raw!r}")
    try:
        return DimRange(lo, opt, hi)
    except ConfigError as exc:
        raise ConfigError(f"{where}: dims.{name}: {exc}") from exc


@dataclass(frozen=True)
class ModelConfig:
    """A model's model.toml, validated; defaults where the file (or the whole file) is absent."""

    name: str
    version: str = "1"
    source: str = "model.onnx"
    description: str = ""
    precision: Precision = "fp32"
    labels: tuple[str, ...] = ()
    dims: Mapping[str, DimRange] = field(default_factory=dict)
    inputs: Mapping[str, InputConfig] = field(default_factory=dict)
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        """Read ``model_dir/model.toml`` (optional) into a ModelConfig."""
        path = model_dir / "model.toml"
        data = load_toml(path) if path.exists() else {}
        return cls.from_dict(data, default_name=model_dir.resolve().name, where=str(path))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, default_name: str, where: str = "model.toml"
    ) -> ModelConfig:
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(_TOP_KEYS))}"
            )
        name = str(data.get("name", default_name))
        precision = data.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ConfigError(f"{where}: precision is {precision!r}; one of {PRECISIONS}")
        labels = data.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"{where}: labels must be a list of strings")
        dims = {k: _parse_dim(k, v, where) for k, v in _table(data, "dims", where).items()}
        inputs = {
            k: InputConfig.from_dict(k, _table(v, k, where, "inputs."), where)
            for k, v in _table(data, "inputs", where).items()
        }
        outputs = {
            k: MappingProxyType(_table(v, k, where, "outputs."))
            for k, v in _table(data, "outputs", where).items()
        }
        tolerance = None
        if "parity" in data:
            par = _table(data, "parity", where)
            base = Tolerance.for_precision(cast(Precision, precision))
            try:
                tolerance = Tolerance(
                    float(par.get("atol", base.atol)), float(par.get("rtol", base.rtol))
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: parity.atol/rtol must be numbers") from exc
        sections = {k: MappingProxyType(_table(data, k, where)) for k in _RAW_SECTIONS if k in data}
        return cls(
            name=name,
            version=str(data.get("version", "1")),
            source=str(data.get("source", "model.onnx")),
            description=str(data.get("description", "")),
            precision=cast(Precision, precision),
            labels=tuple(labels),
            dims=MappingProxyType(dims),
            inputs=MappingProxyType(inputs),
            outputs=MappingProxyType(outputs),
            tolerance=tolerance,
            sections=MappingProxyType(sections),
        )

    def tolerance_for(self, precision: Precision) -> Tolerance:
        return self.tolerance or Tolerance.for_precision(precision)

    def constants(self) -> dict[str, Any]:
        """Inputs declared constant, with their values (as written in model.toml)."""
        return {n: c.value for n, c in self.inputs.items() if c.kind == "constant"}


def _table(data: Any, key: str, where: str, prefix: str = "") -> dict[str, Any]:
    value = data.get(key, {}) if prefix == "" else data
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {prefix}{key} must be a table")
    return value


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
    max_queued: int = 1000  # bounded offline publish queue

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"broker port {self.port} is not a TCP port")
        if self.protocol not in (4, 5):
            raise ConfigError(f"broker protocol {self.protocol}: use 5 or 4 (MQTT 3.1.1)")


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
    stats_interval: float = 60.0
    events: bool = True
    sources: tuple[SourceConfig, ...] = ()  # [[sources]]: cameras the daemon pulls from

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
    """One ``[[sources]]`` table: a camera the daemon pulls a snapshot from (on an interval, or
    when a message arrives on ``trigger``) and feeds to ``model``; results that pass ``labels``
    and ``min_score`` become events on the source's own events topic."""

    name: str  # a topic level: [a-zA-Z0-9_-]
    model: str
    url: str  # http:// or https://, answering with a JPEG or PNG
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
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: url {redact_url(self.url)!r} must be http:// or https://")
        if self.trigger is not None and not _topic_filter_ok(self.trigger):
            raise ConfigError(f"{where}: trigger {self.trigger!r} is not an MQTT topic filter")
        if self.interval <= 0 and self.trigger is None:
            raise ConfigError(f"{where}: give an interval (seconds) or a trigger topic, or both")
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
        missing = [k for k in ("name", "model", "url") if k not in table]
        if missing:
            raise ConfigError(f"{at}: missing {', '.join(missing)}")
        for key in ("name", "model", "url", "trigger"):
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
                url=table["url"],
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
