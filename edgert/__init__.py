"""edgert: compile ONNX models to TensorRT engines (or ONNX Runtime on CPU), serve them over MQTT.

The public API is re-exported here; submodules are private.
"""

__version__ = "0.1.0"

from edgert.compile import CompileOptions, CompileResult, compile_model
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
