"""edgert: compile ONNX models to TensorRT engines (or ONNX Runtime on CPU), serve them over MQTT.

The public API is re-exported here; submodules are private.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from edgert.config import ModelConfig
from edgert.errors import (
    ArtifactError,
    BackendError,
    BackendUnavailable,
    BuildError,
    ConfigError,
    EdgertError,
    IncompatibleArtifact,
    InferenceError,
    InputError,
    ModelCheckError,
    ModelError,
    ModelLoadError,
    ParityError,
    UnboundedDimError,
)
from edgert.repository import Artifact, ArtifactKey, ModelDir, Repository
from edgert.runtime import LoadedModel, open_model
from edgert.spec import DimRange, DType, TensorSpec

if TYPE_CHECKING:
    from edgert.compile import CompileOptions, CompileResult, compile_model

_LAZY = {"CompileOptions", "CompileResult", "compile_model"}


def __getattr__(name: str) -> object:
    # Compiling needs the onnx package (~9 MB resident); serving does not, so it loads on use.
    if name in _LAZY:
        from edgert import compile as _compile

        return getattr(_compile, name)
    raise AttributeError(f"module 'edgert' has no attribute {name!r}")


__all__ = [
    "Artifact",
    "ArtifactError",
    "ArtifactKey",
    "BackendError",
    "BackendUnavailable",
    "BuildError",
    "CompileOptions",
    "CompileResult",
    "ConfigError",
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
    "ParityError",
    "Repository",
    "TensorSpec",
    "UnboundedDimError",
    "__version__",
    "compile_model",
    "open_model",
]
