"""The edgert exception tree.

Every error edgert raises on purpose derives from :class:`EdgertError`; anything else that escapes
is a bug. Third-party errors (onnx, onnxruntime, TensorRT, CUDA, the MQTT library) are mapped at
the boundary with :func:`mapped`, which re-raises them ``from`` the original.

::

    EdgertError
    ├── ConfigError             model.toml or daemon config is invalid
    │   └── ConfigKeyError      a rule across keys refused one (raised inside config structs)
    ├── ModelError              the ONNX source cannot be used
    │   ├── ModelLoadError      missing, truncated or not ONNX
    │   ├── ModelCheckError     onnx.checker / shape inference / opset problems
    │   └── UnboundedDimError   a dynamic axis has no min/opt/max in model.toml
    ├── BackendError            a backend failed
    │   ├── BackendUnavailable  its runtime cannot be imported here (with the reason)
    │   ├── BuildError          building an artifact failed (carries the backend's log)
    │   └── InferenceError      running the artifact failed
    ├── InputError              inference inputs do not match the model's specs
    ├── PayloadError            (bytecodec.py) a payload cannot be decoded: bad_request/bad_input/…
    ├── ProtocolError           (protocol.py) a request is refused; carries an ErrorCode
    ├── ArtifactError           an artifact is missing, broken or for another machine
    │   └── IncompatibleArtifact
    ├── ParityError             the artifact's outputs diverge from the FP32 ONNX reference
    ├── RemoteError             (client.py) a daemon answered with an error reply; carries its code
    └── NotReady                no node lists the model as ready in time (Client.wait_ready)

Each error has a short ``code`` (used by the CLI's exit line and, later, by protocol replies).
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BackendError",
    "BackendUnavailable",
    "BuildError",
    "ConfigError",
    "ConfigKeyError",
    "EdgertError",
    "IncompatibleArtifact",
    "InferenceError",
    "InputError",
    "ModelCheckError",
    "ModelError",
    "ModelLoadError",
    "NotReady",
    "ParityError",
    "UnboundedDimError",
    "first_line",
    "mapped",
]


class EdgertError(Exception):
    """Root of every error edgert raises on purpose."""

    code = "internal"

    def __init__(self, message: str, *, log: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.log = log


class ConfigError(EdgertError):
    code = "config"


class ConfigKeyError(ConfigError, ValueError):
    """A config value refused by a rule a type cannot say (two keys that exclude each other, a
    bound set by another key). ``key`` is its path below the table that raised it: a key, or
    a tuple of keys and indexes. A ValueError too, so msgspec reports it with its location."""

    def __init__(self, key: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.key: tuple[str | int, ...] = (key,) if isinstance(key, str) else key


class ModelError(EdgertError):
    code = "model"


class ModelLoadError(ModelError):
    pass


class ModelCheckError(ModelError):
    pass


class UnboundedDimError(ModelError):
    pass


class BackendError(EdgertError):
    code = "backend"


class BackendUnavailable(BackendError):
    pass


class BuildError(BackendError):
    pass


class InferenceError(BackendError):
    pass


class InputError(EdgertError):
    code = "bad_input"


class ArtifactError(EdgertError):
    code = "artifact"


class IncompatibleArtifact(ArtifactError):
    pass


class ParityError(EdgertError):
    code = "parity"


class NotReady(EdgertError):
    """No node's catalogue listed ``model`` as ready within the wait; the message says what the
    catalogues said instead (loading, failed and why, offline, or which models nodes serve)."""

    code = "not_ready"

    def __init__(self, message: str, *, model: str) -> None:
        super().__init__(message)
        self.model = model


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's text (third-party messages run long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class mapped:  # lower case: used as a function, ``with mapped(...)``
    """Re-raise a third-party exception as ``error("<what>: <first line of it>")``.

    EdgertErrors pass through unchanged. (A class, not a generator context manager: it wraps
    every inference, and a generator-based one costs several times as much per use.)
    """

    __slots__ = ("catch", "error", "what")

    def __init__(
        self,
        error: type[EdgertError],
        what: str,
        catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ) -> None:
        self.error, self.what, self.catch = error, what, catch

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, EdgertError) or not isinstance(exc, self.catch):
            return
        raise self.error(f"{self.what}: {first_line(exc)}", log=str(exc)) from exc
