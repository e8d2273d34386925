"""The backend interface: a builder that turns an ONNX source into an artifact, and a runner.

Runners follow Polygraphy's shape: public ``activate / infer / deactivate`` check state, validate
inputs and time the call, then call the ``_impl`` hooks a backend fills in.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgert.config import ModelConfig, Precision
from edgert.errors import BackendError, BuildError, InputError
from edgert.spec import ModelIO, check_shared_dims

if TYPE_CHECKING:  # the onnx package loads only where a build needs it
    from edgert.onnx import OnnxSource
    from edgert.onnx.capability import Capability

__all__ = [
    "Backend",
    "BackendKind",
    "BuildRequest",
    "BuildResult",
    "ProgressFn",
    "require_quantized",
    "validate_feeds",
]

_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}

ProgressFn = Callable[[str, float], None]
"""Called with a stage description and the fraction (0..1) of the build done."""


@dataclass(frozen=True)
class BuildRequest:
    """What a backend needs to build one artifact into ``out_dir`` (a private staging dir)."""

    source: OnnxSource
    io: ModelIO
    config: ModelConfig
    precision: Precision
    out_dir: Path
    progress: ProgressFn = lambda stage, fraction: None
    cache_dir: Path | None = None  # the repository's engines/.cache (TensorRT timing caches)


@dataclass(frozen=True)
class BuildResult:
    """The artifact a backend wrote: its main file (relative to out_dir) and how it was built."""

    artifact: str
    options: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


class BackendKind(ABC):
    """A runtime edgert can build for and run on (ONNX Runtime, TensorRT)."""

    name: str

    @abstractmethod
    def version(self) -> str:
        """The runtime's version, as recorded in artifact keys."""

    @abstractmethod
    def device(self) -> str:
        """What the artifact is tied to on this machine ("cpu-x86_64", "sm_87", "sm_87-dla0")."""

    def build_options(
        self, precision: Precision, config: ModelConfig | None = None
    ) -> dict[str, Any]:
        """Options that change the artifact's content (part of its key)."""
        return {}

    def capability(self) -> Capability | None:
        """What this runtime's ONNX importer takes (ops, domains, strings, opsets); None: no
        check before building. Loads the onnx package: call it from builds only."""
        return None

    @abstractmethod
    def build(self, request: BuildRequest) -> BuildResult:
        """Write an artifact for ``request.source`` into ``request.out_dir``."""

    @abstractmethod
    def load(self, artifact: Path, io: ModelIO, *, threads: int = 0) -> Backend:
        """A runner for an artifact file (not yet activated). ``threads``: CPU threads one
        inference may use (0: the runtime's default); GPU backends ignore it."""


def require_quantized(source: OnnxSource, how: str) -> None:
    """BuildError unless ``source`` is quantized (Q/DQ nodes): INT8 is built from those only;
    ``how`` says how to quantize for this backend."""
    if not set(source.ops_used()) & _QDQ_OPS:
        raise BuildError(
            "int8 needs a quantized ONNX (QuantizeLinear/DequantizeLinear nodes); this model has "
            f"none. Quantize it first ({how}) or build fp32/fp16"
        )


def validate_feeds(io: ModelIO, feeds: Mapping[str, np.ndarray]) -> None:
    """InputError unless ``feeds`` has exactly the model's inputs, each fitting its spec."""
    expected = [s.name for s in io.inputs]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown input(s) {', '.join(extra)}")
        raise InputError(f"{'; '.join(parts)}; the model takes: {', '.join(expected)}")
    for spec in io.inputs:
        array = feeds[spec.name]
        if not isinstance(array, np.ndarray):
            raise InputError(
                f"input '{spec.name}' must be a numpy array, got {type(array).__name__}"
            )
        spec.check(array, io.dims)
    check_shared_dims(io.inputs, feeds)


class Backend(ABC):
    """A runner for one artifact. Use as a context manager, or activate/deactivate by hand."""

    def __init__(self, name: str, io: ModelIO) -> None:
        self.name = name
        self.io = io
        self.is_active = False
        self.last_infer_seconds = 0.0
        self.infer_count = 0

    def activate(self) -> None:
        if self.is_active:
            raise BackendError(f"{self.name}: already active")
        self._activate_impl()
        self.is_active = True

    def infer(
        self, feeds: Mapping[str, np.ndarray], *, check: bool = True
    ) -> dict[str, np.ndarray]:
        """Run once; outputs by name. ``check=False`` skips validation the caller already did."""
        if not self.is_active:
            raise BackendError(f"{self.name}: infer() before activate()")
        if check:
            validate_feeds(self.io, feeds)
        start = time.perf_counter()
        outputs = self._infer_impl(feeds)
        self.last_infer_seconds = time.perf_counter() - start
        self.infer_count += 1
        return outputs

    def deactivate(self) -> None:
        if not self.is_active:
            return
        try:
            self._deactivate_impl()
        finally:
            self.is_active = False

    def __enter__(self) -> Backend:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()

    @abstractmethod
    def _activate_impl(self) -> None: ...

    @abstractmethod
    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _deactivate_impl(self) -> None: ...
