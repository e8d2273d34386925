"""NOT CUDA: the subset of ``cuda.bindings.runtime`` edgert uses, over :mod:`tests.trt.host_cuda`.

With the TensorRT emulator, this sits first on ``PYTHONPATH`` in tests, so ``edgert.backends.cuda``
and everything above it run unchanged on a machine without a GPU, in subprocesses too (the build
child, the daemon). Same call shapes as cuda-bindings: every call returns a tuple whose first item
is a ``cudaError_t`` (a test checks each name exists in the real module). Memory, streams and their
queued work are host_cuda's, so the emulator refuses addresses outside live device buffers.

Environment: ``EMULATOR_SM`` (default ``sm_87``), ``EMULATOR_GPU_MEMORY`` (bytes, default 8 GiB),
``EMULATOR_INTEGRATED`` ("1": a Jetson-like integrated GPU).
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgert.backends.cuda import DeviceBuffer, HostBuffer, Stream
from edgert.errors import EdgertError
from tests.trt import host_cuda


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorLaunchFailure = 719


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


cudaStreamNonBlocking = 1
cudaHostAllocDefault = 0

_MESSAGES = {
    cudaError_t.cudaSuccess: b"no error",
    cudaError_t.cudaErrorInvalidValue: b"invalid argument",
    cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
    cudaError_t.cudaErrorInvalidDevice: b"invalid device ordinal",
    cudaError_t.cudaErrorInvalidResourceHandle: b"invalid resource handle",
    cudaError_t.cudaErrorLaunchFailure: b"unspecified launch failure",
}
_GPU = host_cuda.HostCuda(
    int(os.environ.get("EMULATOR_GPU_MEMORY", 8 << 30)),
    integrated=os.environ.get("EMULATOR_INTEGRATED") == "1",
)
_buffers: dict[int, DeviceBuffer | HostBuffer] = {}
_streams: dict[int, Stream] = {}
_last = cudaError_t.cudaSuccess
_detail: dict[cudaError_t, str] = {}


def _status(action: Callable[[], Any]) -> tuple[cudaError_t, Any]:
    """Run a host_cuda action; its CudaError's ``cudaError…`` name becomes the returned code."""
    global _last
    try:
        return cudaError_t.cudaSuccess, action()
    except EdgertError as exc:
        found = re.search(r"cudaError\w+", exc.message)
        err = cudaError_t[found[0]] if found and found[0] in cudaError_t.__members__ else None
        _last = err or cudaError_t.cudaErrorInvalidValue
        _detail[_last] = exc.message  # shown by cudaGetErrorString: the emulator's reason
        return _last, None


def cudaGetErrorName(err: cudaError_t) -> tuple[cudaError_t, bytes]:
    return cudaError_t.cudaSuccess, cudaError_t(err).name.encode()


def cudaGetErrorString(err: cudaError_t) -> tuple[cudaError_t, bytes]:
    text = _MESSAGES[cudaError_t(err)]
    detail = _detail.pop(cudaError_t(err), None)
    return cudaError_t.cudaSuccess, text + (f"; emulator: {detail}".encode() if detail else b"")


def cudaGetLastError() -> tuple[cudaError_t]:
    global _last
    err, _last = _last, cudaError_t.cudaSuccess
    return (err,)


def cudaGetDeviceCount() -> tuple[cudaError_t, int]:
    return cudaError_t.cudaSuccess, 1


def cudaDriverGetVersion() -> tuple[cudaError_t, int]:
    return cudaError_t.cudaSuccess, 12060


def cudaRuntimeGetVersion() -> tuple[cudaError_t, int]:
    return cudaError_t.cudaSuccess, 12060


def cudaSetDevice(device: int) -> tuple[cudaError_t]:
    return (cudaError_t.cudaSuccess if device == 0 else cudaError_t.cudaErrorInvalidDevice,)


@dataclass
class cudaDeviceProp:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int
    integrated: int


def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, cudaDeviceProp | None]:
    if device != 0:
        return cudaError_t.cudaErrorInvalidDevice, None
    info = _GPU.info
    props = cudaDeviceProp(
        b"edgert emulated GPU", info.major, info.minor, info.total_memory, int(info.integrated)
    )
    return cudaError_t.cudaSuccess, props


def cudaMemGetInfo() -> tuple[cudaError_t, int, int]:
    free, total = _GPU.mem_info()
    return cudaError_t.cudaSuccess, free, total


def _keep(buf: DeviceBuffer | HostBuffer) -> int:
    _buffers[buf.ptr] = buf
    return buf.ptr


def cudaMalloc(nbytes: int) -> tuple[cudaError_t, int | None]:
    return _status(lambda: _keep(_GPU.alloc_device(nbytes)))


def cudaHostAlloc(nbytes: int, flags: int) -> tuple[cudaError_t, int | None]:
    return _status(lambda: _keep(_GPU.alloc_host(nbytes)))


def _free(ptr: int) -> tuple[cudaError_t]:
    buf = _buffers.pop(int(ptr), None)
    if buf is None:
        return (cudaError_t.cudaErrorInvalidValue,)
    return (_status(buf.free)[0],)


def cudaFree(ptr: int) -> tuple[cudaError_t]:
    return _free(ptr)


def cudaFreeHost(ptr: int) -> tuple[cudaError_t]:
    return _free(ptr)


def cudaStreamCreateWithFlags(flags: int) -> tuple[cudaError_t, int]:
    stream = _GPU.stream()
    _streams[stream.handle] = stream
    return cudaError_t.cudaSuccess, stream.handle


def _stream_call(handle: int, action: Callable[[Stream], None]) -> tuple[cudaError_t]:
    stream = _streams.get(int(handle))
    if stream is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    return (_status(lambda: action(stream))[0],)


def cudaStreamSynchronize(stream: int) -> tuple[cudaError_t]:
    return _stream_call(stream, lambda s: s.synchronize())


def cudaStreamDestroy(stream: int) -> tuple[cudaError_t]:
    result = _stream_call(stream, lambda s: s.close())
    _streams.pop(int(stream), None)
    return result


def cudaMemcpyAsync(
    dst: int, src: int, nbytes: int, kind: cudaMemcpyKind, stream: int
) -> tuple[cudaError_t]:
    """Queued on the stream like host_cuda's copies; the device side must be live and big
    enough. Host memory is read when the queue runs (pinned) or now (pageable)."""
    handle = int(stream)
    if handle not in _streams:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    to_device = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
    if host_cuda.check_device_span(int(dst if to_device else src), nbytes, "copy"):
        return (cudaError_t.cudaErrorInvalidValue,)
    if to_device and int(src) not in _buffers:  # pageable: staged before the call returns
        data = host_cuda._read(int(src), nbytes)
        host_cuda.enqueue(handle, lambda: host_cuda._write(int(dst), data))
    else:
        host_cuda.enqueue(
            handle, lambda: host_cuda._write(int(dst), host_cuda._read(int(src), nbytes))
        )
    return (cudaError_t.cudaSuccess,)
