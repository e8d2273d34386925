"""A served model's entry: its worker, how its requests are decoded, and what it was loaded
from (the model directory's fingerprint, which a reload compares)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from edgert.codec import InputsDecoder
from edgert.daemon.decoding import decode_request
from edgert.daemon.worker import ModelWorker
from edgert.pipeline import Preprocess, Transform
from edgert.protocol import Request
from edgert.repository import MANIFEST, ModelDir
from edgert.spec import TensorSpec
from edgert.transport import Message

__all__ = ["Served", "fingerprint"]


@dataclass
class Served:
    """A model being served: its directory, its worker, and how its requests are decoded."""

    model: ModelDir
    worker: ModelWorker
    inputs: InputsDecoder  # the inputs a device sends, and how they are decoded
    declared: str | None  # the payload format model.toml declares (raw, npy...), if any
    pre: Preprocess | None  # model.toml [preprocess]: image or audio payloads to the tensor
    fingerprint: tuple[object, ...]  # the model dir as loaded: see fingerprint
    measured_ms: float | None = None  # an interim's latency on a sample request, at load

    @property
    def backend(self) -> str:
        return self.worker.backend

    @property
    def specs(self) -> Sequence[TensorSpec]:
        return self.inputs.specs

    @property
    def version(self) -> str:
        return self.worker.loaded.config.version

    def decode(
        self, message: Message, name: str, key: str | None, max_elements: int
    ) -> tuple[Request, Transform | None]:
        """The request in ``message`` for this model; ProtocolError for anything wrong."""
        io = self.worker.loaded.runner.io
        return decode_request(
            message, io, name, self.inputs, key, max_elements, self.declared, self.pre
        )


def fingerprint(model: ModelDir) -> tuple[object, ...]:
    """What a reload compares: model.toml's and every artifact manifest's identity on disk (a
    compile renames a new artifact directory into place, so its manifest is a new file)."""
    manifests = sorted(model.build_dir.glob(f"[!.]*/{MANIFEST}"))
    found: list[object] = [model.path.name]
    for path in [model.path / "model.toml", *manifests]:
        with contextlib.suppress(OSError):
            stat = path.stat()
            found.append((str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(found)
