"""Tensor specs: pure value types describing a model's inputs and outputs.

A shape is a tuple of dims; a dim is an ``int`` (fixed) or a ``str`` naming a dynamic axis
("batch"). Dynamic axes get their bounds (:class:`DimRange`) from model.toml; the same name on
several inputs means the same axis, with one set of bounds.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgert.errors import ConfigError, InputError

__all__ = [
    "DType",
    "Dim",
    "DimRange",
    "ModelIO",
    "Shape",
    "TensorSpec",
    "check_shared_dims",
    "concrete_shape",
]

Dim = int | str
Shape = tuple[Dim, ...]


class DType(str, enum.Enum):
    """Element types edgert carries end to end, named as numpy names them."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    FLOAT64 = "float64"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    BOOL = "bool"

    @property
    def numpy(self) -> np.dtype[Any]:
        return _NUMPY_DTYPES[self.value]  # checked on every request: built once

    @property
    def is_float(self) -> bool:
        return self in (DType.FLOAT32, DType.FLOAT16, DType.FLOAT64)

    @classmethod
    def of(cls, value: Any) -> DType:
        """The DType of a numpy dtype, array, or dtype name; ConfigError if edgert has none."""
        # Arrays carry a dtype; numpy scalar *types* (np.float32) have a `dtype` descriptor instead.
        dtype = getattr(value, "dtype", None)
        try:
            name = np.dtype(dtype if isinstance(dtype, np.dtype) else value).name
            return cls(name)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"unsupported dtype {value!r}; supported: {', '.join(d.value for d in cls)}"
            ) from exc


_NUMPY_DTYPES = {d.value: np.dtype(d.value) for d in DType}


@dataclass(frozen=True)
class DimRange:
    """Bounds of one dynamic axis: the smallest, the usual, and the largest size."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                f"dim bounds must satisfy 0 <= min <= opt <= max, got "
                f"min={self.min} opt={self.opt} max={self.max}"
            )

    def __contains__(self, size: object) -> bool:
        return isinstance(size, int) and self.min <= size <= self.max

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


def concrete_shape(
    shape: Shape, bounds: Mapping[str, DimRange], which: Literal["min", "opt", "max"] = "opt"
) -> tuple[int, ...]:
    """The shape with every named dim replaced by its ``which`` bound."""
    return tuple(d if isinstance(d, int) else getattr(bounds[d], which) for d in shape)


def _values_text(dtype: np.dtype[Any]) -> str:
    """What an array of ``dtype`` holds, as a device would say it: numpy names a JSON list of
    strings ``str672`` and one with a null or a nested list ``object``."""
    if dtype.kind in "US":
        return "string values"
    if dtype.kind == "O":
        return "null or mixed values"
    return f"{dtype.name} values"


def _fits_int(array: np.ndarray, target: np.dtype[Any]) -> bool:
    """Whether every value of an integer (or bool) array fits the integer type ``target``."""
    info = np.iinfo(target)
    return bool(array.min() >= info.min and array.max() <= info.max)


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: element type and shape (named dims are dynamic)."""

    name: str
    dtype: DType
    shape: Shape

    @property
    def dynamic_dims(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    @property
    def is_dynamic(self) -> bool:
        return bool(self.dynamic_dims)

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.value}[{dims}]"

    def check(self, array: np.ndarray, bounds: Mapping[str, DimRange]) -> None:
        """Raise InputError unless ``array`` fits this spec (dtype exact, dims within bounds)."""
        if array.dtype != self.dtype.numpy:
            raise InputError(
                f"input '{self.name}' has dtype {array.dtype.name}, the model expects "
                f"{self.dtype.value}"
            )
        if array.ndim != len(self.shape):
            raise InputError(
                f"input '{self.name}' has shape {list(array.shape)}, the model expects rank "
                f"{len(self.shape)} {self.shape_text()}"
            )
        seen: dict[str, int] = {}
        for axis, (dim, size) in enumerate(zip(self.shape, array.shape, strict=True)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(
                        f"input '{self.name}' has shape {list(array.shape)}, the model expects "
                        f"{self.shape_text()} (axis {axis} must be {dim})"
                    )
                continue
            if dim in seen and seen[dim] != size:
                raise InputError(
                    f"input '{self.name}' axes named '{dim}' differ: {seen[dim]} and {size}"
                )
            seen[dim] = size
            rng = bounds.get(dim)
            if rng is not None and size not in rng:
                raise InputError(
                    f"input '{self.name}' axis {axis} ('{dim}') is {size}, allowed "
                    f"{rng.min}..{rng.max}"
                )

    def coerce(self, value: Any) -> np.ndarray:
        """``value`` (nested list, scalar or array) as an array of this dtype; InputError if the
        conversion would change its kind (float → int, number → bool) or it is not numeric."""
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InputError(f"input '{self.name}' is not a rectangular array: {exc}") from exc
        target = self.dtype.numpy
        if array.dtype == target:
            return array
        # Integer → integer is checked by value below: numpy's same_kind refuses signed → unsigned,
        # yet JSON lists arrive as int64 and uint8 images are common.
        int_to_int = array.dtype.kind in "biu" and target.kind in "iu"
        if array.dtype.kind not in "biuf" or not (
            int_to_int or np.can_cast(array.dtype, target, "same_kind")
        ):
            raise InputError(
                f"input '{self.name}' has {_values_text(array.dtype)}, the model expects "
                f"{self.dtype.value}"
            )
        if array.size and target.kind in "iu" and not _fits_int(array, target):
            raise InputError(f"input '{self.name}' has values outside {self.dtype.value}'s range")
        return array.astype(target)

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.value, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        try:
            shape = tuple(d if isinstance(d, int) else str(d) for d in data["shape"])
            return cls(str(data["name"]), DType(data["dtype"]), shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid tensor spec {dict(data)!r}: {exc}") from exc


def check_shared_dims(specs: Iterable[TensorSpec], arrays: Mapping[str, np.ndarray]) -> None:
    """InputError unless each named dim has one size across all of ``arrays`` it appears in
    (a batch axis shared by two inputs must agree)."""
    named: dict[str, tuple[str, int]] = {}
    for spec in specs:
        array = arrays.get(spec.name)
        if array is None:
            continue
        for dim, size in zip(spec.shape, array.shape, strict=False):
            if isinstance(dim, str):
                first = named.setdefault(dim, (spec.name, size))
                if first[1] != size:
                    raise InputError(
                        f"axis '{dim}' is {first[1]} in input '{first[0]}' but {size} in "
                        f"input '{spec.name}'"
                    )


@dataclass(frozen=True)
class ModelIO:
    """A model's request-facing IO: input and output specs, and the bounds of dynamic dims."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Mapping[str, DimRange]

    def input(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)

    def to_dict(self) -> dict[str, object]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "dims": {k: v.as_list() for k, v in self.dims.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelIO:
        inputs = tuple(TensorSpec.from_dict(s) for s in data["inputs"])  # type: ignore[attr-defined]
        outputs = tuple(TensorSpec.from_dict(s) for s in data["outputs"])  # type: ignore[attr-defined]
        dims = {k: DimRange(*v) for k, v in data["dims"].items()}  # type: ignore[attr-defined]
        return cls(inputs, outputs, dims)
