"""Artifact keys, manifests and artifact directories: what was built, for which machine.

An artifact is one directory under a model's ``build/``: the backend's file(s) and
``manifest.json``, whose :class:`ArtifactKey` names everything that makes it unusable elsewhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgert.backends.base import BackendKind
from edgert.config import ModelConfig, Precision
from edgert.errors import ArtifactError, ConfigError, IncompatibleArtifact
from edgert.spec import DimRange, ModelIO

__all__ = [
    "KEY_SCHEMA",
    "MANIFEST",
    "Artifact",
    "ArtifactKey",
    "Manifest",
    "describe_files",
    "file_sha256",
    "machine_key",
    "utc_now",
]

KEY_SCHEMA = 1
MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactKey:
    """Everything that makes an artifact unusable elsewhere, as a versioned record."""

    backend: str
    backend_version: str
    device: str
    precision: Precision
    profiles: Mapping[str, list[int]]
    source_sha256: str
    options: Mapping[str, Any] = field(default_factory=dict)
    schema: int = KEY_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profiles"] = {k: list(v) for k, v in sorted(self.profiles.items())}
        data["options"] = dict(sorted(self.options.items()))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactKey:
        try:
            return cls(
                backend=str(data["backend"]),
                backend_version=str(data["backend_version"]),
                device=str(data["device"]),
                precision=data["precision"],
                profiles={str(k): [int(x) for x in v] for k, v in data["profiles"].items()},
                source_sha256=str(data["source_sha256"]),
                options=dict(data.get("options", {})),
                schema=int(data.get("schema", KEY_SCHEMA)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"invalid artifact key {dict(data)!r}: {exc}") from exc

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return f"{self.backend}-{self.precision}-{self.digest}"

    def describe(self) -> str:
        return (
            f"{self.backend} {self.backend_version} on {self.device}, {self.precision}, "
            f"source {self.source_sha256[:12]}, key {self.digest}"
        )

    def mismatch(self, machine: ArtifactKey) -> str | None:
        """Why this artifact cannot run where ``machine`` describes, or None if it can."""
        if self.schema != machine.schema:
            return f"key schema {self.schema}, this edgert writes {machine.schema}"
        if self.backend != machine.backend:
            return f"built for backend {self.backend}, this machine has {machine.backend}"
        if not _runs_on_version(
            self.backend_version, machine.backend_version, self.options.get("version_compatible")
        ):
            return (
                f"built for backend version {self.backend_version}, this machine has "
                f"{machine.backend_version}"
            )
        if not _runs_on_device(
            self.device, machine.device, self.options.get("hardware_compatible")
        ):
            return f"built for device {self.device}, this machine has {machine.device}"
        mine, theirs = self.options.get("platform"), machine.options.get("platform")
        if mine != theirs:
            return f"built for platform {mine}, this machine is {theirs}"
        if self.source_sha256 != machine.source_sha256:
            return "the source model.onnx changed since it was built (stale)"
        mine, theirs = self.options.get("output_shapes"), machine.options.get("output_shapes")
        if mine != theirs:
            return (
                f"built for output shapes {mine or 'from the model'}, model.toml now says "
                f"{theirs or 'none'} (stale)"
            )
        if dict(self.profiles) != dict(machine.profiles):
            return (
                f"built for dim bounds {dict(self.profiles)}, model.toml now says "
                f"{dict(machine.profiles)} (stale)"
            )
        return None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def _runs_on_version(built: str, here: str, compatible: object) -> bool:
    """Plain artifacts need the exact version. TensorRT's version-compatible engines run on a
    later runtime of the same major, and across majors from 8 to 10 and from 10 to 11 only."""
    if built == here:
        return True
    if not compatible:
        return False
    b, h = _version(built), _version(here)
    return bool(b and h) and h >= b and (h[0] == b[0] or (b[0], h[0]) in {(8, 10), (10, 11)})


def _runs_on_device(built: str, here: str, compatible: object) -> bool:
    """Hardware-compatible (Ampere+) engines run on any desktop GPU of sm_80 or later; never on
    Jetson's integrated GPUs or DLA."""
    if built == here:
        return True
    if not compatible:
        return False

    def desktop_sm(device: str) -> int:
        major = device.removeprefix("sm_")
        return int(major) if device.startswith("sm_") and major.isdigit() else 0

    return desktop_sm(built) >= 80 and desktop_sm(here) >= 80


def machine_key(
    kind: BackendKind,
    source_sha256: str,
    dims: Mapping[str, DimRange],
    precision: Precision,
    config: ModelConfig | None = None,
) -> ArtifactKey:
    """The key an artifact of that source built here, now, with these settings would have."""
    options = dict(kind.build_options(precision, config))
    shapes = _output_shapes(config)
    if shapes:  # absent when none: the keys of models without them stay as they were
        options["output_shapes"] = shapes
    return ArtifactKey(
        backend=kind.name,
        backend_version=kind.version(),
        device=kind.device(),
        precision=precision,
        profiles={name: rng.as_list() for name, rng in dims.items()},
        source_sha256=source_sha256,
        options=options,
    )


def _output_shapes(config: ModelConfig | None) -> dict[str, Any]:
    """model.toml's ``[outputs.X] shape``s: the manifest's IO (so the batch plan) was derived
    with them, so an artifact built under others is stale."""
    if config is None:
        return {}
    return {
        name: list(table.shape)
        for name, table in sorted(config.outputs.items())
        if table.shape is not None
    }


@dataclass(frozen=True)
class Manifest:
    """What was built, how, and how closely it matches the FP32 reference."""

    model: str
    version: str
    key: ArtifactKey
    artifact: str
    files: Mapping[str, Mapping[str, Any]]
    io: ModelIO
    built_at: str
    build_seconds: float
    parity: Mapping[str, Any]
    notes: tuple[str, ...] = ()
    edgert_version: str = ""
    # The source's files (model.onnx, then its external data), relative to the model dir: serving
    # re-hashes them to tell a stale artifact without parsing the ONNX.
    source_files: tuple[str, ...] = ()
    # Why `--backend auto` built for this backend and not a preferred one that is available here
    # (TensorRT cannot parse ONNX-ML ops, strings...); "" when it took the first available.
    fallback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "key": self.key.to_dict(),
            "artifact": self.artifact,
            "files": {k: dict(v) for k, v in self.files.items()},
            "io": self.io.to_dict(),
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
            "parity": dict(self.parity),
            "notes": list(self.notes),
            "edgert_version": self.edgert_version,
            "source_files": list(self.source_files),
            "fallback": self.fallback,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        try:
            return cls(
                model=str(data["model"]),
                version=str(data["version"]),
                key=ArtifactKey.from_dict(data["key"]),
                artifact=str(data["artifact"]),
                files=dict(data["files"]),
                io=ModelIO.from_dict(data["io"]),
                built_at=str(data["built_at"]),
                build_seconds=float(data["build_seconds"]),
                parity=dict(data["parity"]),
                notes=tuple(data.get("notes", ())),
                edgert_version=str(data.get("edgert_version", "")),
                source_files=tuple(str(f) for f in data.get("source_files", ())),
                fallback=str(data.get("fallback") or ""),
            )
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise ArtifactError(f"invalid manifest: {exc}") from exc


@dataclass(frozen=True)
class Artifact:
    """One built artifact directory and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def file(self) -> Path:
        return self.path / self.manifest.artifact

    @property
    def size(self) -> int:
        return sum(int(f["size"]) for f in self.manifest.files.values())

    @classmethod
    def read(cls, path: Path) -> Artifact:
        try:
            data = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path}: no {MANIFEST}") from exc
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path / MANIFEST}: unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise ArtifactError(f"{path / MANIFEST}: not a JSON object")
        try:
            return cls(path, Manifest.from_dict(data))
        except ArtifactError as exc:
            raise ArtifactError(f"{path / MANIFEST}: {exc.message}") from exc

    def verify_files(self) -> None:
        """ArtifactError unless every file the manifest lists is present with its sha256."""
        for name, meta in self.manifest.files.items():
            path = self.path / name
            if not path.is_file():
                raise ArtifactError(f"{path}: missing (listed in {MANIFEST})")
            if file_sha256(path) != meta.get("sha256"):
                raise ArtifactError(f"{path}: sha256 differs from {MANIFEST}; rebuild it")

    def check_compatible(self, machine: ArtifactKey, rebuild: str) -> None:
        """IncompatibleArtifact (naming both keys and the rebuild command) unless it runs here."""
        why = self.manifest.key.mismatch(machine)
        if why is not None:
            raise IncompatibleArtifact(
                f"{self.path} cannot run here: {why}. Artifact: {self.manifest.key.describe()}; "
                f"this machine: {machine.describe()}. Rebuild: {rebuild}"
            )


def describe_files(stage: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {
        n: {"size": (stage / n).stat().st_size, "sha256": file_sha256(stage / n)} for n in names
    }


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
