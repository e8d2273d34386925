"""An emulator of the TensorRT Python API subset edgert uses. This is NOT TensorRT.

TensorRT and a GPU are absent where edgert is developed and tested, so the whole compile → load
→ infer path of the TensorRT backend runs against this stand-in, installed by a fixture as
``sys.modules["tensorrt"]``:

- **Names and parameters are the real ones.** ``make_tensorrt(version)`` builds a module for
  TensorRT 8.6.1, 10.3.0 or 11.4.0.106 holding only names that version's bindings define, with
  their parameter names; ``tests/trt/test_emulator.py`` checks both against the real bindings
  (introspected by ``tests/trt/bindings.py``). What edgert does not use is left out: a missing
  name is an AttributeError here, never a silent success.
- **Strict about call order and failure semantics.** Failures come back as TensorRT's do: None
  or False plus error lines through the ``ILogger`` given to the Builder, parser or Runtime
  (exceptions only where the bindings raise: wrong argument types, a profile's inconsistent
  shapes, an unknown profile index; and, stricter, an out-of-range ``get_error`` index).
  Exceptions raised by user callbacks (loggers, output allocators, progress monitors) are
  printed and swallowed, as the real trampolines do; a subclass whose ``__init__`` skipped the
  base class's is refused with pybind11's TypeError.
- **Computes with ONNX Runtime (CPU).** A "plan" is the ONNX model plus a header (emulated
  version, GPU, precision flags, profiles, IO tensors) and a checksum; ``execute_async_v3``
  reads inputs from the raw addresses given to ``set_tensor_address`` (memory from
  :mod:`tests.trt.host_cuda`), runs the model and writes the outputs there, or into memory an
  ``IOutputAllocator`` returns.

Per version (each checked against the bindings): 8.6 needs ``EXPLICIT_BATCH`` (without it the
parser fails as on implicit-batch networks), imports int64 IO as INT32 (as onnx-tensorrt 8.x's
``convertDtype`` does; the emulator casts on the way in and out), has FP16/INT8 builder flags,
``platform_has_fast_fp16``, ``device_memory_size``, no ``IProgressMonitor``, no
``ParserError.node_name``. 10.3 adds INT64, ``IProgressMonitor``, ``node_name``,
``device_memory_size_v2`` and ``STRONGLY_TYPED`` (``EXPLICIT_BATCH`` is still defined and
ignored). 11.4 is strongly typed only: no FP16/INT8 flags, no ``platform_has_fast_*``, no
``device_memory_size``, no ``EXPLICIT_BATCH``.

Emulated behaviour worth knowing:

- The parser refuses, as the real one reports it, any node outside the default domain (ONNX-ML,
  com.microsoft: "No importer registered for op: ..." then "Plugin not found"), string and
  non-tensor values, the ops onnx-tensorrt marks unsupported, and (a stand-in for the real
  importers' failures on later op versions) any op defined after the version's newest opset:
  17 on 8.6, 20 on 10.3, 25 on 11.x (``emulator_onnx.PARSER_MAX_OPSET``).

- The GPU is ``$EMULATOR_SM`` (default ``sm_87``, a Jetson Orin), read at each build and load,
  or ``make_tensorrt(..., sm=)`` / ``module._emulator.sm``; DLA cores: ``$EMULATOR_DLA_CORES``
  (default 0) or ``dla_cores=``. A plan loads on the version and GPU that built it, on a later
  version if built ``VERSION_COMPATIBLE`` (8.6+ plans on 10; only 10+ plans on 11; with
  ``engine_host_code_allowed`` unless ``EXCLUDE_LEAN_RUNTIME``), on another discrete Ampere+
  GPU (not a Jetson's, not with DLA) if built ``AMPERE_PLUS``.
- A build's time: ``$EMULATOR_BUILD_DELAY`` seconds before it starts (nothing reported
  meanwhile), ``$EMULATOR_STEP_DELAY`` seconds after each step of its phases (so a progress
  monitor, on 10 and 11, sees a slow build advance); both default to 0.
- FP16 by builder flag (8.6/10): inputs and float32 outputs are rounded through float16, so a
  model that overflows or loses precision in FP16 fails a parity check. On 11 the ONNX's own
  types decide (ONNX Runtime runs the FP16 ONNX as it is).
- Work queued on a :mod:`tests.trt.host_cuda` stream runs at ``synchronize()``; an output with
  a data-dependent shape (NonZero, NonMaxSuppression...) or an output allocator makes
  ``execute_async_v3`` run at once, as TensorRT synchronizes to learn the size. Every address
  must lie inside a live device buffer big enough for the tensor: stricter than TensorRT, which
  cannot check a raw pointer and corrupts memory or faults (``cudaErrorIllegalAddress``).

What it cannot emulate: kernels, tactics, timing and real FP16/INT8 arithmetic inside the
network (only IO rounding); TensorRT's exact log texts (the shapes of the key errors are kept);
layer-level support checks beyond refused ops and types; per-layer DLA placement; refit, plugins,
weight streaming, CUDA graphs; device memory accounting of engines and contexts.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from tests.trt.emulator_build import BuildClasses
from tests.trt.emulator_config import ConfigClasses
from tests.trt.emulator_core import (
    Dims,
    HostMemory,
    Loggers,
    State,
    TrtEnum,
    TrtOrderedEnum,
    no_constructor,
)
from tests.trt.emulator_exec import ExecClasses
from tests.trt.emulator_parse import ParseClasses

__all__ = ["VERSIONS", "make_tensorrt"]

VERSIONS = ("8.6.1", "10.3.0", "11.4.0.106")

_ALL = frozenset({8, 10, 11})
_TEN_UP = frozenset({10, 11})
_BEFORE_11 = frozenset({8, 10})

# Enum members and their values in (8.6, 10.3, 11.4); None where that version has no such member.
_ENUMS: dict[str, dict[str, tuple[int | None, int | None, int | None]]] = {
    "DataType": {
        "FLOAT": (0, 0, 0),
        "HALF": (1, 1, 1),
        "INT8": (2, 2, 2),
        "INT32": (3, 3, 3),
        "BOOL": (4, 4, 4),
        "UINT8": (5, 5, 5),
        "INT64": (None, 8, 8),
    },
    "BuilderFlag": {
        "FP16": (0, 0, None),
        "INT8": (1, 1, None),
        "DEBUG": (2, 2, 2),
        "GPU_FALLBACK": (3, 3, 3),
        "REFIT": (5, 4, 4),
        "DISABLE_TIMING_CACHE": (6, 5, 5),
        "TF32": (7, 6, 6),
        "SPARSE_WEIGHTS": (8, 7, 7),
        "OBEY_PRECISION_CONSTRAINTS": (10, 9, None),
        "PREFER_PRECISION_CONSTRAINTS": (11, 10, None),
        "DIRECT_IO": (12, 11, 11),
        "VERSION_COMPATIBLE": (15, 13, 12),
        "EXCLUDE_LEAN_RUNTIME": (16, 14, 13),
    },
    "MemoryPoolType": {
        "WORKSPACE": (0, 0, 0),
        "DLA_MANAGED_SRAM": (1, 1, 1),
        "DLA_LOCAL_DRAM": (2, 2, 2),
        "DLA_GLOBAL_DRAM": (3, 3, 3),
        "TACTIC_DRAM": (4, 4, 4),
    },
    "NetworkDefinitionCreationFlag": {
        "EXPLICIT_BATCH": (0, 0, None),
        "STRONGLY_TYPED": (None, 1, 0),
    },
    "TensorIOMode": {"NONE": (0, 0, 0), "INPUT": (1, 1, 1), "OUTPUT": (2, 2, 2)},
    "DeviceType": {"GPU": (0, 0, 0), "DLA": (1, 1, 1)},
    "HardwareCompatibilityLevel": {
        "NONE": (0, 0, 0),
        "AMPERE_PLUS": (1, 1, 1),
        "SAME_COMPUTE_CAPABILITY": (None, None, 2),
    },
    "ExecutionContextAllocationStrategy": {
        "STATIC": (None, 0, 0),
        "ON_PROFILE_CHANGE": (None, 1, 1),
        "USER_MANAGED": (None, 2, 2),
    },
    "ErrorCode": {
        "SUCCESS": (0, 0, 0),
        "INTERNAL_ERROR": (1, 1, 1),
        "MEM_ALLOC_FAILED": (2, 2, 2),
        "MODEL_DESERIALIZE_FAILED": (3, 3, 3),
        "INVALID_VALUE": (4, 4, 4),
        "INVALID_GRAPH": (5, 5, 5),
        "INVALID_NODE": (6, 6, 6),
        "UNSUPPORTED_GRAPH": (7, 7, 7),
        "UNSUPPORTED_NODE": (8, 8, 8),
    },
}
_SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}

# Classes: (name, full class, base class names, constructible by users).
_CLASSES: list[tuple[str, type, tuple[str, ...], bool]] = [
    ("ILogger", Loggers.ILogger, (), True),
    ("Logger", Loggers.Logger, ("ILogger",), True),
    ("IProgressMonitor", ConfigClasses.IProgressMonitor, (), True),
    ("IOutputAllocator", ExecClasses.IOutputAllocator, (), True),
    ("ParserError", ParseClasses.ParserError, (), False),
    ("ITensor", ParseClasses.ITensor, (), False),
    ("INetworkDefinition", ParseClasses.INetworkDefinition, (), False),
    ("OnnxParser", ParseClasses.OnnxParser, (), True),
    ("IOptimizationProfile", ConfigClasses.IOptimizationProfile, (), False),
    ("ITimingCache", ConfigClasses.ITimingCache, (), False),
    ("IBuilderConfig", ConfigClasses.IBuilderConfig, (), False),
    ("Builder", BuildClasses.Builder, (), True),
    ("Runtime", ExecClasses.Runtime, (), True),
    ("ICudaEngine", ExecClasses.ICudaEngine, (), False),
    ("IExecutionContext", ExecClasses.IExecutionContext, (), False),
]

# Names that exist only in some versions (absent here: in every version).
_ONLY: dict[str, frozenset[int]] = {
    "IProgressMonitor": _TEN_UP,
    "ExecutionContextAllocationStrategy": _TEN_UP,
    "ParserError.node_name": _TEN_UP,
    "ParserError.node_operator": _TEN_UP,
    "IBuilderConfig.progress_monitor": _TEN_UP,
    "Builder.platform_has_fast_fp16": _BEFORE_11,
    "Builder.platform_has_fast_int8": _BEFORE_11,
    "Builder.platform_has_tf32": _BEFORE_11,
    "ICudaEngine.device_memory_size": _BEFORE_11,
    "ICudaEngine.device_memory_size_v2": _TEN_UP,
}

# Public names implemented differently per version: {name: {major: private attribute}}.
_VARIANTS: dict[str, dict[int, str]] = {
    "ICudaEngine.create_execution_context": {8: "_create_execution_context_8"},
}

_DATATYPE_ALIASES = {
    "float32": "FLOAT",
    "float16": "HALF",
    "int8": "INT8",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
    "uint8": "UINT8",
}
_ITEMSIZE = {"FLOAT": 4, "HALF": 2, "INT8": 1, "INT32": 4, "BOOL": 1, "UINT8": 1, "INT64": 8}
_SKIPPED = frozenset({"__dict__", "__weakref__", "__qualname__", "__module__", "__annotations__"})


def _major(version: str) -> int:
    for known in VERSIONS:
        if version == known:
            return int(known.split(".")[0])
    raise ValueError(f"no emulated TensorRT {version!r}; emulated: {', '.join(VERSIONS)}")


def _present(name: str, major: int) -> bool:
    return major in _ONLY.get(name, _ALL)


def _enum(
    name: str, members: dict[str, int], base: type[TrtEnum] = TrtEnum, qualname: str = ""
) -> Any:
    return base(name, members, module="tensorrt", qualname=qualname or name)  # type: ignore[call-overload]


def _derive(state: State, name: str, full: type, bases: tuple[type, ...], ctor: bool) -> type:
    """The class ``name`` of one version: ``full``'s namespace less the members that version
    does not have, with version variants swapped in."""
    namespace: dict[str, Any] = {}
    for key, value in vars(full).items():
        if key in _SKIPPED:
            continue
        if not key.startswith("_") and not _present(f"{name}.{key}", state.major):
            continue
        namespace[key] = value
    for public, variants in _VARIANTS.items():
        owner, _, member = public.partition(".")
        if owner == name and state.major in variants:
            namespace[member] = vars(full)[variants[state.major]]
    if not ctor:
        namespace["__init__"] = no_constructor
    namespace.update(_rt=state, __module__="tensorrt", __qualname__=name)
    return type(name, bases, namespace)


def _nptype(trt: Any) -> Any:
    def nptype(trt_type: Any) -> Any:
        """The numpy type of a TensorRT DataType (TypeError for one numpy lacks)."""
        mapping = {
            trt.DataType.FLOAT: np.float32,
            trt.DataType.HALF: np.float16,
            trt.DataType.INT8: np.int8,
            trt.DataType.INT32: np.int32,
            trt.DataType.BOOL: np.bool_,
            trt.DataType.UINT8: np.uint8,
        }
        if hasattr(trt.DataType, "INT64"):
            mapping[trt.DataType.INT64] = np.int64
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    return nptype


def volume(iterable: Any) -> int:
    """The product of a shape's dims (1 for a scalar's empty shape)."""
    vol = 1
    for elem in iterable:
        vol *= elem
    return vol


def make_tensorrt(
    version: str, *, sm: str | None = None, dla_cores: int | None = None
) -> types.ModuleType:
    """A fresh emulated ``tensorrt`` module for ``version`` (one of :data:`VERSIONS`).

    ``sm``/``dla_cores`` pin the emulated GPU (else ``$EMULATOR_SM``/``$EMULATOR_DLA_CORES``);
    ``module._emulator`` holds them and may be changed later (e.g. to move a plan to "another
    GPU" between build and load).
    """
    major = _major(version)
    module = types.ModuleType("tensorrt", __doc__)
    state = State(version, major, module, sm, dla_cores)
    module.__version__ = version  # type: ignore[attr-defined]
    module._emulator = state  # type: ignore[attr-defined]
    index = {8: 0, 10: 1, 11: 2}[major]
    for name, table in _ENUMS.items():
        if not _present(name, major):
            continue
        members = {k: v[index] for k, v in table.items() if v[index] is not None}
        setattr(module, name, _enum(name, members))
    module.DataType.itemsize = property(  # type: ignore[attr-defined]
        lambda self: _ITEMSIZE[self.name]
    )
    for alias, member in _DATATYPE_ALIASES.items():
        if member in module.DataType.__members__:  # type: ignore[attr-defined]
            setattr(module, alias, module.DataType[member])  # type: ignore[attr-defined]
    for name, full, base_names, ctor in _CLASSES:
        if not _present(name, major):
            continue
        bases = tuple(getattr(module, b) for b in base_names)
        setattr(module, name, _derive(state, name, full, bases, ctor))
    severity = _enum("Severity", _SEVERITY, TrtOrderedEnum, "ILogger.Severity")
    module.ILogger.Severity = severity  # type: ignore[attr-defined]
    for member in severity:
        setattr(module.ILogger, member.name, member)  # type: ignore[attr-defined]
    host_memory = {"_rt": state, "__module__": "tensorrt", "__qualname__": "IHostMemory"}
    host_memory["__init__"] = no_constructor
    module.IHostMemory = type("IHostMemory", (HostMemory,), host_memory)  # type: ignore[attr-defined]
    module.Dims = Dims  # type: ignore[attr-defined]  # one class: a tuple-like value type
    module.nptype = _nptype(module)  # type: ignore[attr-defined]
    module.volume = volume  # type: ignore[attr-defined]
    return module
