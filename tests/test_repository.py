"""edgert.repository: artifact keys, manifests, atomic staging, file checks and model lookup."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgert.errors import ArtifactError, ConfigError, IncompatibleArtifact
from edgert.onnx import ModelIO
from edgert.repository import (
    MANIFEST,
    Artifact,
    ArtifactKey,
    Manifest,
    ModelDir,
    Repository,
    describe_files,
)
from edgert.spec import DimRange, DType, TensorSpec

KEY = ArtifactKey(
    backend="onnxruntime",
    backend_version="1.20.0",
    device="cpu-x86_64",
    precision="fp32",
    profiles={"batch": [1, 2, 4], "seq": [1, 8, 16]},
    source_sha256="ab" * 32,
    options={"optimization": "extended", "format": "ort"},
)
IO = ModelIO(
    (TensorSpec("x", DType.FLOAT32, ("batch", 3)),),
    (TensorSpec("y", DType.FLOAT32, ("batch", 2)),),
    {"batch": DimRange(1, 2, 4)},
)


def test_digest_is_stable_and_canonical() -> None:
    # Pinned: a changed digest orphans every artifact already built.
    assert KEY.digest == "b8730e2f0820"
    reordered = dataclasses.replace(
        KEY,
        profiles=dict(reversed(list(KEY.profiles.items()))),
        options=dict(reversed(list(KEY.options.items()))),
    )
    assert reordered.digest == KEY.digest
    assert KEY.dirname == f"onnxruntime-fp32-{KEY.digest}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backend", "tensorrt"),
        ("backend_version", "1.20.1"),
        ("device", "cpu-aarch64"),
        ("precision", "fp16"),
        ("profiles", {"batch": [1, 2, 8], "seq": [1, 8, 16]}),
        ("source_sha256", "cd" * 32),
        ("options", {"optimization": "all", "format": "ort"}),
        ("schema", 2),
    ],
)
def test_digest_changes_with_every_field(field: str, value: Any) -> None:
    assert dataclasses.replace(KEY, **{field: value}).digest != KEY.digest


def test_key_round_trip() -> None:
    assert ArtifactKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY


def test_key_from_invalid_dict() -> None:
    with pytest.raises(ArtifactError, match="invalid artifact key"):
        ArtifactKey.from_dict({"backend": "onnxruntime"})


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("schema", 0, "key schema 1, this edgert writes 0"),
        ("backend_version", "1.21.0", "built for backend version 1.20.0, this machine has 1.21.0"),
        ("device", "cpu-aarch64", "built for device cpu-x86_64, this machine has cpu-aarch64"),
        ("source_sha256", "cd" * 32, r"source model.onnx changed since it was built \(stale\)"),
        ("profiles", {"batch": [1, 2, 8]}, r"dim bounds .*model.toml now says .*\(stale\)"),
    ],
)
def test_mismatch_reasons(field: str, value: Any, reason: str) -> None:
    machine = dataclasses.replace(KEY, **{field: value})
    assert KEY.mismatch(KEY) is None
    why = KEY.mismatch(machine)
    assert why is not None and re.search(reason, why), why


TRT_KEY = dataclasses.replace(
    KEY,
    backend="tensorrt",
    backend_version="10.3.0",
    device="sm_86",
    options={"platform": "linux-x86_64"},
)


@pytest.mark.parametrize(
    ("built", "here", "version_compatible", "runs"),
    [
        ("10.3.0", "10.3.0", False, True),
        ("10.3.0", "10.3.1", False, False),
        ("10.3.0", "10.7.0", True, True),
        ("10.7.0", "10.3.0", True, False),  # never on an older runtime
        ("8.6.1", "10.3.0", True, True),  # 8 → 10 is one of the two cross-major paths
        ("10.3.0", "11.4.0.106", True, True),  # and 10 → 11 the other
        ("8.6.1", "11.4.0.106", True, False),
        ("8.6.1", "9.2.0", True, False),
    ],
)
def test_version_compatible_engines_run_on_later_tensorrt(
    built: str, here: str, version_compatible: bool, runs: bool
) -> None:
    options = {"platform": "linux-x86_64", "version_compatible": version_compatible}
    artifact = dataclasses.replace(TRT_KEY, backend_version=built, options=options)
    machine = dataclasses.replace(TRT_KEY, backend_version=here)
    why = artifact.mismatch(machine)
    assert (why is None) == runs, why
    if not runs:
        assert f"backend version {built}, this machine has {here}" in (why or "")


@pytest.mark.parametrize(
    ("built", "here", "hardware_compatible", "runs"),
    [
        ("sm_86", "sm_86", False, True),
        ("sm_86", "sm_89", False, False),
        ("sm_86", "sm_89", True, True),
        ("sm_80", "sm_90", True, True),
        ("sm_75", "sm_86", True, False),  # Ampere and later only
        ("sm_87-igpu", "sm_87-igpu", True, True),
        ("sm_86", "sm_87-igpu", True, False),  # never on Jetson
        ("sm_87-igpu", "sm_86", True, False),
    ],
)
def test_hardware_compatible_engines_run_on_other_desktop_gpus(
    built: str, here: str, hardware_compatible: bool, runs: bool
) -> None:
    options = {"platform": "linux-x86_64", "hardware_compatible": hardware_compatible}
    artifact = dataclasses.replace(TRT_KEY, device=built, options=options)
    machine = dataclasses.replace(TRT_KEY, device=here)
    assert (artifact.mismatch(machine) is None) == runs


def test_engines_never_cross_platforms() -> None:
    machine = dataclasses.replace(TRT_KEY, options={"platform": "linux-aarch64"})
    assert (
        TRT_KEY.mismatch(machine)
        == "built for platform linux-x86_64, this machine is linux-aarch64"
    )


def _manifest(files: dict[str, dict[str, Any]] | None = None) -> Manifest:
    return Manifest(
        model="m",
        version="2",
        key=KEY,
        artifact="model.ort",
        files=files or {},
        io=IO,
        built_at="2024-01-01T00:00:00+00:00",
        build_seconds=1.5,
        parity={"passed": True},
        notes=("a note",),
        edgert_version="0.1.0",
    )


def test_manifest_round_trip_through_json() -> None:
    manifest = _manifest({"model.ort": {"size": 3, "sha256": "00"}})
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def _write_artifact(model: ModelDir, content: bytes = b"engine") -> Artifact:
    with model.staging(KEY) as stage:
        (stage / "model.ort").write_bytes(content)
        model.write_manifest(stage, _manifest(describe_files(stage, ["model.ort"])))
    return Artifact.read(model.build_dir / KEY.dirname)


def _build_entries(model: ModelDir) -> list[str]:
    return sorted(p.name for p in model.build_dir.iterdir())


def test_staging_renames_into_place(tmp_path: Path) -> None:
    model = ModelDir(tmp_path)
    artifact = _write_artifact(model)
    assert _build_entries(model) == [KEY.dirname]
    assert artifact.file.read_bytes() == b"engine" and artifact.size == 6
    artifact.verify_files()
    assert model.find(KEY) == artifact


def test_failed_staging_leaves_nothing(tmp_path: Path) -> None:
    model = ModelDir(tmp_path)
    with pytest.raises(RuntimeError), model.staging(KEY) as stage:
        (stage / "model.ort").write_bytes(b"half")
        raise RuntimeError("build failed")
    assert _build_entries(model) == []


def test_failed_rebuild_keeps_existing_artifact(tmp_path: Path) -> None:
    model = ModelDir(tmp_path)
    _write_artifact(model, b"good")
    with pytest.raises(RuntimeError), model.staging(KEY) as stage:
        (stage / "model.ort").write_bytes(b"bad")
        raise RuntimeError("build failed")
    assert _build_entries(model) == [KEY.dirname]
    assert (model.build_dir / KEY.dirname / "model.ort").read_bytes() == b"good"


def test_successful_rebuild_replaces_existing_artifact(tmp_path: Path) -> None:
    model = ModelDir(tmp_path)
    _write_artifact(model, b"old")
    assert _write_artifact(model, b"new").file.read_bytes() == b"new"
    assert _build_entries(model) == [KEY.dirname]


def test_verify_files_detects_modified_and_missing(tmp_path: Path) -> None:
    artifact = _write_artifact(ModelDir(tmp_path))
    artifact.file.write_bytes(b"engin3")
    with pytest.raises(ArtifactError, match=r"sha256 differs from manifest\.json; rebuild it"):
        artifact.verify_files()
    assert ModelDir(tmp_path).find(KEY) is None
    artifact.file.unlink()
    with pytest.raises(ArtifactError, match=r"model\.ort: missing \(listed in manifest.json\)"):
        artifact.verify_files()


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (None, "no manifest.json"),
        ("{truncated", "manifest.json: unreadable"),
        ("[1, 2]", "manifest.json: not a JSON object"),
        ('{"model": "m"}', "manifest.json: invalid manifest"),
    ],
)
def test_read_broken_artifact(tmp_path: Path, manifest: str | None, match: str) -> None:
    if manifest is not None:
        (tmp_path / MANIFEST).write_text(manifest)
    with pytest.raises(ArtifactError, match=match):
        Artifact.read(tmp_path)


def test_artifacts_lists_broken_ones_as_errors(tmp_path: Path) -> None:
    model = ModelDir(tmp_path)
    good = _write_artifact(model)
    (model.build_dir / "broken").mkdir()
    (model.build_dir / ".staging-leftover").mkdir()
    found = model.artifacts()
    assert len(found) == 2 and good in found
    assert any(isinstance(f, ArtifactError) and "broken" in f.message for f in found)


def test_check_compatible_names_both_keys_and_rebuild(tmp_path: Path) -> None:
    artifact = _write_artifact(ModelDir(tmp_path))
    artifact.check_compatible(KEY, "edgert compile m")
    other = dataclasses.replace(KEY, device="cpu-aarch64")
    with pytest.raises(IncompatibleArtifact, match=r"device .*on cpu-aarch64.*edgert compile m$"):
        artifact.check_compatible(other, "edgert compile m")


def _model(root: Path, dirname: str, toml: str | None = None) -> Path:
    path = root / dirname
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"")  # lookup never opens it
    if toml is not None:
        (path / "model.toml").write_text(toml)
    return path


def test_repository_model_by_dir_name_config_name_and_path(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "engines")
    kitchen = _model(repo.root, "kitchen")
    hall = _model(repo.root, "hall", 'name = "hallway"\n')
    (repo.root / "notes").mkdir()
    assert [m.path.name for m in repo.models()] == ["hall", "kitchen"]
    assert repo.model("kitchen").path == kitchen
    assert repo.model("hallway").path == hall
    assert repo.model(str(hall)).path == hall


def test_repository_unknown_model_lists_models(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    _model(tmp_path, "kitchen")
    _model(tmp_path, "hall")
    with pytest.raises(ConfigError, match=r"no model 'garage' in .* \(models: hall, kitchen\)"):
        repo.model("garage")


def test_repository_lookup_by_dir_name_ignores_other_models_config(tmp_path: Path) -> None:
    repo = Repository(tmp_path)
    _model(tmp_path, "attic", "name = \n")  # invalid TOML; sorts first
    kitchen = _model(tmp_path, "kitchen")
    assert repo.model("kitchen").path == kitchen


def test_repository_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Repository(tmp_path / "nope").models()
    with pytest.raises(ConfigError, match=r"no model 'x' .*\(models: none\)"):
        Repository(tmp_path / "nope").model("x")
