"""Backends: the Backend interface, ONNX Runtime (CPU), TensorRT, and the registry."""

from edgert.backends.base import (
    Backend,
    BackendKind,
    BuildRequest,
    BuildResult,
    ProgressFn,
    validate_feeds,
)
from edgert.backends.registry import BackendStatus, choose, get, status

__all__ = [
    "Backend",
    "BackendKind",
    "BackendStatus",
    "BuildRequest",
    "BuildResult",
    "ProgressFn",
    "choose",
    "get",
    "status",
    "validate_feeds",
]
