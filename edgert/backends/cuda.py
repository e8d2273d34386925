"""CUDA memory and streams on cuda-python (``cuda.bindings.runtime``), for the TensorRT runner.

Every cudart call returns a tuple whose first item is a ``cudaError_t``; :func:`_call` checks it
and raises :class:`CudaError` naming the call and the error. The module imports without
cuda-python; using it then raises :class:`~edgert.errors.BackendUnavailable`.

Copies are asynchronous: a host array passed to a copy must stay alive (and unchanged) until the
stream is synchronized. Buffers are freed explicitly (or by :meth:`Cuda.close`), never by the
garbage collector, so a free cannot land in the middle of a running engine.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

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


class Stream:
    """A CUDA stream. ``handle`` is the int ``execute_async_v3`` takes."""

    def __init__(self, handle: int, sync: Callable[[], None], destroy: Callable[[], None]) -> None:
        self._handle = handle
        self._sync = sync
        self._destroy: Callable[[], None] | None = destroy

    @property
    def handle(self) -> int:
        return self._handle

    def synchronize(self) -> None:
        """Wait until everything queued on the stream has finished."""
        if self._destroy is None:
            raise BackendError("synchronize() on a closed stream")
        self._sync()

    def close(self) -> None:
        destroy, self._destroy = self._destroy, None
        if destroy is not None:
            destroy()


class _Buffer:
    def __init__(self, ptr: int, nbytes: int, release: Callable[[int], None]) -> None:
        self.ptr = ptr
        self.nbytes = nbytes
        self._release = release

    def free(self) -> None:
        """Give the memory back (idempotent); ``ptr`` becomes 0."""
        ptr, self.ptr = self.ptr, 0
        if ptr:
            self._release(ptr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ptr={self.ptr:#x}, nbytes={self.nbytes})"


class DeviceBuffer(_Buffer):
    """``nbytes`` of device memory at ``ptr``. At least one byte is allocated, so ``ptr`` is
    valid even when ``nbytes`` is 0 (TensorRT tensors can be empty)."""


class HostBuffer(_Buffer):
    """``nbytes`` of host memory at ``ptr``, page-locked if ``pinned``. Views taken before
    :meth:`free` must not be used after it."""

    def __init__(self, ptr: int, nbytes: int, pinned: bool, release: Callable[[int], None]) -> None:
        super().__init__(ptr, nbytes, release)
        self.pinned = pinned

    def view(self, dtype: Any, shape: int | tuple[int, ...]) -> np.ndarray:
        """A C-contiguous numpy array of ``dtype``/``shape`` on this memory (no copy)."""
        dims = tuple(int(d) for d in np.atleast_1d(shape))  # numpy ints welcome
        dt = np.dtype(dtype)
        needed = math.prod(dims) * dt.itemsize
        if not self.ptr:
            raise BackendError("view() of a freed host buffer")
        if needed > self.nbytes:
            raise BackendError(
                f"a {dt.name}{list(dims)} view needs {needed} bytes; the host buffer has "
                f"{self.nbytes}"
            )
        raw = memoryview((ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)).cast("B")
        return np.frombuffer(raw, dtype=dt, count=math.prod(dims)).reshape(dims)


class Memory(Protocol):
    """What a runner needs from device memory: :class:`Cuda`, or a host stand-in in tests."""

    def stream(self) -> Stream: ...
    def alloc_device(self, nbytes: int) -> DeviceBuffer: ...
    def alloc_host(self, nbytes: int) -> HostBuffer: ...
    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None: ...
    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None: ...
    def mem_info(self) -> tuple[int, int]: ...


def check_copy(host: np.ndarray, device: DeviceBuffer, *, to_device: bool) -> None:
    """BackendError unless ``host`` is a C-contiguous numpy array (writable if it is the
    destination) that fits in ``device``, which has not been freed. A copy is refused rather than
    made contiguous: the copy is asynchronous, so it would read a temporary that is already gone.
    """
    what = "copy_to_device: src" if to_device else "copy_to_host: dst"
    if not isinstance(host, np.ndarray) or not host.flags.c_contiguous:
        raise BackendError(f"{what} must be a C-contiguous numpy array")
    if not (to_device or host.flags.writeable):
        raise BackendError(f"{what} is read-only")
    if not device.ptr:
        raise BackendError(f"{what}: the device buffer has been freed")
    if host.nbytes > device.nbytes:
        raise BackendError(f"{what} has {host.nbytes} bytes, the device buffer {device.nbytes}")


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


class _Allocator(Protocol):
    def alloc_device(self, nbytes: int) -> DeviceBuffer: ...


class BufferSet:
    """Device buffers by tensor name, reused across calls: a buffer grows when a call needs more
    and never shrinks, so a runner sized by :meth:`reserve` allocates nothing per call."""

    def __init__(self, memory: _Allocator) -> None:
        self._memory = memory
        self._buffers: dict[str, DeviceBuffer] = {}
        self._allocations = 0

    def ensure(self, name: str, nbytes: int) -> DeviceBuffer:
        """The buffer for ``name``, at least ``nbytes`` long."""
        buf = self._buffers.get(name)
        if buf is not None and buf.ptr and buf.nbytes >= nbytes:
            return buf
        if buf is not None:
            # Free first, so growing never holds both (an 8 GB Orin shares memory with the OS).
            del self._buffers[name]
            buf.free()
        buf = self._memory.alloc_device(nbytes)
        self._allocations += 1
        self._buffers[name] = buf
        return buf

    def reserve(self, sizes: Mapping[str, int]) -> None:
        """Pre-size buffers, e.g. from the engine profile's maximum shapes."""
        for name, nbytes in sizes.items():
            self.ensure(name, nbytes)

    @property
    def allocations(self) -> int:
        """How many device allocations this set has made."""
        return self._allocations

    def release(self) -> None:
        """Free every buffer (the set stays usable and grows again on demand)."""
        buffers, self._buffers = list(self._buffers.values()), {}
        for buf in buffers:
            buf.free()
