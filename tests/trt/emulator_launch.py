"""One emulated ``execute_async_v3``: the checks TensorRT makes at enqueue time, then ONNX
Runtime on the inputs' memory, outputs written to their addresses or to memory an
IOutputAllocator returns (its Python overrides called as TensorRT's trampolines call them).

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

import ctypes
import math
import sys
from typing import Any

import numpy as np
from onnx import helper

from tests.trt import emulator_onnx as ox
from tests.trt import host_cuda
from tests.trt.emulator_core import Dims, State, call_override, emit, overrides

__all__ = ["Launch", "inputs", "output_shapes", "static_shapes"]

_ALIGNMENT = 256


def inputs(engine: Any) -> list[ox.IoTensor]:
    return [t for t in engine._io if t.is_input]


def static_shapes(engine: Any) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.shape) for t in inputs(engine) if -1 not in t.shape}


def output_shapes(engine: Any, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Output shapes for these input shapes: -1 where the data decides. Shapes that depend on
    input shapes only are learned by one run on zeros, cached per input shapes."""
    key = tuple(sorted(shapes.items()))
    if key not in engine._shape_cache:
        outputs = [t for t in engine._io if not t.is_input]
        found = {t.name: t.shape for t in outputs}
        unknown = [t.name for t in outputs if -1 in t.shape and not t.data_dependent]
        if unknown:
            feeds = ox.zero_feeds(inputs(engine), shapes)
            try:
                values = engine._session.run(unknown, feeds)
                found.update({n: tuple(v.shape) for n, v in zip(unknown, values, strict=True)})
            except Exception as exc:
                print(f"[emulator] output shapes from a zero run failed: {exc}", file=sys.stderr)
        engine._shape_cache[key] = found
    return dict(engine._shape_cache[key])


def _read(ptr: int, tensor: ox.IoTensor, shape: tuple[int, ...]) -> np.ndarray:
    dtype = ox.np_dtype(tensor.trt_type)
    count = math.prod(shape)
    data = ctypes.string_at(ptr, count * dtype.itemsize) if count else b""
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


class Launch:
    """One ``execute_async_v3``: checks what TensorRT checks at enqueue time (shapes,
    addresses, the stream), then runs now or on the stream's queue."""

    def __init__(self, context: Any, handle: int) -> None:
        self.context, self.handle = context, handle
        self.engine = context._engine
        self.rt: State = context._rt

    def error(self, text: str, code: int = 3) -> bool:
        return bool(self.context._error(code, f"enqueueV3: {text}"))

    def span(self, ptr: int, nbytes: int, what: str) -> str | None:
        if ptr == 0:
            return f"{what} has a null address"
        return host_cuda.check_device_span(ptr, nbytes, what)

    def run(self) -> bool:
        context, engine = self.context, self.engine
        if self.handle and not host_cuda.stream_is_live(self.handle):
            return self.error(f"stream {self.handle:#x} is not a live CUDA stream", code=1)
        if context._strategy == "USER_MANAGED":
            return self.error("USER_MANAGED context: device memory was never set")
        missing = context.infer_shapes()
        if missing:
            return self.error(f"input shape not specified for {', '.join(missing)}")
        shapes = dict(context._shapes)
        outputs = output_shapes(engine, shapes)
        for tensor in engine._io:
            name = tensor.name
            if name in context._allocators:
                continue
            if name not in context._addresses:
                kind = "input" if tensor.is_input else "output"
                return self.error(
                    f"Address is not set for {kind} tensor {name}. Call setTensorAddress or "
                    "setOutputAllocator before enqueue/execute."
                )
            shape = shapes[name] if tensor.is_input else outputs[name]
            if -1 in shape:
                continue  # data-dependent: checked once the size is known
            nbytes = math.prod(shape) * ox.np_dtype(tensor.trt_type).itemsize
            problem = self.span(context._addresses[name], nbytes, f"tensor '{name}'")
            if problem:
                return self.error(problem, code=1)
        if self.handle == 0:
            emit(
                engine._logger,
                self.rt,
                "WARNING",
                "Using default stream in enqueueV3() may lead to performance issues due to "
                "additional calls to cudaStreamSynchronize() by TensorRT to ensure correct "
                "synchronization. Please use non-default stream instead.",
            )
        addresses = dict(context._addresses)
        synchronous = self.handle == 0 or any(
            t.data_dependent or t.name in context._allocators for t in engine._io
        )
        if not synchronous:
            host_cuda.enqueue(self.handle, lambda: self.compute(shapes, addresses, strict=True))
            return True
        if self.handle:
            host_cuda.drain(self.handle)  # data-dependent shapes make TensorRT wait here
        return self.compute(shapes, addresses, strict=False)

    def compute(self, shapes: dict[str, Any], addresses: dict[str, int], strict: bool) -> bool:
        """Read the inputs, run ONNX Runtime, write the outputs. ``strict``: raise instead of
        returning False (the work runs on a stream queue, where a failure is a CUDA error)."""
        engine, header = self.engine, self.engine._header
        feeds = {}
        for tensor in inputs(engine):
            shape = shapes[tensor.name]
            nbytes = math.prod(shape) * ox.np_dtype(tensor.trt_type).itemsize
            problem = self.span(addresses[tensor.name], nbytes, f"tensor '{tensor.name}'")
            if problem:
                return self.fail(problem, strict)
            value = _read(addresses[tensor.name], tensor, shape)
            value = value.astype(helper.tensor_dtype_to_np_dtype(tensor.onnx_type))
            if header["fp16"] and value.dtype == np.float32:
                value = value.astype(np.float16).astype(np.float32)
            feeds[tensor.name] = value
        outputs = [t for t in engine._io if not t.is_input]
        try:
            values = engine._session.run([t.name for t in outputs], feeds)
        except Exception as exc:
            return self.fail(f"kernel failed: {exc}", strict)
        for tensor, value in zip(outputs, values, strict=True):
            value = np.asarray(value)
            if header["fp16"] and value.dtype == np.float32:
                with np.errstate(over="ignore"):
                    value = value.astype(np.float16).astype(np.float32)
            data = np.ascontiguousarray(value.astype(ox.np_dtype(tensor.trt_type))).tobytes()
            if not self.store(tensor, value.shape, data, addresses, strict):
                return False
        return True

    def fail(self, text: str, strict: bool) -> bool:
        self.error(text, code=1)
        if strict:
            raise RuntimeError(text)
        return False

    def store(
        self,
        tensor: ox.IoTensor,
        shape: tuple[int, ...],
        data: bytes,
        addresses: dict[str, int],
        strict: bool,
    ) -> bool:
        context, name = self.context, tensor.name
        allocator = context._allocators.get(name)
        address = addresses.get(name, 0)
        if allocator is not None:
            address = self.reallocate(allocator, name, address, max(len(data), 1))
            if not address:
                return self.fail(f"IOutputAllocator returned no memory for tensor '{name}'", strict)
            context._addresses[name] = address
        problem = self.span(address, len(data), f"tensor '{name}'")
        if problem:
            return self.fail(problem, strict)
        if data:
            ctypes.memmove(address, data, len(data))
        if tensor.data_dependent:
            context._actual[name] = tuple(shape)
        if allocator is not None:
            call_override(allocator, "notify_shape", "notifyShape", name, Dims(shape))
        return True

    def reallocate(self, allocator: Any, name: str, current: int, size: int) -> int:
        """TensorRT 10+ calls reallocate_output_async when the Python class defines it, else
        reallocate_output; 8.6 knows only reallocate_output. Returns 0 for nullptr."""
        if self.rt.major >= 10 and overrides(allocator, "reallocate_output_async"):
            args: tuple[Any, ...] = (name, current, size, _ALIGNMENT, self.handle)
            method, what = "reallocate_output_async", "reallocateOutputAsync"
        else:
            args, method, what = (name, current, size, _ALIGNMENT), "reallocate_output", None
        ok, result = call_override(allocator, method, what or "reallocateOutput", *args)
        if not ok or result is None:
            return 0
        try:
            return int(result)
        except (TypeError, ValueError):
            print(
                f"[ERROR] Return value of {what or 'reallocateOutput'}() could not be "
                "interpreted as an int",
                file=sys.stderr,
            )
            return 0
