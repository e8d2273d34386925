"""TensorRT: engines built in a child process, run with named tensors on cuda-python memory.

Every TensorRT call goes through :mod:`edgert.backends.trt_compat` (the per-version branches);
device memory and streams through :mod:`edgert.backends.cuda`. Importing this module raises
:class:`BackendUnavailable` (with the reason) where TensorRT, cuda-python or a GPU is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from edgert.backends import cuda
from edgert.backends.base import (
    Backend,
    BackendKind,
    BuildRequest,
    BuildResult,
    require_quantized,
)
from edgert.config import ModelConfig, Precision
from edgert.errors import BackendUnavailable, BuildError, InferenceError, InputError, ModelLoadError
from edgert.sections import TensorRTSection
from edgert.spec import ModelIO, concrete_shape

if TYPE_CHECKING:
    from edgert.onnx.capability import Capability

try:
    from edgert.backends import trt_compat as compat
except ImportError as exc:
    raise BackendUnavailable(f"TensorRT is not importable here ({exc})") from exc

if cuda.device_count() == 0:
    raise BackendUnavailable("TensorRT imports, but no CUDA device is visible (see edgert doctor)")

__all__ = ["ARTIFACT", "KIND", "TensorRTBackend", "TensorRTKind"]

ARTIFACT = "engine.plan"
_INT32 = np.iinfo(np.int32)
# model.toml [tensorrt] keys: what they change in the engine (so, part of the artifact key).
_OPTIONS = TensorRTSection.__struct_fields__


def _device_info() -> cuda.DeviceInfo:
    with cuda.Cuda(0) as gpu:
        return gpu.info


class TensorRTKind(BackendKind):
    name = "tensorrt"

    def __init__(self) -> None:
        self.api = compat.api()
        self.info = _device_info()

    def version(self) -> str:
        return compat.VERSION

    def device(self) -> str:
        # Jetson's integrated GPUs never share engines with desktop cards of the same sm.
        return f"{self.info.sm}-igpu" if self.info.integrated else self.info.sm

    def capability(self) -> Capability:
        from edgert.onnx.capability import tensorrt_parser

        return tensorrt_parser(compat.VERSION)

    def build_options(
        self, precision: Precision, config: ModelConfig | None = None
    ) -> dict[str, Any]:
        # The keys the file sets only, so an artifact built before a key existed keeps its key.
        section = config.tensorrt if config else TensorRTSection()
        options: dict[str, Any] = {
            k: v for k, v in msgspec.structs.asdict(section).items() if v is not None
        }
        if precision == "fp16":
            options["fp16"] = "builder-flag" if self.api.fp16_by_flag else "onnx-conversion"
        options["platform"] = f"{sys.platform}-{os.uname().machine}"
        return options

    def build(self, request: BuildRequest) -> BuildResult:
        from edgert.onnx import to_fp16, write_prepared  # builds only: serving skips onnx

        model = request.source.model
        notes: list[str] = []
        options = self.build_options(request.precision, request.config)
        if options.get("dla_core") is not None and request.precision == "fp32":
            raise BuildError('DLA runs FP16 or INT8 only; set precision = "fp16" or "int8"')
        if request.precision == "int8":  # no calibrator path: Q/DQ nodes only
            require_quantized(
                request.source, "e.g. NVIDIA Model Optimizer, or onnxruntime.quantization in QDQ"
            )
        if request.precision == "fp16" and not self.api.fp16_by_flag:
            request.progress("converting the ONNX to FP16 (TensorRT 11 is strongly typed)", 0.02)
            model = to_fp16(model)
            notes.append("converted to FP16 before parsing (overflow-prone ops kept in FP32)")
        profiles = {
            spec.name: [list(concrete_shape(spec.shape, request.io.dims, w)) for w in _WHICH]
            for spec in request.io.inputs
            if spec.is_dynamic
        }
        cache_dir = request.cache_dir
        timing_cache = (
            cache_dir / f"timing-trt{compat.VERSION}-{self.device()}.cache" if cache_dir else None
        )
        with tempfile.TemporaryDirectory(dir=request.out_dir) as scratch:
            prepared = write_prepared(model, Path(scratch))
            job = {
                "onnx": str(prepared),
                "plan": str(request.out_dir / ARTIFACT),
                "timing_cache": str(timing_cache) if timing_cache else None,
                "precision": request.precision,
                "profiles": profiles,
                "workspace_bytes": options["workspace_mb"] << 20
                if "workspace_mb" in options
                else None,
                **{k: options.get(k) for k in _OPTIONS if k != "workspace_mb"},
            }
            job_path = Path(scratch) / "job.json"
            job_path.write_text(json.dumps(job))
            warnings = _run_build(job_path, request)
        notes.extend(f"TensorRT: {w}" for w in warnings[-3:])
        return BuildResult(ARTIFACT, options, tuple(notes))

    def load(self, artifact: Path, io: ModelIO, *, threads: int = 0) -> Backend:
        return TensorRTBackend(artifact, io, self.api)


_WHICH: tuple[Any, ...] = ("min", "opt", "max")


def _run_build(job: Path, request: BuildRequest) -> list[str]:
    """Run the build child; relay its progress; BuildError with its reasons if it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "edgert.backends.trt_build", str(job)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        last: dict[str, Any] = {}
        for line in child.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # TensorRT or a plugin printing on stdout
            if "stage" in message:
                request.progress(str(message["stage"]), float(message["fraction"]))
            else:
                last = message
        stderr = child.stderr.read()
        code = child.wait()
    if last.get("ok") and code == 0:
        return [str(w) for w in last.get("warnings", [])]
    if "error" in last:
        details = [str(d) for d in last.get("details", [])]
        reason = "; ".join(details[-5:]) if details else "no reason logged"
        raise BuildError(f"{last['error']}: {reason}", log="\n".join(details))
    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    hint = " (out of memory? see dmesg)" if code == -9 else ""
    tail = stderr.strip().splitlines()[-5:]
    raise BuildError(
        f"the TensorRT build process {how}{hint}: {' | '.join(tail) or 'no output'}", log=stderr
    )


class TensorRTBackend(Backend):
    """Runs one engine: named tensors, shapes per call, buffers reused and sized at profile max."""

    def __init__(self, artifact: Path, io: ModelIO, api: compat.Trt8) -> None:
        super().__init__(f"tensorrt:{artifact}", io)
        self.artifact = artifact
        self.api = api
        self.log = compat.TrtLog()
        self._gpu: cuda.Cuda | None = None
        self._stream: cuda.Stream | None = None
        self._buffers: cuda.BufferSet | None = None
        self._pinned: dict[str, cuda.HostBuffer] = {}
        self._exec: compat.Execution | None = None
        self._tensors: list[compat.TensorInfo] = []
        self._keep: tuple[Any, ...] = ()

    def _activate_impl(self) -> None:
        plan = self.artifact.read_bytes()
        gpu = cuda.Cuda(0)
        try:
            free, total = gpu.mem_info()
            if len(plan) > free:
                raise ModelLoadError(_no_room(self.artifact, len(plan), free, total))
            try:
                runtime, engine = compat.deserialize(plan, self.log, _version_compatible(self))
                tensors = compat.tensors(self.api, engine)
                need = self.api.device_memory(engine) + _io_bytes(tensors)
                free, total = gpu.mem_info()
                if need > free:
                    raise ModelLoadError(_no_room(self.artifact, need, free, total))
                self._exec = compat.Execution(self.api, engine, self.log)
            except compat.TrtFailure as exc:
                raise ModelLoadError(
                    f"{self.artifact}: {exc.message}: {'; '.join(exc.details) or 'no reason'}",
                    log="\n".join(exc.details),
                ) from exc
            self._keep = (runtime, engine)  # the context needs both alive
            self._tensors = tensors
            self._stream = gpu.stream()
            self._buffers = cuda.BufferSet(gpu)
            sizes = _max_sizes(self._exec, tensors)
            self._buffers.reserve(sizes)
            self._pinned = {name: gpu.alloc_host(n) for name, n in sizes.items()}
            self._gpu = gpu
        except BaseException:
            gpu.close()
            raise

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._exec and self._gpu and self._stream and self._buffers
        gpu, stream, buffers, execution = self._gpu, self._stream, self._buffers, self._exec
        try:
            for info in self._tensors:
                if not info.is_input:
                    continue
                array = _to_engine(feeds[info.name], info)
                if not execution.set_input_shape(info.name, array.shape):
                    raise InputError(
                        f"input '{info.name}' of shape {list(array.shape)} is outside the "
                        f"engine's profile (max {list(info.profile_max or info.shape)})"
                    )
                # Through pinned memory: the GPU reads it directly, where pageable memory is
                # staged through a driver buffer first, and only pinned copies are truly
                # asynchronous.
                staged = self._stage(info.name, array.nbytes).view(info.dtype, array.shape)
                staged[...] = array
                buffer = buffers.ensure(info.name, array.nbytes)
                gpu.copy_to_device(buffer, staged, stream)
                execution.set_address(info.name, buffer.ptr)
            shapes: dict[str, tuple[int, ...]] = {}
            for info in self._tensors:
                if info.is_input:
                    continue
                shape = execution.output_shape(info.name)
                if -1 in shape:
                    execution.use_allocator(info.name, lambda n, size: buffers.ensure(n, size).ptr)
                else:
                    buffer = buffers.ensure(info.name, _nbytes(shape, info.dtype))
                    execution.set_address(info.name, buffer.ptr)
                    shapes[info.name] = shape
            execution.execute(stream.handle)
            if len(shapes) < sum(1 for t in self._tensors if not t.is_input):
                stream.synchronize()  # data-dependent shapes are known once the run is done
            staged_outputs: dict[str, np.ndarray] = {}
            for info in self._tensors:
                if info.is_input:
                    continue
                if info.name in shapes:
                    shape = shapes[info.name]
                else:
                    shape = execution.allocated_shape(info.name)
                nbytes = _nbytes(shape, info.dtype)
                view = self._stage(info.name, nbytes).view(info.dtype, shape)
                gpu.copy_to_host(view, buffers.ensure(info.name, nbytes), stream)
                staged_outputs[info.name] = view
            stream.synchronize()
        except compat.TrtFailure as exc:
            raise InferenceError(
                f"{exc.message}: {'; '.join(exc.details) or 'no reason logged'}",
                log="\n".join(exc.details),
            ) from exc
        # Copies out of the pinned staging memory, which the next call reuses.
        return {
            spec.name: staged_outputs[spec.name].astype(spec.dtype.numpy, copy=True)
            for spec in self.io.outputs
        }

    def _stage(self, name: str, nbytes: int) -> cuda.HostBuffer:
        """The pinned host buffer of ``name``, at least ``nbytes`` long (grown, never shrunk)."""
        assert self._gpu is not None
        found = self._pinned.get(name)
        if found is not None and found.ptr and found.nbytes >= nbytes:
            return found
        if found is not None:
            found.free()
        self._pinned[name] = self._gpu.alloc_host(nbytes)
        return self._pinned[name]

    def _deactivate_impl(self) -> None:
        for pinned in self._pinned.values():
            pinned.free()
        self._pinned = {}
        if self._buffers is not None:
            self._buffers.release()
        if self._stream is not None:
            self._stream.close()
        self._exec = None
        self._keep = ()
        if self._gpu is not None:
            self._gpu.close()
        self._gpu = self._stream = self._buffers = None


def _version_compatible(backend: TensorRTBackend) -> bool:
    """Version-compatible plans carry host code; run it only for plans edgert built so."""
    manifest = backend.artifact.parent / "manifest.json"
    try:
        options = json.loads(manifest.read_text())["key"]["options"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(options.get("version_compatible"))


def _max_sizes(execution: compat.Execution, tensors: list[compat.TensorInfo]) -> dict[str, int]:
    """Buffer sizes at the profile maximum: inputs from the profile, outputs from the shapes
    TensorRT derives for those inputs (outputs sized by the data are left to their allocator)."""
    sizes = {}
    for info in tensors:
        if info.is_input:
            shape = info.profile_max or info.shape
            if not execution.set_input_shape(info.name, shape):
                raise ModelLoadError(f"the engine refuses its own profile maximum {shape}")
            sizes[info.name] = _nbytes(shape, info.dtype)
    for info in tensors:
        if not info.is_input:
            shape = execution.output_shape(info.name)
            if -1 not in shape:
                sizes[info.name] = _nbytes(shape, info.dtype)
    return sizes


def _nbytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    return int(np.prod([max(d, 0) for d in shape], dtype=np.int64)) * dtype.itemsize


def _io_bytes(tensors: list[compat.TensorInfo]) -> int:
    return sum(
        _nbytes(t.profile_max or t.shape, t.dtype)
        for t in tensors
        if -1 not in (t.profile_max or t.shape)
    )


def _no_room(artifact: Path, need: int, free: int, total: int) -> str:
    mib = 1 << 20
    return (
        f"{artifact.parent.parent.parent.name}: the engine needs {need // mib} MiB of GPU memory, "
        f"{free // mib} MiB of {total // mib} MiB is free (on Jetson the OS shares it); "
        "serve fewer models or build with a smaller profile max"
    )


def _to_engine(array: np.ndarray, info: compat.TensorInfo) -> np.ndarray:
    """The array in the engine's dtype: TensorRT 8.6 takes int64 as int32, if it fits."""
    if array.dtype != info.dtype:
        if array.dtype == np.int64 and info.dtype == np.int32 and array.size:
            low, high = int(array.min()), int(array.max())
            if low < _INT32.min or high > _INT32.max:
                raise InputError(
                    f"input '{info.name}' holds {low if low < _INT32.min else high}, outside "
                    "int32; TensorRT 8.6 runs int64 inputs as int32"
                )
        array = array.astype(info.dtype)
    # Not np.ascontiguousarray: it turns a 0-d array (a scalar input) into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


KIND = TensorRTKind()
