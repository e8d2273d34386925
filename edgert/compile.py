"""Compile: a model directory → a verified artifact under ``build/<key>/``.

1. load and check the ONNX, derive IO specs (dynamic dims bounded by model.toml);
2. build with the chosen backend into a private staging dir;
3. verify against the FP32 ONNX reference on sample inputs (parity);
4. write the manifest and rename the staging dir into place (atomic; nothing kept on failure).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgert import __version__
from edgert.backends import (
    BackendKind,
    BuildRequest,
    BuildResult,
    ProgressFn,
    choose,
    status,
    validate_feeds,
)
from edgert.backends.onnxrt import KIND as ONNXRUNTIME
from edgert.backends.onnxrt import reference_session
from edgert.buildprogress import ProgressFile
from edgert.config import ModelConfig, Precision
from edgert.errors import ConfigError, InputError, ModelCheckError
from edgert.onnx import ModelIO, OnnxSource, io_specs, load_source, with_io_dims
from edgert.onnx.capability import fit_opset, unsupported
from edgert.parity import Feeds, ParityReport, compare, sample_inputs
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
    key = machine_key(choice.kind, source, io, precision, config)
    existing = model.find(key)
    if existing is not None and not options.force and existing.manifest.parity.get("passed"):
        progress("up to date", 1.0)
        return CompileResult(existing, True, time.perf_counter() - start)

    # `edgert list` shows the build while it runs (from another shell, or the daemon's child).
    with ProgressFile(model.build_dir, choice.kind.name) as shown:
        _build(_Plan(model, config, precision, io, source, choice, key), shown.relay(progress))
    artifact = Artifact.read(model.build_dir / key.dirname)
    progress("done", 1.0)
    return CompileResult(artifact, False, time.perf_counter() - start)


@dataclass(frozen=True)
class _Plan:
    """One build that the cache lookup found missing: what to build, with what, under which key."""

    model: ModelDir
    config: ModelConfig
    precision: Precision
    io: ModelIO
    source: OnnxSource  # with the IO's dims: the parity reference runs it
    choice: _Choice
    key: ArtifactKey


def _checked_samples(plan: _Plan) -> tuple[list[Feeds], str]:
    """The parity samples and where they came from; ConfigError if one does not fit the model."""
    samples, samples_from = sample_inputs(plan.model.path, plan.io, plan.config)
    for feeds in samples:
        try:
            validate_feeds(plan.io, feeds)
        except InputError as exc:
            raise ConfigError(f"{plan.model.path}: a sample does not fit the model: {exc}") from exc
    return samples, samples_from


def _reference_runner(
    source: OnnxSource, io: ModelIO
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """The FP32 ONNX Runtime reference, as a function from feeds to named outputs."""
    reference = reference_session(_reference_source(source))
    output_names = [o.name for o in io.outputs]

    def run_reference(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(output_names, reference.run(output_names, dict(feeds)), strict=True))

    return run_reference


def _build(plan: _Plan, progress: ProgressFn) -> None:
    """Build into a staging dir, verify parity, write the manifest and move it into place."""
    samples, samples_from = _checked_samples(plan)
    run_reference = _reference_runner(plan.source, plan.io)
    kind, model, io = plan.choice.kind, plan.model, plan.io

    def stage_progress(stage: str, fraction: float) -> None:
        progress(stage, 0.05 + 0.75 * fraction)

    with model.staging(plan.key) as stage:
        build_start = time.perf_counter()
        progress(f"building with {kind.name} {kind.version()} ({plan.precision})", 0.05)
        request = BuildRequest(
            plan.choice.source,
            io,
            plan.config,
            plan.precision,
            stage,
            stage_progress,
            model.path.parent / ".cache",
        )
        built = kind.build(request)
        build_seconds = time.perf_counter() - build_start

        progress(f"verifying against the FP32 reference ({samples_from})", 0.8)
        with kind.load(stage / built.artifact, io) as runner:
            report: ParityReport = compare(
                runner.infer,
                run_reference,
                samples,
                plan.config.tolerance_for(plan.precision),
                samples_from,
            )
        report.raise_if_failed()

        progress("writing", 0.95)
        model.write_manifest(stage, _manifest(plan, stage, built, build_seconds, report))


def _manifest(
    plan: _Plan, stage: Path, built: BuildResult, build_seconds: float, report: ParityReport
) -> Manifest:
    """The manifest of the artifact built into ``stage``, listing every file there."""
    files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    return Manifest(
        model=plan.config.name,
        version=plan.config.version,
        key=plan.key,
        artifact=built.artifact,
        files=describe_files(stage, files),
        io=plan.io,
        built_at=utc_now(),
        build_seconds=round(build_seconds, 3),
        parity=report.to_dict(),
        notes=(*plan.choice.notes, *built.notes),
        fallback=plan.choice.fallback,
        edgert_version=__version__,
        source_files=_source_files(plan.model, plan.source),
    )
