"""Open a compiled model for inference: pick the artifact that runs on this machine, load it.

This is the one path from the repository to a runner; ``edgert run`` and the daemon both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgert.backends import Backend, BackendKind, choose, status
from edgert.compile import machine_key, rebuild_command
from edgert.config import ModelConfig
from edgert.errors import ArtifactError, IncompatibleArtifact
from edgert.onnx import ModelIO, io_specs, load_source
from edgert.parity import constant_value
from edgert.repository import Artifact, ModelDir

__all__ = ["LoadedModel", "open_model"]


@dataclass
class LoadedModel:
    """A model ready to run: its config, the artifact chosen, and an active runner."""

    model: ModelDir
    config: ModelConfig
    artifact: Artifact
    runner: Backend
    constants: Mapping[str, np.ndarray]

    @property
    def io(self) -> ModelIO:
        return self.runner.io

    def infer(
        self, feeds: Mapping[str, np.ndarray], *, check: bool = True
    ) -> dict[str, np.ndarray]:
        """Run with model.toml's constants filled in where the caller left them out.

        ``check=False`` skips validation the caller already did (the daemon's decoder checks
        every request against the same specs; constants were checked at load).
        """
        merged = {**self.constants, **feeds}
        return self.runner.infer(merged, check=check)

    def close(self) -> None:
        self.runner.deactivate()


def _candidates(backend: str) -> list[BackendKind]:
    if backend != "auto":
        return [choose(backend)]
    return [s.kind for s in status() if s.kind is not None]


def open_model(model: ModelDir, backend: str = "auto", *, threads: int = 0) -> LoadedModel:
    """Load the best artifact of ``model`` that runs here; refuse others, saying why.
    ``threads``: CPU threads per inference (0: the runtime's default)."""
    config = model.config
    source = load_source(model.source_path)
    io = io_specs(source, config)
    artifacts = model.artifacts()
    refused: list[str] = []
    for kind in _candidates(backend):
        machine = machine_key(kind, source, io, config.precision, config)
        usable: list[Artifact] = []
        for found in artifacts:
            if isinstance(found, ArtifactError):
                refused.append(found.message)
                continue
            if found.manifest.key.backend != kind.name:
                continue
            why = found.manifest.key.mismatch(machine)
            if why is not None:
                refused.append(f"{found.path.name}: {why}")
                continue
            usable.append(found)
        # model.toml's precision first, then the newest build.
        usable.sort(key=lambda a: a.manifest.key.precision != config.precision)
        for artifact in usable:
            try:
                artifact.verify_files()
            except ArtifactError as exc:
                refused.append(exc.message)
                continue
            runner = kind.load(artifact.file, artifact.manifest.io, threads=threads)
            runner.activate()
            constants = {
                spec.name: constant_value(spec, config.inputs[spec.name].value, io)
                for spec in io.inputs
                if spec.name in config.inputs and config.inputs[spec.name].kind == "constant"
            }
            return LoadedModel(model, config, artifact, runner, constants)
    rebuild = rebuild_command(model, backend, config.precision)
    if not refused:
        raise ArtifactError(f"{config.name} has no artifact built yet; run: {rebuild}")
    raise IncompatibleArtifact(
        f"{config.name} has no artifact that runs here ({'; '.join(refused)}); run: {rebuild}"
    )
