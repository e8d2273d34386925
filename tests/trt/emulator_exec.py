"""The emulated run side: ``Runtime.deserialize_cuda_engine``, ``ICudaEngine``,
``IExecutionContext`` (shapes, addresses, output allocators, ``execute_async_v3``) computing
with ONNX Runtime on the memory :mod:`tests.trt.host_cuda` hands out.

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

from typing import Any

from tests.trt import emulator_onnx as ox
from tests.trt.emulator_core import (
    Dims,
    State,
    api_error,
    as_dims,
    check_arg,
    check_initialized,
    emit,
    new_object,
    register_logger,
    to_int,
)
from tests.trt.emulator_launch import Launch, inputs, output_shapes, static_shapes
from tests.trt.emulator_plan import check_plan

__all__ = ["ExecClasses"]


class ExecClasses:
    """Namespace of the full (all-version) run-side classes; see ParseClasses."""

    class IOutputAllocator:
        _rt: State

        def __init__(self) -> None:
            self._trt_initialized = True

    class Runtime:
        _rt: State

        def __init__(self, logger: Any) -> None:
            check_initialized(logger, self._rt.trt.ILogger, "Runtime.__init__")
            register_logger(self._rt, logger, "createInferRuntime")
            self._logger = logger
            self._host_code_allowed = False

        @property
        def logger(self) -> Any:
            return self._logger

        @property
        def num_DLA_cores(self) -> int:
            return self._rt.num_dla_cores()

        @property
        def engine_host_code_allowed(self) -> bool:
            return self._host_code_allowed

        @engine_host_code_allowed.setter
        def engine_host_code_allowed(self, value: bool) -> None:
            self._host_code_allowed = bool(value)

        def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
            rt = self._rt
            try:
                data = bytes(memoryview(serialized_engine))
            except TypeError:
                raise TypeError(
                    "deserialize_cuda_engine(): incompatible function arguments (expected a "
                    f"buffer); got {type(serialized_engine).__name__}"
                ) from None
            problem, header, model = check_plan(rt, data, self._host_code_allowed)
            if problem is not None:
                emit(self._logger, rt, "ERROR", problem)
                return None
            try:
                session = ox.make_session(model)
            except Exception as exc:
                emit(self._logger, rt, "ERROR", api_error(1, "Internal Error", "engine", str(exc)))
                return None
            io = [ox.IoTensor.from_json(t) for t in header["io"]]
            return new_object(
                rt.trt.ICudaEngine,
                _plan=data,
                _header=header,
                _io=io,
                _by_name={t.name: t for t in io},
                _session=session,
                _logger=self._logger,
                _shape_cache={},
            )

    class ICudaEngine:
        _rt: State

        def _tensor(self, name: Any, func: str) -> ox.IoTensor | None:
            tensor = self._by_name.get(name) if isinstance(name, str) else None
            if tensor is None:
                if not isinstance(name, str):
                    raise TypeError(f"{func}(): name must be str, not {type(name).__name__}")
                self._error(3, f"{func}: no tensor named '{name}'")
            return tensor

        def _error(self, code: int, text: str) -> None:
            emit(
                self._logger, self._rt, "ERROR", api_error(code, "API Usage Error", "engine", text)
            )

        @property
        def num_io_tensors(self) -> int:
            return len(self._io)

        def get_tensor_name(self, index: int) -> str | None:
            index = to_int(index, "get_tensor_name")
            if not 0 <= index < len(self._io):
                self._error(3, f"get_tensor_name: index {index} out of range")
                return None
            return self._io[index].name

        def get_tensor_mode(self, name: str) -> Any:
            mode = self._rt.trt.TensorIOMode
            tensor = self._by_name.get(name)
            if tensor is None:
                return mode.NONE
            return mode.INPUT if tensor.is_input else mode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            tensor = self._tensor(name, "get_tensor_dtype")
            return self._rt.trt.DataType[tensor.trt_type if tensor else "FLOAT"]

        def get_tensor_shape(self, name: str) -> Dims:
            tensor = self._tensor(name, "get_tensor_shape")
            return Dims(tensor.shape if tensor else ())

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            index = to_int(profile_index, "get_tensor_profile_shape")
            tensor = self._tensor(name, "get_tensor_profile_shape")
            profiles = self._header["profiles"]
            if tensor is None or not tensor.is_input or not 0 <= index < len(profiles):
                self._error(3, f"get_tensor_profile_shape: no input '{name}' in profile {index}")
                return []
            return [Dims(s) for s in profiles[index].get(name, [tensor.shape] * 3)]

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._header["profiles"])

        @property
        def device_memory_size(self) -> int:
            return int(self._header["device_memory"])

        @property
        def device_memory_size_v2(self) -> int:
            return int(self._header["device_memory"])

        @property
        def name(self) -> str:
            return str(self._header["name"])

        @property
        def hardware_compatibility_level(self) -> Any:
            level = self._header["hardware_compatibility"]
            return self._rt.trt.HardwareCompatibilityLevel[level]

        def serialize(self) -> Any:
            return self._rt.trt.IHostMemory.__new__(self._rt.trt.IHostMemory, self._plan)

        def create_execution_context(self, strategy: Any = None) -> Any:
            kinds = self._rt.trt.ExecutionContextAllocationStrategy
            strategy = kinds.STATIC if strategy is None else strategy
            check_arg(strategy, kinds, "create_execution_context", "strategy")
            return _new_context(self, strategy.name)

        def _create_execution_context_8(self) -> Any:  # 8.6 takes no strategy
            return _new_context(self, "STATIC")

    class IExecutionContext:
        _rt: State

        @property
        def engine(self) -> Any:
            return self._engine

        @property
        def active_optimization_profile(self) -> int:
            return self._profile

        def _error(self, code: int, text: str) -> bool:
            emit(
                self._engine._logger,
                self._rt,
                "ERROR",
                api_error(code, "API Usage Error", "executionContext.cpp", text),
            )
            return False

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            index = to_int(profile_index, "set_optimization_profile_async")
            to_int(stream_handle, "set_optimization_profile_async")
            if not 0 <= index < self._engine.num_optimization_profiles:
                self._error(3, f"profile index {index} is out of range")
                raise RuntimeError("Error in set optimization profile async.")
            self._profile = index
            self._shapes = static_shapes(self._engine)
            self._actual.clear()
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            dims = tuple(as_dims(shape, "set_input_shape"))
            tensor = self._engine._by_name.get(name)
            if tensor is None or not tensor.is_input:
                return self._error(3, f"set_input_shape: '{name}' is not an input tensor")
            if len(dims) != len(tensor.shape) or any(d < 0 for d in dims):
                return self._error(
                    3, f"set_input_shape: '{name}' takes rank {len(tensor.shape)}, got {dims}"
                )
            low, _, high = self._engine._header["profiles"][self._profile].get(
                name, [tensor.shape] * 3
            )
            if any(not lo <= d <= hi for d, lo, hi in zip(dims, low, high, strict=True)):
                return self._error(
                    3,
                    "Parameter check failed, condition: satisfyProfile. Runtime dimension does "
                    f"not satisfy any optimization profile: '{name}' {dims} is outside profile "
                    f"{self._profile} [{tuple(low)}, {tuple(high)}]",
                )
            self._shapes[name] = dims
            self._actual.clear()
            return True

        def infer_shapes(self) -> list[str]:
            return [t.name for t in inputs(self._engine) if t.name not in self._shapes]

        def get_tensor_shape(self, name: str) -> Dims:
            tensor = self._engine._tensor(name, "get_tensor_shape")
            if tensor is None:
                return Dims(())
            if tensor.is_input:
                return Dims(self._shapes.get(name, tensor.shape))
            if name in self._actual:
                return Dims(self._actual[name])
            if self.infer_shapes():
                return Dims(tensor.shape)
            return Dims(output_shapes(self._engine, self._shapes)[name])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            address = to_int(memory, "set_tensor_address")
            tensor = self._engine._by_name.get(name)
            if tensor is None:
                return self._error(3, f"set_tensor_address: no tensor named '{name}'")
            itemsize = ox.np_dtype(tensor.trt_type).itemsize
            if address % itemsize:
                return self._error(3, f"set_tensor_address: {address:#x} is misaligned")
            self._addresses[name] = address
            return True

        def get_tensor_address(self, name: str) -> int:
            return int(self._addresses.get(name, 0))

        def set_output_allocator(self, name: str, output_allocator: Any) -> bool:
            check_initialized(
                output_allocator, self._rt.trt.IOutputAllocator, "set_output_allocator"
            )
            tensor = self._engine._by_name.get(name)
            if tensor is None or tensor.is_input:
                return self._error(3, f"set_output_allocator: '{name}' is not an output tensor")
            self._allocators[name] = output_allocator
            return True

        def get_output_allocator(self, name: str) -> Any:
            return self._allocators.get(name)

        def execute_async_v3(self, stream_handle: int) -> bool:
            return Launch(self, to_int(stream_handle, "execute_async_v3")).run()


def _new_context(engine: Any, strategy: str) -> Any:
    return new_object(
        engine._rt.trt.IExecutionContext,
        _engine=engine,
        _strategy=strategy,
        _profile=0,
        _shapes=static_shapes(engine),
        _addresses={},
        _allocators={},
        _actual={},
    )
