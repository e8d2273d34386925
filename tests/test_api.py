"""The public API: what ``edgert`` exports, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import edgert
import edgert.errors
from edgert.errors import EdgertError

EXPORTED = [
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


def test_the_exported_names_are_pinned() -> None:
    assert edgert.__all__ == EXPORTED  # sorted; a change here is a change to the public API


def test_every_exported_name_resolves() -> None:
    for name in edgert.__all__:
        assert getattr(edgert, name) is not None, name
    assert set(edgert.__all__) <= set(dir(edgert))


def test_every_error_class_is_exported() -> None:
    errors = {
        name
        for name, value in vars(edgert.errors).items()
        if isinstance(value, type)
        and issubclass(value, EdgertError)
        and value.__module__ == "edgert.errors"
    }
    assert errors <= set(edgert.__all__), errors - set(edgert.__all__)
    for name in errors:
        assert getattr(edgert, name) is getattr(edgert.errors, name)
    assert issubclass(edgert.RemoteError, EdgertError)
    assert issubclass(edgert.NotReady, EdgertError)


def _modules_after(code: str) -> set[str]:
    """The modules loaded once ``code`` ran in a fresh interpreter."""
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_importing_edgert_loads_neither_the_mqtt_library_nor_the_client() -> None:
    for code in ("import edgert", "import edgert.spec", "from edgert import Repository"):
        loaded = _modules_after(code)
        assert "gmqtt" not in loaded and "paho" not in loaded, code
        assert "edgert.client" not in loaded, code
        assert "onnx" not in loaded, code


def test_the_client_loads_on_first_use() -> None:
    loaded = _modules_after("import edgert\nassert edgert.Client.__name__ == 'Client'")
    assert {"edgert.client", "gmqtt"} <= loaded
