"""edgert: compile ONNX models to TensorRT engines (or ONNX Runtime on CPU), serve them over MQTT.

The public API is re-exported here; submodules are private.
"""

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING

from edgert.config import ModelConfig
from edgert.errors import (
    ArtifactError,
    BackendError,
    BackendUnavailable,
    BuildError,
    ConfigError,
    ConfigKeyError,
    EdgertError,
    IncompatibleArtifact,
    InferenceError,
    InputError,
    ModelCheckError,
    ModelError,
    ModelLoadError,
    NotReady,
    ParityError,
    UnboundedDimError,
)
from edgert.repository import Artifact, ArtifactKey, ModelDir, Repository
from edgert.runtime import LoadedModel, open_model
from edgert.spec import DimRange, DType, TensorSpec

if TYPE_CHECKING:
    from edgert.client import Client, RemoteError, Reply
    from edgert.compile import CompileOptions, CompileResult, compile_model

# Loaded on first use, each by its module: compiling needs the onnx package (a large import that
# stays resident), the client needs the MQTT library; serving, and the pure modules, need neither.
_LAZY = {
    "CompileOptions": "edgert.compile",
    "CompileResult": "edgert.compile",
    "compile_model": "edgert.compile",
    "Client": "edgert.client",
    "RemoteError": "edgert.client",
    "Reply": "edgert.client",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgert' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Artifact",
    "ArtifactError",
    "ArtifactKey",
    "BackendError",
    "BackendUnavailable",
    "BuildError",
    "Client",
    "CompileOptions",
    "CompileResult",
    "ConfigError",
    "ConfigKeyError",
    "DType",
    "DimRange",
    "EdgertError",
    "IncompatibleArtifact",
    "InferenceError",
    "InputError",
    "LoadedModel",
    "ModelCheckError",
    "ModelConfig",
    "ModelDir",
    "ModelError",
    "ModelLoadError",
    "NotReady",
    "ParityError",
    "RemoteError",
    "Reply",
    "Repository",
    "TensorSpec",
    "UnboundedDimError",
    "__version__",
    "compile_model",
    "open_model",
]
