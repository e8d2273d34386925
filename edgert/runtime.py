"""Open a compiled model for inference: pick the artifact that runs on this machine, load it.

This is the one path from the repository to a runner; ``edgert run`` and the daemon both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgert.backends import Backend, BackendKind, choose, status
from edgert.config import ModelConfig, Precision
from edgert.digest import source_digest
from edgert.errors import ArtifactError, IncompatibleArtifact
from edgert.parity import constant_value
from edgert.repository import Artifact, ArtifactKey, Manifest, ModelDir, machine_key
from edgert.spec import DimRange, ModelIO

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


def rebuild_command(model: ModelDir, backend: str, precision: Precision) -> str:
    return f"edgert compile {model.path} --backend {backend} --precision {precision}"


class _Source:
    """What this machine would build from ``model`` now: the source's sha256 and the dim bounds,
    read from the files a manifest names and from model.toml, so serving never parses the ONNX
    (the onnx package alone would be a large part of a daemon's memory). Manifests written before
    edgert recorded their source files fall back to parsing it."""

    def __init__(self, model: ModelDir, config: ModelConfig) -> None:
        self.model, self.config = model, config
        self._digests: dict[tuple[str, ...], str] = {}
        self._parsed: tuple[str, Mapping[str, DimRange]] | None = None

    def key_for(self, kind: BackendKind, manifest: Manifest) -> ArtifactKey | str:
        """The machine's key to compare with ``manifest``'s, or why there is none."""
        config = self.config
        if not manifest.source_files:
            sha, dims = self._parse()
            return machine_key(kind, sha, dims, config.precision, config)
        files = tuple(manifest.source_files)
        if files not in self._digests:
            paths = [self.model.path / f for f in files]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                return f"source file(s) missing: {', '.join(missing)}"
            self._digests[files] = source_digest(paths[0], paths[1:])
        unbounded = [d for d in manifest.io.dims if d not in config.dims]
        if unbounded:
            return f"model.toml no longer bounds dim(s) {', '.join(unbounded)} (stale)"
        dims = {d: config.dims[d] for d in manifest.io.dims}
        return machine_key(kind, self._digests[files], dims, config.precision, config)

    def _parse(self) -> tuple[str, Mapping[str, DimRange]]:
        if self._parsed is None:
            from edgert.onnx import io_specs, load_source

            source = load_source(self.model.source_path)
            self._parsed = (source.sha256, io_specs(source, self.config).dims)
        return self._parsed


def open_model(model: ModelDir, backend: str = "auto", *, threads: int = 0) -> LoadedModel:
    """Load the best artifact of ``model`` that runs here; refuse others, saying why.
    ``threads``: CPU threads per inference (0: the runtime's default)."""
    config = model.config
    artifacts = model.artifacts()
    source = _Source(model, config)
    refused: list[str] = []
    for error in artifacts:
        if isinstance(error, ArtifactError):
            refused.append(error.message)
    built = [a for a in artifacts if not isinstance(a, ArtifactError)]
    # Artifacts that name their source files first: older ones need the ONNX parsed.
    built.sort(key=lambda a: not a.manifest.source_files)
    for kind in _candidates(backend):
        usable: list[Artifact] = []
        for found in built:
            if found.manifest.key.backend != kind.name:
                continue
            if usable and not found.manifest.source_files:
                break  # something runs already: no need to parse for older artifacts
            machine = source.key_for(kind, found.manifest)
            why = machine if isinstance(machine, str) else found.manifest.key.mismatch(machine)
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
            io = artifact.manifest.io
            runner = kind.load(artifact.file, io, threads=threads)
            runner.activate()
            constants = {
                spec.name: constant_value(spec, config.inputs[spec.name].value, io)
                for spec in io.inputs
                if spec.name in config.inputs and config.inputs[spec.name].kind == "constant"
            }
            return LoadedModel(model, config, artifact, runner, constants)
    rebuild = rebuild_command(model, backend, config.precision)
    if not refused:
        if not model.source_path.is_file():
            raise ArtifactError(
                f"{config.name}: {model.source_path} is missing and nothing is built"
            )
        raise ArtifactError(f"{config.name} has no artifact built yet; run: {rebuild}")
    raise IncompatibleArtifact(
        f"{config.name} has no artifact that runs here ({'; '.join(refused)}); run: {rebuild}"
    )
