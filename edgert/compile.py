"""Compile: a model directory → a verified artifact under ``build/<key>/``.

1. load and check the ONNX, derive IO specs (dynamic dims bounded by model.toml);
2. build with the chosen backend into a private staging dir;
3. verify against the FP32 ONNX reference on sample inputs (parity);
4. write the manifest and rename the staging dir into place (atomic; nothing kept on failure).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgert import __version__
from edgert.backends import BackendKind, BuildRequest, ProgressFn, choose, status, validate_feeds
from edgert.backends.onnxrt import KIND as ONNXRUNTIME
from edgert.backends.onnxrt import reference_session
from edgert.config import ModelConfig, Precision
from edgert.errors import ConfigError, InputError, ModelCheckError
from edgert.onnx import ModelIO, OnnxSource, io_specs, load_source, with_io_dims
from edgert.onnx.capability import fit_opset, unsupported
from edgert.parity import ParityReport, compare, sample_inputs
from edgert.repository import (
    Artifact,
    ArtifactKey,
    Manifest,
    ModelDir,
    describe_files,
    utc_now,
)
from edgert.repository import (
    machine_key as repository_machine_key,
)

__all__ = ["CompileOptions", "CompileResult", "compile_model", "machine_key"]


@dataclass(frozen=True)
class CompileOptions:
    backend: str = "auto"
    precision: Precision | None = None  # None: model.toml's precision
    force: bool = False


@dataclass(frozen=True)
class CompileResult:
    artifact: Artifact
    cached: bool
    seconds: float

    @property
    def parity(self) -> Mapping[str, Any]:
        return self.artifact.manifest.parity


def machine_key(
    kind: BackendKind,
    source: OnnxSource,
    io: ModelIO,
    precision: Precision,
    config: ModelConfig | None = None,
) -> ArtifactKey:
    """The key an artifact of ``source`` built here, now, with these settings would have."""
    return repository_machine_key(kind, source.sha256, io.dims, precision, config)


def _source_files(model: ModelDir, source: OnnxSource) -> tuple[str, ...]:
    files = [source.path, *source.external]
    try:
        return tuple(str(f.resolve().relative_to(model.path.resolve())) for f in files)
    except ValueError:  # a source outside the model dir: serving parses it instead
        return ()


def _no_progress(stage: str, fraction: float) -> None:
    return None


@dataclass(frozen=True)
class _Choice:
    """The backend a build goes to, the graph it builds from, and why."""

    kind: BackendKind
    source: OnnxSource  # opset-converted where the backend needed it
    notes: tuple[str, ...]
    fallback: str  # why auto did not take a preferred backend that is available; "" if none


def _fit(kind: BackendKind, checked: OnnxSource, prepared: OnnxSource) -> tuple[OnnxSource, str]:
    """``prepared`` fitted to what ``kind`` takes (its opset converted if needed) and a note
    on that; ModelCheckError naming what it cannot take. ``checked`` is the shape-inferred
    source, whose value_info shows the types of values inside the graph."""
    capability = kind.capability()
    if capability is None:
        return prepared, ""
    missing = unsupported(checked.model, capability)
    if missing:
        raise ModelCheckError(f"{capability.name} cannot take {checked.path}: {missing.describe()}")
    model, note = fit_opset(prepared.model, capability)
    return replace(prepared, model=model), note


def _choose(asked: str, checked: OnnxSource, prepared: OnnxSource) -> _Choice:
    """The named backend, refusing what it cannot take; or for ``auto`` the first available
    one in preference order that takes the model, with notes on those passed over and why."""
    if asked != "auto":
        kind = choose(asked)
        try:
            fitted, note = _fit(kind, checked, prepared)
        except ModelCheckError as exc:
            hint = "; --backend onnxruntime (or auto, which falls back to it) builds it"
            raise ModelCheckError(
                exc.message + (hint if kind.name != "onnxruntime" else "")
            ) from exc
        return _Choice(kind, fitted, (note,) if note else (), "")
    passed: list[str] = []  # backends auto did not take, with why
    refused: list[str] = []
    for entry in status():
        if entry.kind is None:
            passed.append(f"{entry.name} unavailable: {entry.reason}")
            continue
        try:
            fitted, note = _fit(entry.kind, checked, prepared)
        except ModelCheckError as exc:
            passed.append(exc.message)
            refused.append(exc.message)
            continue
        chose = f"backend auto chose {entry.name}" + (f" ({'; '.join(passed)})" if passed else "")
        return _Choice(entry.kind, fitted, (chose, note) if note else (chose,), "; ".join(refused))
    choose("auto")  # BackendUnavailable when none is available at all
    raise ModelCheckError(f"no available backend takes {checked.path}: {'; '.join(refused)}")


def _reference_source(source: OnnxSource) -> OnnxSource:
    """The parity reference: the source as it is, or converted to an opset ONNX Runtime runs
    where it is older than that (ModelCheckError with the range if it cannot be)."""
    model, _ = fit_opset(source.model, ONNXRUNTIME.capability())
    return source if model is source.model else replace(source, model=model)


def compile_model(
    model: ModelDir, options: CompileOptions = CompileOptions(), progress: ProgressFn = _no_progress
) -> CompileResult:
    """Build (or find, if already built) a verified artifact for ``model`` on this machine."""
    start = time.perf_counter()
    config = model.config
    precision = options.precision or config.precision
    progress("loading and checking the ONNX", 0.0)
    checked = load_source(model.source_path)
    io = io_specs(checked, config)
    source = replace(checked, model=with_io_dims(checked.model, io))
    choice = _choose(options.backend, checked, source)
    kind = choice.kind
    key = machine_key(kind, source, io, precision, config)
    existing = model.find(key)
    if existing is not None and not options.force and existing.manifest.parity.get("passed"):
        progress("up to date", 1.0)
        return CompileResult(existing, True, time.perf_counter() - start)

    samples, samples_from = sample_inputs(model.path, io, config)
    for feeds in samples:
        try:
            validate_feeds(io, feeds)
        except InputError as exc:
            raise ConfigError(f"{model.path}: a sample does not fit the model: {exc}") from exc
    reference = reference_session(_reference_source(source))
    output_names = [o.name for o in io.outputs]

    def run_reference(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(output_names, reference.run(output_names, dict(feeds)), strict=True))

    def stage_progress(stage: str, fraction: float) -> None:
        progress(stage, 0.05 + 0.75 * fraction)

    with model.staging(key) as stage:
        build_start = time.perf_counter()
        progress(f"building with {kind.name} {kind.version()} ({precision})", 0.05)
        request = BuildRequest(
            choice.source,
            io,
            config,
            precision,
            stage,
            stage_progress,
            model.path.parent / ".cache",
        )
        built = kind.build(request)
        build_seconds = time.perf_counter() - build_start

        progress(f"verifying against the FP32 reference ({samples_from})", 0.8)
        with kind.load(stage / built.artifact, io) as runner:
            report: ParityReport = compare(
                runner.infer, run_reference, samples, config.tolerance_for(precision), samples_from
            )
        report.raise_if_failed()

        progress("writing", 0.95)
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        manifest = Manifest(
            model=config.name,
            version=config.version,
            key=key,
            artifact=built.artifact,
            files=describe_files(stage, files),
            io=io,
            built_at=utc_now(),
            build_seconds=round(build_seconds, 3),
            parity=report.to_dict(),
            notes=(*choice.notes, *built.notes),
            fallback=choice.fallback,
            edgert_version=__version__,
            source_files=_source_files(model, source),
        )
        model.write_manifest(stage, manifest)
    artifact = Artifact.read(model.build_dir / key.dirname)
    progress("done", 1.0)
    return CompileResult(artifact, False, time.perf_counter() - start)
