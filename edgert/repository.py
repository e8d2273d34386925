"""The model repository (``engines/``): model dirs, artifact lookup, atomic writes.

::

    engines/<model>/model.toml             optional; see edgert.config
    engines/<model>/model.onnx             the source
    engines/<model>/build/<dir>/           one artifact: the backend's file(s) + manifest.json

Artifact keys and manifests live in :mod:`edgert.artifacts`; their names are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgert.artifacts import (
    KEY_SCHEMA,
    MANIFEST,
    Artifact,
    ArtifactKey,
    Manifest,
    describe_files,
    file_sha256,
    machine_key,
    utc_now,
)
from edgert.config import ModelConfig
from edgert.errors import ArtifactError, ConfigError

__all__ = [
    "KEY_SCHEMA",
    "MANIFEST",
    "Artifact",
    "ArtifactKey",
    "Manifest",
    "ModelDir",
    "Repository",
    "describe_files",
    "file_sha256",
    "machine_key",
    "utc_now",
]


class ModelDir:
    """One model's directory in the repository."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._config: ModelConfig | None = None

    @property
    def config(self) -> ModelConfig:
        if self._config is None:
            self._config = ModelConfig.load(self.path)
        return self._config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def source_path(self) -> Path:
        return self.path / self.config.source

    @property
    def build_dir(self) -> Path:
        return self.path / "build"

    def artifacts(self) -> list[Artifact | ArtifactError]:
        """Every artifact under build/, newest first; unreadable ones as their error."""
        found: list[Artifact | ArtifactError] = []
        if not self.build_dir.is_dir():
            return found
        for child in sorted(self.build_dir.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            try:
                found.append(Artifact.read(child))
            except ArtifactError as exc:
                found.append(exc)
        found.sort(
            key=lambda a: a.manifest.built_at if isinstance(a, Artifact) else "", reverse=True
        )
        return found

    def find(self, key: ArtifactKey) -> Artifact | None:
        path = self.build_dir / key.dirname
        if not (path / MANIFEST).is_file():
            return None
        try:
            artifact = Artifact.read(path)
            artifact.verify_files()
        except ArtifactError:
            return None
        return artifact if artifact.manifest.key == key else None

    @contextmanager
    def staging(self, key: ArtifactKey) -> Iterator[Path]:
        """A private dir to build into; on success it is renamed into build/<key dir>.

        Readers never see a half-written artifact: the rename is atomic on one filesystem, and
        a failure (or interrupt) removes the staging dir, keeping whatever was there before.
        """
        self.build_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".staging-{key.dirname}-", dir=self.build_dir))
        try:
            yield stage
            final = self.build_dir / key.dirname
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".old-{key.dirname}-", dir=self.build_dir))
                os.replace(final, old / "artifact")
                os.replace(stage, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(stage, final)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def write_manifest(self, stage: Path, manifest: Manifest) -> None:
        """Write manifest.json last, so a staging dir with a manifest is complete."""
        tmp = stage / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, stage / MANIFEST)


class Repository:
    """A directory of model directories (default ``./engines``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def models(self) -> list[ModelDir]:
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} does not exist")
        return [
            ModelDir(p)
            for p in sorted(self.root.iterdir())
            if p.is_dir()
            and not p.name.startswith(".")
            and ((p / "model.toml").is_file() or (p / "model.onnx").is_file())
        ]

    def model(self, name_or_path: str) -> ModelDir:
        """A model by directory path, or by name within this repository."""
        path = Path(name_or_path)
        if path.is_dir() and ((path / "model.toml").is_file() or (path / "model.onnx").is_file()):
            return ModelDir(path)
        candidates = self.models() if self.root.is_dir() else []
        # Directory names first: they need no model.toml, so one broken model can't hide the rest.
        for model in candidates:
            if model.path.name == name_or_path:
                return model
        for model in candidates:
            if model.name == name_or_path:
                return model
        known = ", ".join(m.path.name for m in candidates) or "none"
        raise ConfigError(f"no model '{name_or_path}' in {self.root} (models: {known})")
