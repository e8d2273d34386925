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

The file is decoded strictly (:mod:`edgert.schema`) into :class:`ModelFile`, the reference for
every key; the tables later layers act on are in :mod:`edgert.sections`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from edgert.errors import ConfigError, ConfigKeyError
from edgert.schema import Table, decode, load_toml, located, show
from edgert.sections import (
    BatchingSection,
    HomeAssistantSection,
    PostprocessSection,
    Preprocessing,
    StateSection,
    TensorRTSection,
)
from edgert.spec import DimRange

__all__ = [
    "INPUT_FORMATS",
    "INPUT_KINDS",
    "PRECISIONS",
    "InputConfig",
    "InputKind",
    "ModelConfig",
    "ModelFile",
    "OutputConfig",
    "Precision",
    "Tolerance",
    "load_toml",
]

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
InputKind = Literal["request", "constant", "carried", "windowed"]
INPUT_KINDS: tuple[InputKind, ...] = ("request", "constant", "carried", "windowed")
InputFormat = Literal["json", "raw", "npy", "jpeg", "png", "wav"]
INPUT_FORMATS: tuple[InputFormat, ...] = ("json", "raw", "npy", "jpeg", "png", "wav")

Name = Annotated[str, Meta(min_length=1)]
Shape = Annotated[
    tuple[Annotated[int, Meta(ge=0)] | Name, ...],
    Meta(description="a list of sizes and dim names"),
]
# Which kind of input each kind-specific key belongs to.
_KIND_KEYS: dict[str, InputKind] = {
    "format": "request",
    "value": "constant",
    "from_output": "carried",
    "initial": "carried",
    "batch_axis": "carried",
    "context": "windowed",
    "chunk": "windowed",
}
_KIND_NEEDS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "carried": ("from_output",),
    "windowed": ("context", "chunk"),
}


class InputConfig(Table, forbid_unknown_fields=True, frozen=True):
    """``[inputs.<name>]``: what model.toml says about one input. Kinds: ``request`` (a device
    sends it), ``constant`` (``value``), ``carried`` (``from_output`` fed back on a stream's
    next request, from ``initial``, streams stacked along ``batch_axis``), ``windowed`` (the
    device sends ``chunk`` samples, the stream's last ``context`` are put before them)."""

    kind: InputKind = "request"
    shape: Shape | None = None  # rename or fix dims the exporter left unnamed
    range: tuple[float, float] | None = None  # of seeded random samples for the parity check
    format: InputFormat | None = None  # how a device sends it without a content type
    value: Any = None
    from_output: str | None = None
    initial: float | None = None  # default 0
    batch_axis: Annotated[int, Meta(ge=0)] | None = None  # default 0
    context: Annotated[int, Meta(ge=0)] | None = None
    chunk: Annotated[int, Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, kind in _KIND_KEYS.items():
            if getattr(self, key) is not None and self.kind != kind:
                raise ConfigKeyError(key, f'applies to kind = "{kind}" inputs, not "{self.kind}"')
        for key in _KIND_NEEDS.get(self.kind, ()):
            if getattr(self, key) is None:
                raise ConfigKeyError(key, f'missing; a kind = "{self.kind}" input needs it')
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ConfigKeyError(
                "range", f"expected [low, high] with low < high, got {show(self.range)}"
            )


class OutputConfig(Table, forbid_unknown_fields=True, frozen=True):
    """``[outputs.<name>]``: what model.toml says about one output."""

    shape: Shape | None = None  # e.g. ["batch", 4]: a converter's own name for the batch axis


class DimTable(Table, forbid_unknown_fields=True, frozen=True):
    min: int
    max: int
    opt: int | None = None  # default: min


class ParitySection(Table, forbid_unknown_fields=True, frozen=True):
    """``[parity]``: the tolerances of the parity check, over the precision's own."""

    atol: Annotated[float, Meta(ge=0)] | None = None
    rtol: Annotated[float, Meta(ge=0)] | None = None


# Bounds are checked by DimRange, not here: msgspec 0.23 corrupts memory on a union of a
# constrained int and a fixed-length tuple.
Dim = Annotated[
    int | tuple[int, int, int] | DimTable,
    Meta(description="a size, [min, opt, max] or { min, opt, max } of integers"),
]


class ModelFile(Table, forbid_unknown_fields=True, frozen=True):
    """The whole of model.toml; every key optional."""

    name: Name | None = None  # default: the model directory's name
    version: Name | int = "1"  # the model's own version, echoed in replies
    source: Name = "model.onnx"
    description: str = ""
    precision: Precision = "fp32"  # the default build precision
    labels: Annotated[
        tuple[str, ...] | str,
        Meta(description="a list of strings, or the name of a labels file beside model.toml"),
    ] = ()
    dims: dict[str, Dim] = msgspec.field(default_factory=dict)  # bounds of dynamic axes, by name
    inputs: dict[str, InputConfig] = msgspec.field(default_factory=dict)
    outputs: dict[str, OutputConfig] = msgspec.field(default_factory=dict)
    parity: ParitySection | None = None
    preprocess: Preprocessing | None = None
    postprocess: PostprocessSection | None = None
    batching: BatchingSection = BatchingSection()
    state: StateSection = StateSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()
    tensorrt: TensorRTSection = TensorRTSection()


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
class ModelConfig:
    """A model's model.toml, resolved; defaults where the file (or the whole file) is absent.
    ``where`` is the file as errors name it (checks against the model's IO use it too)."""

    name: str
    version: str = "1"
    source: str = "model.onnx"
    description: str = ""
    precision: Precision = "fp32"
    labels: tuple[str, ...] = ()
    dims: Mapping[str, DimRange] = field(default_factory=dict)
    inputs: Mapping[str, InputConfig] = field(default_factory=dict)
    outputs: Mapping[str, OutputConfig] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    preprocess: Preprocessing | None = None
    postprocess: PostprocessSection | None = None
    batching: BatchingSection = field(default_factory=BatchingSection)
    state: StateSection = field(default_factory=StateSection)
    homeassistant: HomeAssistantSection = field(default_factory=HomeAssistantSection)
    tensorrt: TensorRTSection = field(default_factory=TensorRTSection)
    where: str = field(default="model.toml", compare=False)

    @classmethod
    def load(cls, model_dir: Path) -> ModelConfig:
        """Read ``model_dir/model.toml`` (optional) into a ModelConfig."""
        path = model_dir / "model.toml"
        data = load_toml(path) if path.exists() else {}
        return cls.from_dict(
            data, default_name=model_dir.resolve().name, where=str(path), base_dir=model_dir
        )

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        default_name: str,
        where: str = "model.toml",
        base_dir: Path = Path("."),
    ) -> ModelConfig:
        """A parsed model.toml (``where`` names it in errors; a labels file is read from
        ``base_dir``)."""
        file = decode(data, ModelFile, where)
        labels = file.labels
        if isinstance(labels, str):  # a labels file beside model.toml, one a line
            labels = _read_labels(base_dir / labels, where)
        tolerance = None
        if file.parity is not None:
            base = Tolerance.for_precision(file.precision)
            atol, rtol = file.parity.atol, file.parity.rtol
            tolerance = Tolerance(
                base.atol if atol is None else atol, base.rtol if rtol is None else rtol
            )
        return cls(
            name=file.name or default_name,
            version=str(file.version),
            source=file.source,
            description=file.description,
            precision=file.precision,
            labels=tuple(labels),
            dims=MappingProxyType({k: _dim_range(k, v, where) for k, v in file.dims.items()}),
            inputs=MappingProxyType(dict(file.inputs)),
            outputs=MappingProxyType(dict(file.outputs)),
            tolerance=tolerance,
            preprocess=file.preprocess,
            postprocess=file.postprocess,
            batching=file.batching,
            state=file.state,
            homeassistant=file.homeassistant,
            tensorrt=file.tensorrt,
            where=where,
        )

    def problem(self, section: str | None, key: str | None, message: str) -> ConfigError:
        """A ConfigError of this file's form: ``<file>: [section] key: message``."""
        return ConfigError(f"{located(self.where, section, key)}: {message}")

    def tolerance_for(self, precision: Precision) -> Tolerance:
        return self.tolerance or Tolerance.for_precision(precision)

    def constants(self) -> dict[str, Any]:
        """Inputs declared constant, with their values (as written in model.toml)."""
        return {n: c.value for n, c in self.inputs.items() if c.kind == "constant"}


def _dim_range(name: str, raw: int | tuple[int, int, int] | DimTable, where: str) -> DimRange:
    if isinstance(raw, DimTable):
        bounds = (raw.min, raw.min if raw.opt is None else raw.opt, raw.max)
    else:
        bounds = (raw, raw, raw) if isinstance(raw, int) else raw
    try:
        return DimRange(*bounds)
    except ConfigError as exc:
        raise ConfigError(f"{located(where, 'dims', name)}: {exc.message}") from exc


def _read_labels(path: Path, where: str) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{located(where, key='labels')}: labels file {path}: {reason}") from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())
