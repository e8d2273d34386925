"""The CUDA memory layer on real cuda-python.

Without a GPU (development and CI machines) this covers what really fails there: no device, the
CUDA error messages, and the pure parts (BufferSet, host views, copy checks). With a GPU it moves
every edgert dtype through device memory; ``scripts/gpu-check`` runs it on a GPU machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgert.backends import cuda
from edgert.backends.cuda import (
    BufferSet,
    Cuda,
    CudaError,
    DeviceBuffer,
    HostBuffer,
    Stream,
    check_copy,
)
from edgert.errors import BackendError, BackendUnavailable
from edgert.spec import DType

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

try:
    DEVICES = cuda.device_count()
    NO_CUDA_PYTHON: str | None = None
except BackendUnavailable as exc:
    DEVICES, NO_CUDA_PYTHON = 0, exc.message

needs_cuda_python = pytest.mark.skipif(
    NO_CUDA_PYTHON is not None, reason=f"cuda-python is not importable: {NO_CUDA_PYTHON}"
)
needs_gpu = pytest.mark.skipif(DEVICES == 0, reason="needs an NVIDIA GPU and driver")


# --- without a GPU ---------------------------------------------------------------------------


class FakeAllocator:
    """Host-side stand-in for ``Cuda.alloc_device``: hands out fake pointers, records frees."""

    def __init__(self) -> None:
        self.next_ptr = 0x1000
        self.live: dict[int, int] = {}  # ptr → nbytes
        self.freed: list[int] = []

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + max(nbytes, 1)
        self.live[ptr] = nbytes
        return DeviceBuffer(ptr, nbytes, self.release)

    def release(self, ptr: int) -> None:
        del self.live[ptr]
        self.freed.append(ptr)


def test_buffer_set_reuses_a_buffer_big_enough_and_grows_otherwise() -> None:
    memory = FakeAllocator()
    buffers = BufferSet(memory)
    first = buffers.ensure("x", 100)
    assert buffers.ensure("x", 100) is first
    assert buffers.ensure("x", 10) is first  # never shrinks
    assert buffers.allocations == 1
    grown = buffers.ensure("x", 101)
    assert grown.nbytes == 101 and grown is not first
    assert first.ptr == 0 and memory.freed == [0x1000]  # the old one is freed, not leaked
    assert buffers.allocations == 2
    assert list(memory.live.values()) == [101]


def test_buffer_set_reserve_then_calls_allocate_nothing() -> None:
    memory = FakeAllocator()
    buffers = BufferSet(memory)
    buffers.reserve({"input": 4 * 16 * 8, "output": 4 * 16 * 2})
    assert buffers.allocations == 2
    for batch in (1, 16, 3, 8, 16):
        buffers.ensure("input", 4 * batch * 8)
        buffers.ensure("output", 4 * batch * 2)
    assert buffers.allocations == 2


def test_buffer_set_zero_size_gets_a_real_allocation() -> None:
    memory = FakeAllocator()
    buffers = BufferSet(memory)
    empty = buffers.ensure("empty", 0)
    assert empty.nbytes == 0 and empty.ptr != 0
    assert buffers.ensure("empty", 0) is empty
    assert buffers.allocations == 1


def test_buffer_set_release_frees_everything_and_can_grow_again() -> None:
    memory = FakeAllocator()
    buffers = BufferSet(memory)
    buffers.reserve({"a": 8, "b": 16, "c": 0})
    buffers.release()
    assert memory.live == {} and len(memory.freed) == 3
    buffers.release()  # twice is harmless
    assert buffers.ensure("a", 8).ptr != 0
    assert buffers.allocations == 4


def test_buffer_set_replaces_a_buffer_freed_behind_its_back() -> None:
    # Cuda.close() frees every buffer it made, including those a BufferSet still holds.
    memory = FakeAllocator()
    buffers = BufferSet(memory)
    buf = buffers.ensure("x", 64)
    buf.free()
    again = buffers.ensure("x", 64)
    assert again.ptr != 0 and again is not buf


def test_device_buffer_free_is_idempotent() -> None:
    released: list[int] = []
    buf = DeviceBuffer(0xABC, 4, released.append)
    buf.free()
    buf.free()
    assert released == [0xABC] and buf.ptr == 0


def test_stream_is_what_the_runner_sees() -> None:
    calls: list[str] = []
    stream = Stream(0x55, lambda: calls.append("sync"), lambda: calls.append("destroy"))
    assert stream.handle == 0x55
    stream.synchronize()
    stream.close()
    stream.close()
    assert calls == ["sync", "destroy"]


def test_host_buffer_view_is_a_writable_view_on_its_memory() -> None:
    backing = np.zeros(12, np.float32)
    host = HostBuffer(backing.ctypes.data, backing.nbytes, False, lambda ptr: None)
    view = host.view(np.float32, (3, 4))
    view[2, 3] = 5.0
    assert backing[11] == 5.0
    assert view.flags.c_contiguous and view.flags.writeable
    assert host.view("int8", 0).shape == (0,)
    with pytest.raises(BackendError, match="needs 96 bytes; the host buffer has 48"):
        host.view(np.float64, (3, 4))
    host.free()
    with pytest.raises(BackendError, match="freed"):
        host.view(np.float32, 1)


def test_copies_refuse_what_an_async_copy_cannot_do_safely() -> None:
    device = DeviceBuffer(0x1000, 64, lambda ptr: None)
    grid = np.zeros((4, 4), np.float32)
    check_copy(grid, device, to_device=True)  # exactly fits
    check_copy(grid[:2], device, to_device=False)  # a prefix of a bigger (reused) buffer
    with pytest.raises(BackendError, match="src must be a C-contiguous"):
        check_copy(grid[:, ::2], device, to_device=True)
    with pytest.raises(BackendError, match="src has 128 bytes, the device buffer 64"):
        check_copy(np.zeros(32, np.float32), device, to_device=True)
    with pytest.raises(BackendError, match="dst has 128 bytes, the device buffer 64"):
        check_copy(np.zeros(32, np.float32), device, to_device=False)
    readonly = np.zeros(4, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(BackendError, match="dst is read-only"):
        check_copy(readonly, device, to_device=False)
    device.free()
    with pytest.raises(BackendError, match="freed"):
        check_copy(grid, device, to_device=True)


def test_missing_cuda_python_is_reported_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    cuda._rt.cache_clear()
    try:
        with pytest.raises(BackendUnavailable) as info:
            cuda.device_count()
    finally:
        cuda._rt.cache_clear()
    assert info.value.message == "cuda-python is not installed: pip install 'edgert[tensorrt]'"


@needs_cuda_python
def test_a_failed_call_names_the_call_and_the_cuda_error() -> None:
    from cuda.bindings import runtime as cudart

    out_of_memory = (cudart.cudaError_t.cudaErrorMemoryAllocation, None)
    with pytest.raises(CudaError) as info:
        cuda._call("cudaMalloc(1099511627776 bytes)", out_of_memory)
    assert str(info.value) == (
        "cudaMalloc(1099511627776 bytes) failed: cudaErrorMemoryAllocation (out of memory)"
    )
    assert cuda._call("cudaMalloc", (cudart.cudaError_t.cudaSuccess, 42)) == 42


@needs_cuda_python
def test_versions() -> None:
    assert (cuda.runtime_version() or "").count(".") == 1
    driver = cuda.driver_version()
    assert driver is None or driver.count(".") == 1
    if driver is None:
        assert DEVICES == 0


@needs_cuda_python
def test_no_visible_device_means_zero_devices_and_a_named_error() -> None:
    # Hiding every GPU makes this machine GPU-less for real, whether or not it has one.
    code = (
        "from edgert.backends import cuda\n"
        "print(cuda.device_count())\n"
        "try:\n    cuda.Cuda()\n"
        "except cuda.CudaError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    count, message = result.stdout.splitlines()
    assert count == "0"
    assert message.startswith("cudaSetDevice(0) failed: cudaError"), message


@needs_cuda_python
def test_a_device_that_does_not_exist_raises_cuda_error() -> None:
    with pytest.raises(CudaError, match=rf"cudaSetDevice\({DEVICES + 3}\) failed: cudaError\w+"):
        Cuda(DEVICES + 3)


# --- with a GPU ------------------------------------------------------------------------------

ALL_DTYPES = [d.value for d in DType]  # float32, float16, int64, int32, int8, uint8, bool, …


def _sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def gpu() -> Iterator[Cuda]:
    with Cuda(0) as memory:
        yield memory


@needs_gpu
class TestOnGpu:
    def test_device_info(self, gpu: Cuda) -> None:
        info = gpu.info
        assert info.index == 0 and info.name
        assert info.sm == f"sm_{info.major}{info.minor}" and info.major >= 5
        free, total = gpu.mem_info()
        assert 0 < free <= total == info.total_memory

    @pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "pageable"])
    @pytest.mark.parametrize("shape", [(3, 5, 7), (0, 4)], ids=["3x5x7", "empty"])
    @pytest.mark.parametrize("dtype", ALL_DTYPES)
    def test_round_trip(self, gpu: Cuda, dtype: str, shape: tuple[int, ...], pinned: bool) -> None:
        expected = _sample(dtype, shape)
        stream = gpu.stream()
        device = gpu.alloc_device(expected.nbytes)
        if pinned:
            src_host, dst_host = gpu.alloc_host(expected.nbytes), gpu.alloc_host(expected.nbytes)
            src, dst = src_host.view(dtype, shape), dst_host.view(dtype, shape)
            src[...] = expected
            dst.fill(0)
        else:
            src, dst = expected.copy(), np.zeros_like(expected)
        gpu.copy_to_device(device, src, stream)
        gpu.copy_to_host(dst, device, stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst, expected, strict=True)
        if pinned:
            src_host.free()
            dst_host.free()
        device.free()
        stream.close()

    def test_non_contiguous_input_is_refused_and_its_contiguous_copy_works(self, gpu: Cuda) -> None:
        grid = _sample("float32", (8, 8))
        device = gpu.alloc_device(grid.nbytes)
        stream = gpu.stream()
        with pytest.raises(BackendError, match="C-contiguous"):
            gpu.copy_to_device(device, grid[:, ::2], stream)
        with pytest.raises(BackendError, match="C-contiguous"):
            gpu.copy_to_device(device, grid.T, stream)
        columns = np.ascontiguousarray(grid[:, ::2])
        gpu.copy_to_device(device, columns, stream)
        out = np.empty_like(columns)
        gpu.copy_to_host(out, device, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, grid[:, ::2])
        device.free()
        stream.close()

    def test_buffer_set_reuses_device_memory_across_calls(self, gpu: Cuda) -> None:
        buffers = BufferSet(gpu)
        stream = gpu.stream()
        buffers.reserve({"x": 16 * 32 * 4})
        for batch in (1, 16, 5, 16, 2):
            x = _sample("float32", (batch, 32))
            device = buffers.ensure("x", x.nbytes)
            out = np.empty_like(x)
            gpu.copy_to_device(device, x, stream)
            gpu.copy_to_host(out, device, stream)
            stream.synchronize()
            np.testing.assert_array_equal(out, x)
        assert buffers.allocations == 1
        buffers.release()
        stream.close()

    def test_device_to_host_beyond_the_buffer_is_refused(self, gpu: Cuda) -> None:
        device = gpu.alloc_device(64)
        stream = gpu.stream()
        with pytest.raises(BackendError, match="dst has 128 bytes, the device buffer 64"):
            gpu.copy_to_host(np.empty(32, np.float32), device, stream)
        with pytest.raises(BackendError, match="src has 128 bytes, the device buffer 64"):
            gpu.copy_to_device(device, np.zeros(32, np.float32), stream)
        device.free()
        stream.close()

    def test_an_absurd_allocation_raises_and_the_next_one_works(self, gpu: Cuda) -> None:
        with pytest.raises(CudaError, match=r"cudaMalloc\(\d+ bytes\) failed: cudaErrorMemoryAll"):
            gpu.alloc_device(1 << 50)
        buf = gpu.alloc_device(MiB)
        assert buf.ptr != 0
        buf.free()

    def test_mem_info_sees_an_allocation(self, gpu: Cuda) -> None:
        free_before, total = gpu.mem_info()
        assert free_before <= total
        big = gpu.alloc_device(256 * MiB)
        free_after, _ = gpu.mem_info()
        big.free()
        assert free_before - free_after >= 255 * MiB

    def test_synchronize_waits_for_queued_copies(self, gpu: Cuda) -> None:
        n = 64 * MiB
        host = gpu.alloc_host(n)
        src = host.view(np.uint8, n)
        src.fill(0xAB)
        device = gpu.alloc_device(n)
        stream = gpu.stream()
        assert stream.handle != 0
        out = np.zeros(n, np.uint8)
        gpu.copy_to_device(device, src, stream)
        gpu.copy_to_host(out, device, stream)
        stream.synchronize()
        assert out.min() == out.max() == 0xAB
        stream.close()
        stream.close()
        with pytest.raises(BackendError, match="closed stream"):
            stream.synchronize()
        host.free()
        device.free()

    def test_zero_byte_allocations_are_real(self, gpu: Cuda) -> None:
        device, host = gpu.alloc_device(0), gpu.alloc_host(0)
        assert device.ptr != 0 and host.ptr != 0 and host.pinned
        assert host.view(np.float32, (0, 3)).shape == (0, 3)
        device.free()
        host.free()

    def test_freeing_twice_and_closing_twice_are_harmless(self) -> None:
        with Cuda(0) as memory:
            device, host, stream = memory.alloc_device(8), memory.alloc_host(8), memory.stream()
            device.free()
            device.free()
            free_before, _ = memory.mem_info()
            left = memory.alloc_device(64 * MiB)
        assert left.ptr == 0 and host.ptr == 0  # close() freed what was left
        stream.close()
        memory.close()
        with Cuda(0) as other:
            assert other.mem_info()[0] >= free_before - 16 * MiB
        with pytest.raises(BackendError, match="closed"):
            memory.alloc_device(8)
