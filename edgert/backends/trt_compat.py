"""Every TensorRT name edgert touches, with the per-version branches in one place.

Nothing else in edgert imports ``tensorrt``. The version branches are the classes ``Trt8`` (8.6),
``Trt10`` (10.x) and ``Trt11`` (11.x); module-level code is shared. CI checks this file's syntax
tree against the real bindings of each version (``tests/trt/conformance.py``): every ``trt.X.Y``
chain, and every attribute of a name annotated with a ``trt`` type, must exist in the version whose
branch uses it. So: annotate every TensorRT object with its ``trt`` type. What differs (checked
against 8.6.1, 10.3.0 and 11.4.0.106): 8.6 needs ``EXPLICIT_BATCH`` and has no ``INT64`` (its ONNX
parser casts int64 IO to int32), no ``IProgressMonitor``, no ``ParserError.node_name``, and
``device_memory_size``; 10 drops the explicit-batch flag's meaning and adds ``INT64``, progress
monitors, node names, ``device_memory_size_v2`` and ``reallocate_output_async``; 11 is strongly
typed only (no ``BuilderFlag.FP16/INT8``: precision comes from the ONNX itself).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorrt as trt

from edgert.backends.trtsettings import BuildSettings, Shape

__all__ = [
    "BuildSettings",
    "Execution",
    "TensorInfo",
    "Trt8",
    "Trt10",
    "Trt11",
    "TrtLog",
    "api",
    "build_serialized",
    "deserialize",
    "dla_cores",
]

VERSION: str = str(trt.__version__)
ProgressFn = Callable[[str, float], None]


class TrtLog(trt.ILogger):  # type: ignore[misc]
    """Keeps TensorRT's log lines: its failures come back as None/False, the reason only here."""

    def __init__(self, verbose: bool = False) -> None:
        trt.ILogger.__init__(self)
        self.verbose = verbose
        self.lines: list[tuple[str, str]] = []  # (severity, message)
        self.lock = threading.Lock()

    def log(self, severity: Any, msg: str) -> None:
        name = _SEVERITY.get(severity, "info")
        if name == "verbose" and not self.verbose:
            return
        with self.lock:
            self.lines.append((name, str(msg)))
            del self.lines[:-200]  # a runaway log must not grow without bound


_SEVERITY: dict[Any, str] = {
    trt.ILogger.Severity.INTERNAL_ERROR: "error",
    trt.ILogger.Severity.ERROR: "error",
    trt.ILogger.Severity.WARNING: "warning",
    trt.ILogger.Severity.INFO: "info",
    trt.ILogger.Severity.VERBOSE: "verbose",
}


def log_errors(log: TrtLog, since: int = 0) -> list[str]:
    """The error lines TensorRT logged after line ``since``."""
    with log.lock:
        return [msg for sev, msg in log.lines[since:] if sev == "error"]


@dataclass(frozen=True)
class TensorInfo:
    """One IO tensor of an engine, as TensorRT sees it."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: Shape  # -1 for dims fixed only at run time
    profile_max: Shape | None  # inputs with dynamic dims: profile 0's max


class Trt8:
    """TensorRT 8.6: explicit batch by flag, FP16/INT8 by builder flag, no int64."""

    TRT_VERSION = "8.6.1"
    fp16_by_flag = True
    has_int64 = False
    has_progress = False

    def network_flags(self) -> int:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)

    def set_precision(self, config: trt.IBuilderConfig, precision: str) -> None:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            # Explicit quantization: the scales come from the graph's Q/DQ nodes.
            config.set_flag(trt.BuilderFlag.INT8)

    def parser_error(self, error: trt.ParserError) -> str:
        return f"{error.desc()} (node #{error.node()}, {error.code()})"

    def watch_progress(self, config: trt.IBuilderConfig, progress: ProgressFn) -> object | None:
        return None

    def device_memory(self, engine: trt.ICudaEngine) -> int:
        return int(engine.device_memory_size)

    def dtypes(self) -> dict[Any, np.dtype[Any]]:
        return {
            trt.DataType.FLOAT: np.dtype(np.float32),
            trt.DataType.HALF: np.dtype(np.float16),
            trt.DataType.INT8: np.dtype(np.int8),
            trt.DataType.INT32: np.dtype(np.int32),
            trt.DataType.BOOL: np.dtype(np.bool_),
            trt.DataType.UINT8: np.dtype(np.uint8),
        }

    def output_allocator(self, allocate: Callable[[str, int], int]) -> trt.IOutputAllocator:
        """Memory for outputs whose size depends on the data (NonZero, NMS): TensorRT asks."""

        class _Allocator(trt.IOutputAllocator):  # type: ignore[misc]
            def __init__(self) -> None:
                trt.IOutputAllocator.__init__(self)
                self.shapes: dict[str, Shape] = {}

            def reallocate_output(
                self, tensor_name: str, memory: int, size: int, alignment: int
            ) -> int:
                return allocate(tensor_name, size)

            def notify_shape(self, tensor_name: str, shape: Any) -> None:
                self.shapes[tensor_name] = tuple(shape)

        return _Allocator()


class Trt10(Trt8):
    """TensorRT 10: int64, progress monitors, parser node names, device_memory_size_v2."""

    TRT_VERSION = "10.3.0"
    has_int64 = True
    has_progress = True

    def network_flags(self) -> int:
        return 0  # explicit batch is the only mode; the flag is deprecated

    def parser_error(self, error: trt.ParserError) -> str:
        node = error.node_name() or f"#{error.node()}"
        return f"{error.desc()} (node {node}, {error.code()})"

    def watch_progress(self, config: trt.IBuilderConfig, progress: ProgressFn) -> object | None:
        """Feed ``progress`` with the share of each top-level phase done, its child phases'
        steps counted within its current step (a few top-level steps span a long build)."""

        class _Monitor(trt.IProgressMonitor):  # type: ignore[misc]
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.steps: dict[str, tuple[int, str | None]] = {}
                self.done: dict[str, int] = {}  # top-level phase -> its steps complete

            def phase_start(
                self, phase_name: str, parent_phase: str | None, num_steps: int
            ) -> None:
                self.steps[phase_name] = (max(num_steps, 1), parent_phase)
                if parent_phase is None:
                    self.done[phase_name] = 0
                    progress(phase_name, 0.0)

            def step_complete(self, phase_name: str, step: int) -> bool:
                total, parent = self.steps.get(phase_name, (1, None))
                if parent is None:
                    self.done[phase_name] = step + 1
                    progress(phase_name, min(1.0, (step + 1) / total))
                elif parent in self.done:  # a child of a top-level phase: part of its step
                    outer, done = self.steps[parent][0], self.done[parent]
                    progress(parent, min(1.0, (done + min(1.0, (step + 1) / total)) / outer))
                return True  # False would cancel the build

            def phase_finish(self, phase_name: str) -> None:
                self.steps.pop(phase_name, None)
                self.done.pop(phase_name, None)

        monitor = _Monitor()
        config.progress_monitor = monitor
        return monitor

    def device_memory(self, engine: trt.ICudaEngine) -> int:
        return int(engine.device_memory_size_v2)

    def dtypes(self) -> dict[Any, np.dtype[Any]]:
        return {**super().dtypes(), trt.DataType.INT64: np.dtype(np.int64)}

    def output_allocator(self, allocate: Callable[[str, int], int]) -> trt.IOutputAllocator:
        class _AsyncAllocator(trt.IOutputAllocator):  # type: ignore[misc]
            # TensorRT 10 calls the async form; the sync one stays for older callers.
            def __init__(self) -> None:
                trt.IOutputAllocator.__init__(self)
                self.shapes: dict[str, Shape] = {}

            def reallocate_output(
                self, tensor_name: str, memory: int, size: int, alignment: int
            ) -> int:
                return allocate(tensor_name, size)

            def reallocate_output_async(
                self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
            ) -> int:
                return allocate(tensor_name, size)

            def notify_shape(self, tensor_name: str, shape: Any) -> None:
                self.shapes[tensor_name] = tuple(shape)

        return _AsyncAllocator()


class Trt11(Trt10):
    """TensorRT 11: strongly typed only. FP16 means an FP16 ONNX; INT8 means Q/DQ nodes."""

    TRT_VERSION = "11.4.0.106"
    fp16_by_flag = False

    def set_precision(self, config: trt.IBuilderConfig, precision: str) -> None:
        return None  # the types in the (converted or quantized) ONNX decide


def api() -> Trt8:
    """The branch for the TensorRT that imported; 8.6 is the oldest supported."""
    parts = VERSION.split(".")
    major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    if major >= 11:
        return Trt11()
    if major == 10:
        return Trt10()
    if (major, minor) >= (8, 6):
        return Trt8()
    raise ImportError(f"TensorRT {VERSION} is too old; edgert needs 8.6 or later")


def build_serialized(
    version: Trt8,
    onnx_path: str,
    settings: BuildSettings,
    log: TrtLog,
    progress: ProgressFn,
    timing_cache: bytes | None = None,
) -> tuple[bytes, bytes | None]:
    """Parse and build; (plan, timing cache) or an error naming TensorRT's own reasons."""
    builder: trt.Builder = trt.Builder(log)
    network: trt.INetworkDefinition = builder.create_network(version.network_flags())
    parser: trt.OnnxParser = trt.OnnxParser(network, log)
    progress("parsing the ONNX", 0.02)
    if not parser.parse_from_file(onnx_path):
        errors = [version.parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TrtFailure("the TensorRT ONNX parser rejected the model", errors or log_errors(log))

    config: trt.IBuilderConfig = builder.create_builder_config()
    if settings.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    version.set_precision(config, settings.precision)
    if settings.dla_core is not None:
        if settings.dla_core >= builder.num_DLA_cores:
            raise TrtFailure(
                f"DLA core {settings.dla_core} asked for; this device has "
                f"{builder.num_DLA_cores} (DLA exists on AGX Orin and Orin NX only)",
                [],
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

    profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor: trt.ITensor = network.get_input(i)
        if tensor.name in settings.profiles:
            low, opt, high = settings.profiles[tensor.name]
            profile.set_shape(tensor.name, low, opt, high)
    if settings.profiles:
        config.add_optimization_profile(profile)

    cache: trt.ITimingCache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, True)  # a cache from another build is ignored, not fatal
    # The monitor's share of the build goes after parsing (0.05) and before the end (0.95).
    monitor = version.watch_progress(config, lambda stage, f: progress(stage, 0.05 + 0.9 * f))
    progress("building the engine (this takes minutes on a Jetson)", 0.05)
    plan: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    del monitor
    if plan is None:
        raise TrtFailure("TensorRT could not build an engine", log_errors(log))
    updated: trt.ITimingCache = config.get_timing_cache()
    return bytes(plan), bytes(updated.serialize())


def dla_cores() -> int:
    """How many DLA cores this device has (2 on AGX Orin, 1 on Orin NX, else 0)."""
    builder: trt.Builder = trt.Builder(TrtLog())
    return int(builder.num_DLA_cores)


class TrtFailure(Exception):
    """TensorRT said no: the message and its own log lines (turned into EdgertErrors above)."""

    def __init__(self, message: str, details: Sequence[str]) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


def deserialize(
    plan: bytes, log: TrtLog, host_code_allowed: bool = False
) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """The engine in ``plan``; TrtFailure with TensorRT's log when it returns None."""
    runtime: trt.Runtime = trt.Runtime(log)
    # Version-compatible plans carry a lean runtime of their own, loaded only when allowed.
    runtime.engine_host_code_allowed = host_code_allowed
    engine: trt.ICudaEngine | None = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise TrtFailure("TensorRT could not deserialize the engine", log_errors(log))
    return runtime, engine


def tensors(version: Trt8, engine: trt.ICudaEngine) -> list[TensorInfo]:
    """The engine's IO tensors in its own order."""
    dtypes = version.dtypes()
    found = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        trt_dtype = engine.get_tensor_dtype(name)
        if trt_dtype not in dtypes:
            raise TrtFailure(f"tensor '{name}' has a type edgert cannot map: {trt_dtype}", [])
        profile_max = None
        if is_input and -1 in shape:
            profile_max = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
        found.append(TensorInfo(name, is_input, dtypes[trt_dtype], shape, profile_max))
    return found


class Execution:
    """One execution context: shapes, addresses, output allocators, launches."""

    def __init__(self, version: Trt8, engine: trt.ICudaEngine, log: TrtLog) -> None:
        self.version = version
        self.log = log
        context: trt.IExecutionContext | None = engine.create_execution_context()
        if context is None:
            raise TrtFailure("TensorRT could not create an execution context", log_errors(log))
        self.context: trt.IExecutionContext = context
        self.allocators: dict[str, trt.IOutputAllocator] = {}

    def set_input_shape(self, name: str, shape: Shape) -> bool:
        return bool(self.context.set_input_shape(name, shape))

    def output_shape(self, name: str) -> Shape:
        """-1 in a dim the data decides (see :meth:`use_allocator`)."""
        return tuple(int(d) for d in self.context.get_tensor_shape(name))

    def set_address(self, name: str, address: int) -> None:
        if not self.context.set_tensor_address(name, address):
            raise TrtFailure(f"TensorRT refused the address of '{name}'", log_errors(self.log))

    def use_allocator(self, name: str, allocate: Callable[[str, int], int]) -> None:
        """Let TensorRT ask ``allocate(name, nbytes) -> address`` once it knows the size."""
        if name not in self.allocators:
            allocator = self.version.output_allocator(allocate)
            if not self.context.set_output_allocator(name, allocator):
                raise TrtFailure(f"TensorRT refused an allocator for '{name}'", [])
            self.allocators[name] = allocator

    def allocated_shape(self, name: str) -> Shape:
        shapes: dict[str, Shape] = getattr(self.allocators[name], "shapes", {})
        return shapes[name]

    def execute(self, stream: int) -> None:
        mark = len(self.log.lines)
        if not self.context.execute_async_v3(stream):
            raise TrtFailure("TensorRT could not run the engine", log_errors(self.log, mark))
