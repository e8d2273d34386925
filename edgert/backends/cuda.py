"""CUDA memory and streams on cuda-python (``cuda.bindings.runtime``), for the TensorRT runner.

Every cudart call returns a tuple whose first item is a ``cudaError_t``; :func:`_call` checks it
and raises :class:`CudaError` naming the call and the error. The module imports without
cuda-python; using it then raises :class:`~edgert.errors.BackendUnavailable`.

Copies are asynchronous: a host array passed to a copy must stay alive (and unchanged) until the
stream is synchronized. Buffers are freed explicitly (or by :meth:`Cuda.close`), never by the
garbage collector, so a free cannot land in the middle of a running engine.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from edgert.backends.buffers import (
    BufferSet,
    DeviceBuffer,
    HostBuffer,
    Memory,
    Stream,
    check_copy,
)
from edgert.errors import BackendError, BackendUnavailable, first_line

__all__ = [
    "BufferSet",
    "Cuda",
    "CudaError",
    "DeviceBuffer",
    "DeviceInfo",
    "HostBuffer",
    "Memory",
    "Stream",
    "check_copy",
    "device_count",
    "driver_version",
    "runtime_version",
]

_MISSING = "cuda-python is not installed: pip install 'edgert[tensorrt]'"


class CudaError(BackendError):
    """A CUDA runtime call failed; the message names the call and the ``cudaError…`` name."""


@functools.cache
def _rt() -> Any:
    """The ``cudart`` module; BackendUnavailable (with the reason) if it cannot be imported."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        if (exc.name or "").startswith("cuda"):
            raise BackendUnavailable(_MISSING) from exc
        raise BackendUnavailable(f"cuda-python cannot be imported: {first_line(exc)}") from exc
    return runtime


def _error_text(err: Any) -> str:
    rt = _rt()
    _, name = rt.cudaGetErrorName(err)
    _, text = rt.cudaGetErrorString(err)
    return f"{name.decode()} ({text.decode()})"


def _call(what: str, result: tuple[Any, ...]) -> Any:
    """The value(s) of a cudart call's result tuple, or CudaError naming ``what`` and the error."""
    rt = _rt()
    err = result[0]
    if err != rt.cudaError_t.cudaSuccess:
        rt.cudaGetLastError()  # clear a non-sticky error so later calls do not report it again
        raise CudaError(f"{what} failed: {_error_text(err)}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def _query(function: str) -> int | None:
    """The value of a no-argument cudart query, or None if it fails (no driver, no GPU)."""
    err, value = getattr(_rt(), function)()
    return int(value) if err == _rt().cudaError_t.cudaSuccess else None


def _version(value: int | None) -> str | None:
    return f"{value // 1000}.{value % 1000 // 10}" if value else None


def device_count() -> int:
    """How many CUDA devices this process can use; 0 without a driver or a GPU."""
    return _query("cudaGetDeviceCount") or 0


def driver_version() -> str | None:
    """The newest CUDA version the driver supports ("13.0"); None without a driver."""
    return _version(_query("cudaDriverGetVersion"))


def runtime_version() -> str | None:
    """The CUDA runtime version of cuda-python ("13.0"); its major must match the driver's."""
    return _version(_query("cudaRuntimeGetVersion"))


@dataclass(frozen=True)
class DeviceInfo:
    """What edgert needs to know about a GPU (``sm`` goes into artifact keys)."""

    index: int
    name: str
    major: int
    minor: int
    total_memory: int
    integrated: bool  # Jetson: GPU and CPU share the same memory

    @property
    def sm(self) -> str:
        return f"sm_{self.major}{self.minor}"


_Owned = TypeVar("_Owned", DeviceBuffer, HostBuffer)


class Cuda:
    """CUDA memory and streams on one device. :meth:`close` (or leaving a ``with`` block) frees
    everything it made. Thread-safe: each call selects the device for the calling thread."""

    def __init__(self, device: int = 0) -> None:
        self.device = device
        self._closed = False
        self._lock = threading.Lock()
        self._buffers: dict[int, DeviceBuffer | HostBuffer] = {}  # by pointer
        self._streams: dict[int, Stream] = {}  # by handle
        self._info: DeviceInfo | None = None
        try:
            self._use()
        except CudaError as exc:
            if "cudaErrorInsufficientDriver" not in exc.message:
                raise
            driver = driver_version()
            raise CudaError(
                f"{exc.message}; the driver supports CUDA {driver}, cuda-python's runtime is "
                f"{runtime_version()}"
                if driver
                else f"{exc.message}; no NVIDIA driver found"
            ) from exc

    def _use(self) -> Any:
        if self._closed:
            raise BackendError(f"Cuda(device {self.device}) is closed")
        rt = _rt()
        _call(f"cudaSetDevice({self.device})", rt.cudaSetDevice(self.device))
        return rt

    def _own(self, buf: _Owned) -> _Owned:
        with self._lock:
            self._buffers[buf.ptr] = buf
        return buf

    def _releaser(self, name: str, fn: Callable[[int], tuple[Any, ...]]) -> Callable[[int], None]:
        def release(ptr: int) -> None:
            with self._lock:
                self._buffers.pop(ptr, None)
            _call(f"{name}({ptr:#x})", fn(ptr))

        return release

    @property
    def info(self) -> DeviceInfo:
        if self._info is None:
            rt = self._use()
            what = f"cudaGetDeviceProperties({self.device})"
            p = _call(what, rt.cudaGetDeviceProperties(self.device))
            name = p.name.split(b"\0", 1)[0].decode(errors="replace")
            self._info = DeviceInfo(
                self.device, name, p.major, p.minor, p.totalGlobalMem, bool(p.integrated)
            )
        return self._info

    def stream(self) -> Stream:
        """A new non-blocking stream (it does not wait on the legacy default stream)."""
        rt = self._use()
        raw = _call(
            "cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        )
        handle = _stream_handle(raw)

        def destroy() -> None:
            with self._lock:
                self._streams.pop(handle, None)
            _call("cudaStreamDestroy", rt.cudaStreamDestroy(raw))

        stream = Stream(
            handle, lambda: _call("cudaStreamSynchronize", rt.cudaStreamSynchronize(raw)), destroy
        )
        with self._lock:
            self._streams[handle] = stream
        return stream

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        rt = self._use()
        ptr = _call(f"cudaMalloc({nbytes} bytes)", rt.cudaMalloc(max(nbytes, 1)))
        return self._own(DeviceBuffer(int(ptr), nbytes, self._releaser("cudaFree", rt.cudaFree)))

    def alloc_host(self, nbytes: int) -> HostBuffer:
        """Pinned (page-locked) host memory: truly asynchronous copies at full bandwidth."""
        rt = self._use()
        what = f"cudaHostAlloc({nbytes} bytes)"
        ptr = _call(what, rt.cudaHostAlloc(max(nbytes, 1), rt.cudaHostAllocDefault))
        release = self._releaser("cudaFreeHost", rt.cudaFreeHost)
        return self._own(HostBuffer(int(ptr), nbytes, True, release))

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        """Queue a copy of ``src`` (C-contiguous, pinned or pageable) into the start of ``dst``."""
        check_copy(src, dst, to_device=True)
        self._memcpy("HostToDevice", dst.ptr, src.ctypes.data, src.nbytes, stream)

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        """Queue a copy of the first ``dst.nbytes`` of ``src`` into ``dst`` (writable,
        C-contiguous); ``src`` may be larger (a reused buffer)."""
        check_copy(dst, src, to_device=False)
        self._memcpy("DeviceToHost", dst.ctypes.data, src.ptr, dst.nbytes, stream)

    def _memcpy(self, kind: str, dst: int, src: int, nbytes: int, stream: Stream) -> None:
        if nbytes:
            rt = _rt()
            what = f"cudaMemcpyAsync({kind}, {nbytes} bytes)"
            direction = getattr(rt.cudaMemcpyKind, f"cudaMemcpy{kind}")
            _call(what, rt.cudaMemcpyAsync(dst, src, nbytes, direction, stream.handle))

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        free, total = _call("cudaMemGetInfo", self._use().cudaMemGetInfo())
        return int(free), int(total)

    def close(self) -> None:
        """Free every buffer, then every stream, this object made (idempotent); the first
        failure is raised once all have been tried."""
        if self._closed:
            return
        with self._lock:
            resources = [*self._buffers.values(), *self._streams.values()]
        failure: CudaError | None = None
        for resource in resources:
            try:
                if isinstance(resource, Stream):
                    resource.close()
                else:
                    resource.free()
            except CudaError as exc:
                failure = failure or exc
        self._closed = True
        if failure is not None:
            raise failure

    def __enter__(self) -> Cuda:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _stream_handle(raw: Any) -> int:
    """The native handle of a ``cudaStream_t``, as TensorRT takes it."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:  # older cuda-python: the object converts itself
        return int(raw)
    return int(get_cuda_native_handle(raw))
