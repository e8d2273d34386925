"""A host-memory stand-in for :class:`edgert.backends.cuda.Cuda`, so the TensorRT backend runs on
CPU against the emulated ``tensorrt`` (:mod:`tests.trt.emulator`).

It hands out edgert's own ``DeviceBuffer``/``HostBuffer``/``Stream`` objects, backed by numpy
arrays, and keeps the CUDA semantics a backend can get wrong:

- Work on a stream is *queued* and runs at ``synchronize()`` (or when a free, a copy into
  pageable memory, or the stream's close forces it), so reading outputs before synchronizing
  sees stale data, as on a GPU.
- A process-wide registry of live allocations lets the emulator refuse an address that is not
  inside a live *device* buffer: a freed buffer, host memory, or a buffer too small for the
  tensor. Freed memory is quarantined (never reused) until ``close()``, so a stale pointer can
  never land in a newer buffer.
- ``mem_info()`` reports a configurable total, so "the engine does not fit" can be tested.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgert.backends.cuda import (
    CudaError,
    DeviceBuffer,
    DeviceInfo,
    HostBuffer,
    Stream,
    check_copy,
)
from edgert.errors import BackendError

__all__ = ["HostCuda", "check_device_span", "drain", "enqueue", "stream_is_live"]

_LOCK = threading.RLock()
_HANDLES = itertools.count(0x5EED_0000, 0x100)


@dataclass
class _Block:
    base: int
    nbytes: int
    device: bool
    owner: HostCuda
    array: np.ndarray = field(repr=False)  # keeps the memory alive


@dataclass
class _Queue:
    owner: HostCuda
    work: list[Callable[[], None]] = field(default_factory=list)
    failure: str | None = None  # the first asynchronous failure, raised at synchronize()


_LIVE: dict[int, _Block] = {}  # base pointer -> live allocation, across every HostCuda
_STREAMS: dict[int, _Queue] = {}  # handle -> pending work of a live stream


def check_device_span(ptr: int, nbytes: int, what: str) -> str | None:
    """None if ``[ptr, ptr + nbytes)`` lies inside one live device allocation, else why not."""
    with _LOCK:
        for block in _LIVE.values():
            if block.base <= ptr < block.base + max(block.nbytes, 1):
                if not block.device:
                    return f"{what} at {ptr:#x} is host memory, not device memory"
                if ptr + nbytes > block.base + block.nbytes:
                    return (
                        f"{what} needs {nbytes} bytes at {ptr:#x}, but its device buffer ends "
                        f"{block.base + block.nbytes - ptr} bytes after that address"
                    )
                return None
    return f"{what} at {ptr:#x} is not inside any live device allocation (freed, or never one)"


def stream_is_live(handle: int) -> bool:
    with _LOCK:
        return handle in _STREAMS


def enqueue(handle: int, work: Callable[[], None]) -> bool:
    """Queue ``work`` on a live stream; False if ``handle`` is no live stream."""
    with _LOCK:
        queue = _STREAMS.get(handle)
        if queue is None:
            return False
        queue.work.append(work)
        return True


def drain(handle: int) -> None:
    """Run a stream's queued work in order (work queued meanwhile runs too)."""
    while True:
        with _LOCK:
            queue = _STREAMS.get(handle)
            if queue is None or not queue.work:
                return
            work = queue.work.pop(0)
        try:
            work()
        except Exception as exc:  # a failed kernel: reported by the next synchronize
            queue.failure = queue.failure or f"{type(exc).__name__}: {exc}"


def _drain_all() -> None:
    with _LOCK:
        handles = list(_STREAMS)
    for handle in handles:
        drain(handle)


def _read(ptr: int, nbytes: int) -> bytes:
    return ctypes.string_at(ptr, nbytes) if nbytes else b""


def _write(ptr: int, data: bytes) -> None:
    if data:
        ctypes.memmove(ptr, data, len(data))


def _default_sm() -> tuple[int, int]:
    sm = os.environ.get("EMULATOR_SM") or "sm_87"
    digits = sm[3:]
    return int(digits[:-1]), int(digits[-1])


class HostCuda:
    """Stands in for ``edgert.backends.cuda.Cuda`` (the ``Memory`` protocol plus ``info`` and
    ``close``) with host memory. ``total_memory`` is what ``mem_info`` reports; device
    allocations count against it, and one that does not fit fails like ``cudaMalloc``."""

    def __init__(
        self,
        total_memory: int = 8 << 30,
        *,
        reserved: int = 0,
        sm: str | None = None,
        integrated: bool = False,
    ) -> None:
        if sm is not None:
            major, minor = int(sm[3:-1]), int(sm[-1])
        else:
            major, minor = _default_sm()
        self._info = DeviceInfo(0, "emulated", major, minor, total_memory, integrated)
        self.reserved = reserved
        self._closed = False
        self._quarantine: list[np.ndarray] = []
        self._buffers: dict[int, DeviceBuffer | HostBuffer] = {}  # by pointer
        self._streams: dict[int, Stream] = {}  # by handle
        self.allocations = 0

    @property
    def info(self) -> DeviceInfo:
        self._check_open()
        return self._info

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("HostCuda is closed")

    def _used(self) -> int:
        with _LOCK:
            return sum(max(b.nbytes, 1) for b in _LIVE.values() if b.owner is self and b.device)

    def mem_info(self) -> tuple[int, int]:
        self._check_open()
        total = self._info.total_memory
        return max(total - self.reserved - self._used(), 0), total

    def _alloc(self, nbytes: int, device: bool) -> tuple[int, Callable[[int], None]]:
        self._check_open()
        if nbytes < 0:
            raise CudaError(f"allocation of {nbytes} bytes failed: cudaErrorInvalidValue")
        if device and max(nbytes, 1) > self.mem_info()[0]:
            raise CudaError(
                f"cudaMalloc({nbytes} bytes) failed: cudaErrorMemoryAllocation (out of memory)"
            )
        array = np.zeros(max(nbytes, 1), dtype=np.uint8)
        ptr = int(array.ctypes.data)
        with _LOCK:
            _LIVE[ptr] = _Block(ptr, nbytes, device, self, array)
        self.allocations += 1

        def release(address: int) -> None:
            _drain_all()  # cudaFree waits for the device, as the real one does
            with _LOCK:
                block = _LIVE.pop(address, None)
            self._buffers.pop(address, None)
            if block is None:
                raise CudaError(f"cudaFree({address:#x}) failed: cudaErrorInvalidValue")
            self._quarantine.append(block.array)

        return ptr, release

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        ptr, release = self._alloc(nbytes, device=True)
        buf = self._buffers[ptr] = DeviceBuffer(ptr, nbytes, release)
        return buf

    def alloc_host(self, nbytes: int) -> HostBuffer:
        ptr, release = self._alloc(nbytes, device=False)
        buf = self._buffers[ptr] = HostBuffer(ptr, nbytes, True, release)
        return buf

    def stream(self) -> Stream:
        self._check_open()
        handle = next(_HANDLES)
        with _LOCK:
            _STREAMS[handle] = _Queue(self)

        def destroy() -> None:
            drain(handle)  # cudaStreamDestroy lets queued work finish
            with _LOCK:
                _STREAMS.pop(handle, None)
            self._streams.pop(handle, None)

        def sync() -> None:
            self._check_open()
            drain(handle)
            with _LOCK:
                queue = _STREAMS.get(handle)
                failure, queue.failure = (queue.failure, None) if queue else (None, None)
            if failure:
                raise CudaError(f"cudaStreamSynchronize failed: cudaErrorLaunchFailure ({failure})")

        stream = self._streams[handle] = Stream(handle, sync, destroy)
        return stream

    def _check_stream(self, stream: Stream) -> None:
        if not isinstance(stream, Stream) or not stream_is_live(stream.handle):
            raise CudaError("cudaMemcpyAsync failed: cudaErrorInvalidResourceHandle (stream)")

    def _check_device(self, buf: DeviceBuffer, what: str) -> None:
        if not isinstance(buf, DeviceBuffer):
            raise BackendError(f"{what} must be a DeviceBuffer, not {type(buf).__name__}")
        problem = check_device_span(buf.ptr, 0, what) if buf.ptr else f"{what} was freed"
        if problem:
            raise CudaError(f"cudaMemcpyAsync failed: cudaErrorInvalidValue ({problem})")

    @staticmethod
    def _pinned(array: np.ndarray) -> bool:
        ptr = int(array.ctypes.data)
        with _LOCK:
            return any(
                not b.device and b.base <= ptr < b.base + max(b.nbytes, 1) for b in _LIVE.values()
            )

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
        self._check_open()
        check_copy(src, dst, to_device=True)
        self._check_device(dst, "copy_to_device: dst")
        self._check_stream(stream)
        address, nbytes = dst.ptr, src.nbytes
        if self._pinned(src):  # a DMA from pinned memory reads it when the stream gets there
            source = int(src.ctypes.data)
            enqueue(stream.handle, lambda: _write(address, _read(source, nbytes)))
        else:  # pageable memory is staged before the call returns
            data = src.tobytes()
            enqueue(stream.handle, lambda: _write(address, data))

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
        self._check_open()
        check_copy(dst, src, to_device=False)
        self._check_device(src, "copy_to_host: src")
        self._check_stream(stream)
        target, source, nbytes = int(dst.ctypes.data), src.ptr, dst.nbytes
        enqueue(stream.handle, lambda: _write(target, _read(source, nbytes)))
        if not self._pinned(dst):  # a copy into pageable memory returns once it is done
            drain(stream.handle)

    def close(self) -> None:
        """Finish queued work, free every buffer and stream this object made (idempotent)."""
        if self._closed:
            return
        _drain_all()
        for buf in list(self._buffers.values()):
            buf.free()
        for stream in list(self._streams.values()):
            stream.close()
        # The quarantine stays until this object is collected: a stale view reads old bytes
        # instead of crashing the test process.
        self._closed = True

    def __enter__(self) -> HostCuda:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def live_buffers(self) -> int:
        """How many allocations of this object are still live (leak checks in tests)."""
        with _LOCK:
            return sum(1 for b in _LIVE.values() if b.owner is self)


def host_view(ptr: int, dtype: Any, count: int) -> np.ndarray:
    """A numpy view of emulated device memory (for tests that peek at buffers)."""
    raw = (ctypes.c_byte * max(count * np.dtype(dtype).itemsize, 1)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count)
