"""Device and host buffers, streams and the buffer set, as the TensorRT runner sees them.

The types here hold a pointer and a release callback; :class:`~edgert.backends.cuda.Cuda` makes
them on cuda-python (``cuda`` re-exports them), a host stand-in makes them in tests. Buffers are
freed explicitly, never by the garbage collector, so a free cannot land in the middle of a
running engine.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from edgert.errors import BackendError

__all__ = [
    "BufferSet",
    "DeviceBuffer",
    "HostBuffer",
    "Memory",
    "Stream",
    "check_copy",
]


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
