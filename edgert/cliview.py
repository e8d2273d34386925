"""What the ``edgert`` commands print: the consoles, tables and one-line summaries.

The commands in :mod:`edgert.cli` gather the facts; this module words them. Nothing here reads
files or loads a model beyond what the objects it is handed already hold.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgert.backends import status as backend_status
from edgert.buildprogress import builds_in_progress
from edgert.config import ModelConfig
from edgert.errors import EdgertError
from edgert.repository import Artifact, ModelDir
from edgert.spec import ModelIO

if TYPE_CHECKING:  # the onnx package, compile and doctor load in the commands that need them
    from edgert.compile import CompileResult
    from edgert.doctor import Finding
    from edgert.onnx import OnnxSource

__all__ = [
    "err",
    "findings_table",
    "io_table",
    "out",
    "show_artifact",
    "show_compiled",
    "show_model_artifacts",
    "show_models",
    "show_outputs",
    "show_source",
    "size_text",
]

# Wide when piped, so tables and paths are not cut for logs and scripts.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def io_table(io: ModelIO, title: str) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for kind, specs in (("input", io.inputs), ("output", io.outputs)):
        for spec in specs:
            table.add_row(kind, escape(spec.name), spec.dtype.value, escape(spec.shape_text()))
    return table


def show_artifact(artifact: Artifact) -> None:
    m = artifact.manifest
    passed = "passed" if m.parity.get("passed") else "FAILED"
    out.print(
        f"artifact {artifact.path.name}: {m.key.describe()}, {size_text(artifact.size)}, built "
        f"{m.built_at}, parity {passed}",
        highlight=False,
    )


def show_compiled(result: CompileResult) -> None:
    """``compile``'s summary of one model: built or up to date, key, artifact, parity, notes."""
    manifest = result.artifact.manifest
    state = "up to date" if result.cached else f"built in {manifest.build_seconds:.2f} s"
    out.print(f"[bold]{manifest.model}[/] {state} ({result.seconds:.2f} s in all)", highlight=False)
    out.print(f"  key       {manifest.key.dirname}  ({manifest.key.describe()})", highlight=False)
    out.print(
        f"  artifact  {result.artifact.file}  {size_text(result.artifact.size)}", highlight=False
    )
    parity = manifest.parity
    figures = ", ".join(
        f"{name} max|Δ| {o['max_abs']:.3g}" for name, o in parity.get("outputs", {}).items()
    )
    out.print(
        f"  parity    {'passed' if parity.get('passed') else 'FAILED'} on {parity.get('samples')} "
        f"sample(s) ({parity.get('inputs')}): {figures}",
        highlight=False,
    )
    for note in manifest.notes:
        out.print(f"  note      {note}", highlight=False)


def show_source(config: ModelConfig, path: Path, source: OnnxSource, io: ModelIO) -> None:
    """``inspect``'s view of an ONNX source: hash, opsets, IO, dynamic axes and ops used."""
    out.print(f"[bold]{config.name}[/]  {path}  sha256 {source.sha256[:16]}", highlight=False)
    opsets = ", ".join(f"{d} {v}" for d, v in source.opsets.items())
    out.print(f"opset: {opsets}   IR version {source.model.ir_version}", highlight=False)
    out.print(io_table(io, "IO"))
    dynamic = sorted({d for s in io.inputs for d in s.dynamic_dims})
    for dim in dynamic:
        bounds = io.dims.get(dim)
        text = (
            f"min {bounds.min} opt {bounds.opt} max {bounds.max}"
            if bounds
            else "[yellow]no bounds[/]: add to model.toml [dims]"
        )
        out.print(f"dynamic axis {escape(repr(dim))}: {text}", highlight=False)
    ops = source.ops_used()
    out.print("ops: " + escape(", ".join(f"{op}×{n}" for op, n in sorted(ops.items()))))


def show_model_artifacts(model: ModelDir) -> None:
    for found in model.artifacts():
        if isinstance(found, EdgertError):
            out.print(f"[red]broken artifact[/]: {escape(found.message)}", highlight=False)
        else:
            show_artifact(found)


def _models_table(models: list[ModelDir]) -> tuple[Table, list[tuple[str, Artifact]]]:
    """The table of ``list``, and the artifacts auto built for a fallback backend."""
    table = Table(show_edge=False)
    for column in (
        "model",
        "version",
        "source",
        "artifact",
        "backend",
        "precision",
        "size",
        "parity",
    ):
        table.add_column(column)
    fallbacks: list[tuple[str, Artifact]] = []
    for model in models:
        try:
            config = model.config
        except EdgertError as exc:
            table.add_row(model.path.name, "", "", f"[red]{escape(exc.message)}[/]")
            continue
        source = "yes" if model.source_path.is_file() else "[yellow]missing[/]"
        artifacts = model.artifacts()
        building = builds_in_progress(model.build_dir)
        if not artifacts and not building:
            table.add_row(config.name, config.version, source, "[yellow]not compiled[/]")
        for build in building:
            table.add_row(
                config.name,
                config.version,
                source,
                f"[cyan]building {build.fraction:.0%}[/]: {escape(build.stage)}",
                build.backend,
            )
        for found in artifacts:
            if isinstance(found, EdgertError):
                table.add_row(
                    config.name, config.version, source, f"[red]{escape(found.message)}[/]"
                )
                continue
            key = found.manifest.key
            if found.manifest.fallback:
                fallbacks.append((config.name, found))
            table.add_row(
                config.name,
                found.manifest.version,
                source,
                found.path.name,
                f"{key.backend} {key.backend_version}",
                key.precision,
                size_text(found.size),
                "passed" if found.manifest.parity.get("passed") else "FAILED",
            )
    return table, fallbacks


def show_models(models: list[ModelDir]) -> None:
    """``list``: the models and their artifacts, why any fell back, and this machine's backends."""
    table, fallbacks = _models_table(models)
    out.print(table)
    for name, artifact in fallbacks:
        out.print(
            f"{name} {artifact.path.name}: built for {artifact.manifest.key.backend} "
            f"because {artifact.manifest.fallback}",
            highlight=False,
        )
    for entry in backend_status():
        state = "available" if entry.available else f"unavailable: {entry.reason}"
        out.print(f"backend {entry.name}: {state}", highlight=False)


def show_outputs(outputs: Mapping[str, np.ndarray]) -> None:
    """``run``'s outputs, each as its name, dtype and shape, then its values."""
    np.set_printoptions(precision=5, suppress=True, threshold=64)
    for name, value in outputs.items():
        out.print(
            f"[bold]{escape(name)}[/] {value.dtype.name}{escape(str(list(value.shape)))}",
            highlight=False,
        )
        out.print(escape(np.array2string(value)), highlight=False)


def findings_table(findings: list[Finding]) -> Table:
    """``doctor``'s findings, one row each, with a hint under a problem's value."""
    table = Table(show_edge=False)
    for column in ("", "check", "value"):
        table.add_column(column)
    marks = {True: "[green]ok[/]", False: "[red]PROBLEM[/]", None: ""}
    for finding in findings:
        value = escape(finding.value)
        if finding.hint:
            value += f"\n[yellow]{escape(finding.hint)}[/]"
        table.add_row(marks[finding.ok], f"{finding.section}: {finding.item}", value)
    return table
