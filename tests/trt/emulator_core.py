"""Shared pieces of the TensorRT emulator: per-module state, enums, loggers, Dims, IHostMemory,
and the argument checks that make emulated calls as strict as pybind11's.

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

import enum
import operator
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = [
    "Dims",
    "HostMemory",
    "Loggers",
    "State",
    "TrtEnum",
    "TrtOrderedEnum",
    "as_dims",
    "call_override",
    "check_arg",
    "check_initialized",
    "emit",
    "new_object",
    "no_constructor",
    "overrides",
    "to_int",
]

DEFAULT_SM = "sm_87"


@dataclass
class State:
    """What one emulated ``tensorrt`` module knows about itself and the emulated machine."""

    version: str
    major: int
    module: ModuleType = field(repr=False)
    sm: str | None = None  # None: $EMULATOR_SM, else sm_87
    dla_cores: int | None = None  # None: $EMULATOR_DLA_CORES, else 0
    global_logger: Any = field(default=None, repr=False)

    def current_sm(self) -> str:
        """The emulated GPU, read at each call so a test can move a plan to "another GPU"."""
        sm = self.sm or os.environ.get("EMULATOR_SM") or DEFAULT_SM
        if not (sm.startswith("sm_") and sm[3:].isdigit() and len(sm) >= 5):
            raise ValueError(f"EMULATOR_SM must look like sm_87, not {sm!r}")
        return sm

    def num_dla_cores(self) -> int:
        if self.dla_cores is not None:
            return self.dla_cores
        return int(os.environ.get("EMULATOR_DLA_CORES", "0"))

    @property
    def trt(self) -> Any:
        return self.module


class TrtEnum(enum.Enum):
    """A pybind11 enum: strict equality (never equal to an int), ``int()`` and ``__index__``."""

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return int(self.value)

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, self.value))


class TrtOrderedEnum(TrtEnum):
    """A ``py::arithmetic()`` enum (ILogger.Severity): ordered among its own members."""

    def __lt__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return int(self.value) < int(other.value)  # type: ignore[attr-defined]

    def __le__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return int(self.value) <= int(other.value)  # type: ignore[attr-defined]

    def __gt__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return int(self.value) > int(other.value)  # type: ignore[attr-defined]

    def __ge__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return int(self.value) >= int(other.value)  # type: ignore[attr-defined]


class Dims(tuple):  # type: ignore[type-arg]
    """``trt.Dims``: a shape. Compares equal to tuples and lists, indexes and iterates like a
    tuple; tuple arithmetic and tuple methods are refused, as on the real class."""

    def __new__(cls, shape: Iterable[int] = ()) -> Dims:
        return super().__new__(cls, (operator.index(d) for d in shape))

    def __init__(self, shape: Iterable[int] = ()) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):  # tuple's count() and index() are not on the real class
            raise AttributeError(f"'tensorrt.Dims' object has no attribute '{name}'")
        return super().__getattribute__(name)

    def _refused(self, *args: object) -> Any:
        raise TypeError("tensorrt.Dims does not support this operation")

    __add__ = __radd__ = __mul__ = __rmul__ = _refused


def as_dims(value: Any, func: str) -> Dims:
    """pybind11's implicit Dims conversion: a Dims, tuple or list of ints."""
    if isinstance(value, Dims):
        return value
    if isinstance(value, (tuple, list)):
        try:
            return Dims(value)
        except TypeError:
            pass
    raise TypeError(f"{func}(): incompatible function arguments (expected Dims); got {value!r}")


class HostMemory(bytes):
    """Bytes with ``IHostMemory``'s face: the buffer protocol (``bytes(m)``, ``memoryview(m)``,
    ``file.write(m)``), ``nbytes`` and ``dtype``; bytes' own API is refused, since the real
    object has none of it (``len(plan)`` on a real IHostMemory is a TypeError)."""

    _rt: State

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in ("nbytes", "dtype"):
            raise AttributeError(f"'tensorrt.IHostMemory' object has no attribute '{name}'")
        return super().__getattribute__(name)

    def _no(self, *args: object) -> Any:
        raise TypeError("'tensorrt.IHostMemory' object does not support this operation")

    __len__ = __getitem__ = __iter__ = __contains__ = _no
    __add__ = __mul__ = __rmul__ = __mod__ = _no

    def __bool__(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__

    def __bytes__(self) -> bytes:
        return bytes(memoryview(self))

    def __repr__(self) -> str:
        return f"<tensorrt.IHostMemory object at {id(self):#x}>"

    @property
    def nbytes(self) -> int:
        return bytes.__len__(self)

    @property
    def dtype(self) -> Any:
        return self._rt.trt.DataType.UINT8


def no_constructor(self: object, *args: object, **kwargs: object) -> None:
    raise TypeError(f"tensorrt.{type(self).__name__}: No constructor defined!")


def new_object(cls: type, **attrs: Any) -> Any:
    """An instance of a class users cannot construct (INetworkDefinition, ICudaEngine...)."""
    obj = object.__new__(cls)
    obj.__dict__.update(attrs)
    return obj


def check_arg(value: Any, expected: type, func: str, param: str, allow_none: bool = False) -> Any:
    """TypeError unless ``value`` is an instance of this module's ``expected`` class."""
    if value is None and allow_none:
        return value
    if not isinstance(value, expected):
        raise TypeError(
            f"{func}(): incompatible function arguments. The following argument types are "
            f"supported:\n    1. ({param}: tensorrt.{expected.__qualname__})\n\nInvoked with: "
            f"{value!r}"
        )
    return value


def check_initialized(obj: Any, base: type, func: str) -> None:
    """pybind11 refuses a subclass whose ``__init__`` did not call the base class's."""
    check_arg(obj, base, func, "arg")
    if not getattr(obj, "_trt_initialized", False):
        raise TypeError(f"{type(obj).__name__}.__init__() must be called when overriding __init__")


def to_int(value: Any, func: str) -> int:
    if isinstance(value, (float, str, bytes)) or value is None:
        raise TypeError(f"{func}(): incompatible function arguments (expected int); got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{func}(): incompatible function arguments (expected int); got {value!r}"
        ) from None


class Loggers:
    """ILogger and Logger. Users subclass ILogger and override ``log(severity, msg)``."""

    class ILogger:
        _rt: State

        def __init__(self) -> None:
            self._trt_initialized = True

        def log(self, severity: Any, msg: str) -> None:
            raise RuntimeError('Tried to call pure virtual function "ILogger::log"')

    class Logger:
        """The bindings' default logger: prints to stdout from ``min_severity`` up."""

        _rt: State

        def __init__(self, min_severity: Any = None) -> None:
            severity = self._rt.trt.ILogger.Severity
            if min_severity is None:
                min_severity = severity.WARNING
            check_arg(min_severity, severity, "Logger.__init__", "min_severity")
            self._trt_initialized = True
            self._min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            check_arg(severity, self._rt.trt.ILogger.Severity, "log", "severity")
            if severity <= self._min_severity:
                letter = "E" if severity.name == "INTERNAL_ERROR" else severity.name[0]
                stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
                print(f"[{stamp}] [TRT] [{letter}] {msg}", flush=True)

        @property
        def min_severity(self) -> Any:
            return self._min_severity

        @min_severity.setter
        def min_severity(self, value: Any) -> None:
            check_arg(value, self._rt.trt.ILogger.Severity, "min_severity", "value")
            self._min_severity = value


def register_logger(rt: State, logger: Any, what: str) -> None:
    """TensorRT keeps one process-wide logger; a different one later only draws a warning."""
    if rt.global_logger is None:
        rt.global_logger = logger
    elif rt.global_logger is not logger:
        emit(
            logger,
            rt,
            "WARNING",
            f"The logger passed into {what} differs from one already provided for an existing "
            "builder, runtime, or refitter. Uses of the global logger, returned by "
            "nvinfer1::getLogger(), will return the existing value.",
        )


def emit(logger: Any, rt: State, severity: str, msg: str) -> None:
    """Call ``logger.log`` as TensorRT's trampoline does: an exception in it is printed and
    swallowed, never raised into the API call."""
    try:
        logger.log(rt.trt.ILogger.Severity[severity], msg)
    except Exception as exc:
        print(f"[ERROR] Exception caught in log(): {exc}", file=sys.stderr)


def api_error(code: int, kind: str, where: str, text: str) -> str:
    """An error line shaped like TensorRT's ("Error Code 4: Internal Error (...)")."""
    return f"{code}: [{where}] Error Code {code}: {kind} ({text})"


def overrides(obj: Any, method: str) -> bool:
    """Whether a user subclass of a TensorRT class defines ``method``."""
    return any(method in vars(cls) for cls in type(obj).__mro__ if cls.__module__ != "tensorrt")


def call_override(obj: Any, method: str, what: str, *args: Any) -> tuple[bool, Any]:
    """Call a Python override as TensorRT's trampolines do: a missing one (a pure virtual) or
    an exception is printed to stderr, never raised. Returns (called cleanly, result)."""
    if not overrides(obj, method):
        print(
            f'[ERROR] Exception caught in {what}(): Tried to call pure virtual function "{method}"',
            file=sys.stderr,
        )
        return False, None
    try:
        return True, getattr(obj, method)(*args)
    except Exception as exc:
        print(f"[ERROR] Exception caught in {what}(): {exc}", file=sys.stderr)
        return False, None
