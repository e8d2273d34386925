"""Model configuration (``engines/<model>/model.toml``): frozen value types, validated when built.

A model directory needs no model.toml when its ONNX has fixed shapes; the directory name is then
the model's name. Example::

    name = "occupancy"            # default: the directory name
    version = "3"                 # the model's own version, echoed in replies
    source = "model.onnx"         # default
    precision = "fp32"            # fp32 | fp16 | int8 (default build precision)
    labels = ["empty", "occupied"]  # or a labels file beside it: labels = "labels.txt"

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

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

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
    "InputConfig",
    "InputKind",
    "ModelConfig",
    "Precision",
    "Tolerance",
    "load_toml",
    "parse_shape",
    "table",
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
            shape = parse_shape(shape, f"{where}: inputs.{name}.shape")
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


def parse_shape(raw: Any, where: str) -> Shape:
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
        if isinstance(data.get("labels"), str):  # a labels file beside model.toml, one a line
            labels_path = model_dir / data["labels"]
            try:
                text = labels_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{path}: labels file {labels_path}: {exc.strerror}") from exc
            data = {**data, "labels": [line.strip() for line in text.splitlines() if line.strip()]}
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


table = _table  # for edgert.settings
