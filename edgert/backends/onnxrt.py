"""ONNX Runtime on the CPU: the embedded default backend, and the FP32 parity reference."""

from __future__ import annotations

import functools
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from edgert.backends.base import (
    Backend,
    BackendKind,
    BuildRequest,
    BuildResult,
    require_quantized,
)
from edgert.config import ModelConfig, Precision
from edgert.errors import BuildError, InferenceError, ModelCheckError, mapped
from edgert.spec import ModelIO

if TYPE_CHECKING:
    from edgert.onnx import OnnxSource
    from edgert.onnx.capability import Capability

__all__ = ["KIND", "OnnxRuntimeBackend", "OnnxRuntimeKind", "reference_session"]

ARTIFACT = "model.ort"
_PROVIDERS = ["CPUExecutionProvider"]
# ALL: its layout transforms (NCHWc convolutions, blocked by the CPU's vector width) make
# convolutions cheaper on the CPU. They tie the artifact to the instruction set, so the
# device in the artifact key names it (cpu_isa) and another CPU's artifact is refused.
_OPT_LEVEL = "all"
# The instruction-set features ONNX Runtime's kernels choose by, first match wins.
_ISA = (("avx512f", "avx512"), ("avx2", "avx2"), ("asimd", "neon"))
# ONNX Runtime runs ai.onnx opsets from 7 up (docs/Versioning.md: "All versions of ONNX Runtime
# will support ONNX opsets all the way back to (and including) opset version 7").
_OLDEST_OPSET = 7


def _session_options(threads: int = 0) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return options


def reference_session(source: OnnxSource) -> ort.InferenceSession:
    """An unoptimised FP32 session on the source graph: the parity reference."""
    options = _session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # In memory, so the graph edgert prepared (named dims) is what runs; protobuf caps that at
    # 2 GiB, beyond which the file itself is the reference.
    model: str | bytes = (
        source.model.SerializeToString() if source.model.ByteSize() < 2**31 else str(source.path)
    )
    with mapped(ModelCheckError, f"ONNX Runtime {ort.__version__} cannot run {source.path}"):
        return ort.InferenceSession(model, options, providers=_PROVIDERS)


@functools.cache
def cpu_isa() -> str:
    """The widest vector extension ONNX Runtime's CPU kernels use here (``avx512``, ``avx2``,
    ``neon``), from /proc/cpuinfo's flags; "" when none is known or it cannot be read."""
    try:
        return isa_of(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return ""


def isa_of(cpuinfo: str) -> str:
    """:func:`cpu_isa` of a /proc/cpuinfo text (x86 ``flags``, Arm ``Features`` lines)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return next((name for flag, name in _ISA if flag in flags), "")


class OnnxRuntimeKind(BackendKind):
    name = "onnxruntime"

    def version(self) -> str:
        return str(ort.__version__)

    def device(self) -> str:
        isa = cpu_isa()
        return f"cpu-{platform.machine().lower()}" + (f"-{isa}" if isa else "")

    def build_options(
        self, precision: Precision, config: ModelConfig | None = None
    ) -> dict[str, Any]:
        return {"optimization": _OPT_LEVEL, "format": "ort"}

    def capability(self) -> Capability:
        from edgert.onnx.capability import Capability

        newest = _newest_opsets()
        opsets = {"ai.onnx": (_OLDEST_OPSET, newest.get("ai.onnx", _OLDEST_OPSET))}
        if "ai.onnx.ml" in newest:
            opsets["ai.onnx.ml"] = (1, newest["ai.onnx.ml"])
        # Other domains (com.microsoft contrib ops...) are ONNX Runtime's own: building tells.
        return Capability(f"ONNX Runtime {ort.__version__}", opsets)

    def build(self, request: BuildRequest) -> BuildResult:
        from edgert.onnx import to_fp16, write_prepared  # builds only: serving skips onnx

        model = request.source.model
        notes: list[str] = []
        if request.precision == "fp16":
            request.progress("converting to FP16", 0.1)
            model = to_fp16(model)
            notes.append("converted to FP16 (overflow-prone ops kept in FP32)")
        elif request.precision == "int8":
            require_quantized(
                request.source, "e.g. onnxruntime.quantization.quantize_static, QDQ format"
            )
        request.progress("optimizing with ONNX Runtime", 0.3)
        out = request.out_dir / ARTIFACT
        options = _session_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(out)
        options.add_session_config_entry("session.save_model_format", "ORT")
        with tempfile.TemporaryDirectory(dir=request.out_dir) as scratch:
            # Weights may live in external files: write the (possibly converted) graph beside its
            # data so ONNX Runtime resolves them, then let it serialise the optimised model.
            prepared = write_prepared(model, Path(scratch))
            with mapped(BuildError, f"ONNX Runtime {ort.__version__} could not build"):
                ort.InferenceSession(str(prepared), options, providers=_PROVIDERS)
        if not out.is_file():
            raise BuildError(f"ONNX Runtime wrote no optimized model to {out}")
        request.progress("optimized", 0.7)
        return BuildResult(ARTIFACT, self.build_options(request.precision), tuple(notes))

    def load(self, artifact: Path, io: ModelIO, *, threads: int = 0) -> Backend:
        return OnnxRuntimeBackend(artifact, io, threads)


def _newest_opsets() -> dict[str, int]:
    """The newest opset of each standard domain this ONNX Runtime knows: the highest
    ``since_version`` among its operator schemas (opset N defines at least one op anew). Falls
    back to the onnx package's newest default-domain opset if ONNX Runtime cannot say."""
    newest: dict[str, int] = {}
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as bindings

        for schema in bindings.get_all_operator_schema():
            domain = str(schema.domain) or "ai.onnx"
            if domain in ("ai.onnx", "ai.onnx.ml"):
                newest[domain] = max(newest.get(domain, 0), int(schema.since_version))
    except (ImportError, AttributeError, RuntimeError):
        newest = {}
    if "ai.onnx" not in newest:
        import onnx.defs

        newest["ai.onnx"] = int(onnx.defs.onnx_opset_version())
    return newest


class OnnxRuntimeBackend(Backend):
    """Runs an ORT-format artifact (or any ONNX file) on ONNX Runtime's CPU provider."""

    def __init__(self, artifact: Path, io: ModelIO, threads: int = 0) -> None:
        super().__init__(f"onnxruntime:{artifact}", io)
        self.artifact = artifact
        self.threads = threads
        self._session: ort.InferenceSession | None = None
        self._output_names: list[str] = []

    def _activate_impl(self) -> None:
        options = _session_options(self.threads)
        # No busy-waiting between inferences: a served model idles between requests, and its
        # spinning threads would take the cores the network thread and the other models need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if self.artifact.suffix == ".ort":
            options.add_session_config_entry("session.load_model_format", "ORT")
            # Already optimised at build time; don't redo it on every load.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        with mapped(InferenceError, f"ONNX Runtime cannot load {self.artifact}"):
            self._session = ort.InferenceSession(str(self.artifact), options, providers=_PROVIDERS)
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None
        with mapped(InferenceError, "ONNX Runtime inference failed"):
            results = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))

    def _deactivate_impl(self) -> None:
        self._session = None


KIND = OnnxRuntimeKind()
