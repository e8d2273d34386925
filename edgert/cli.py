"""The ``edgert`` command line: compile, inspect, list and run models.

Every command catches :class:`EdgertError`, prints one clear line to stderr and exits 1; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgert import __version__
from edgert.backends import status as backend_status
from edgert.config import ModelConfig
from edgert.errors import EdgertError
from edgert.repository import Artifact, ModelDir, Repository
from edgert.runtime import open_model
from edgert.spec import ModelIO
from edgert.tensorfiles import read_inputs, read_tensors, write_outputs

if TYPE_CHECKING:  # compile and the onnx package load in the commands that need them, not in serve
    from edgert.compile import CompileOptions

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgert",
    help=(
        "Compile ONNX models into TensorRT engines (or ONNX Runtime artifacts on CPU), check "
        "them against the FP32 reference, and serve them to smart-home devices over MQTT."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
# Wide when piped, so tables and paths are not cut for logs and scripts.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

DEFAULT_REPOSITORY = Path("engines")
RepositoryOpt = Annotated[
    Path,
    typer.Option(
        "--repository", "-r", help="Model repository: one directory per model.", show_default=True
    ),
]


class BackendChoice(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(1)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except EdgertError as exc:
        _fail(exc.message)


def _version(value: bool) -> None:
    if value:
        out.print(f"edgert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """edgert: the same verified answer from the same model, on every device in the home."""


@app.command()
def compile(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Model directories (or names in the repository); default: all."),
    ] = None,
    backend: Annotated[
        BackendChoice, typer.Option(help="Runtime to build for; auto picks the best available.")
    ] = BackendChoice.auto,
    precision: Annotated[
        PrecisionChoice | None,
        typer.Option(help="Build precision; default: model.toml's (fp32 if unset)."),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Rebuild even if an identical artifact exists.")
    ] = False,
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
) -> None:
    """Build a verified artifact for each model (all in the repository by default).

    Loads and checks the ONNX, builds with the chosen backend, compares the result with the FP32
    ONNX reference on the model's samples/ (or seeded random inputs), and writes it atomically
    under `<model>/build/<key>/`. Building the same source with the same options again is a cache
    hit. Dynamic axes need bounds in model.toml (`[dims]`); `edgert inspect` names them.
    """
    from edgert.compile import CompileOptions

    with _errors():
        repo = Repository(repository)
        targets = [repo.model(m) for m in models] if models else repo.models()
        if not targets:
            _fail(f"no models in {repository}")
        options = CompileOptions(
            backend=backend.value, precision=precision.value if precision else None, force=force
        )
        for model in targets:
            _compile_one(model, options)


def _compile_one(model: ModelDir, options: CompileOptions) -> None:
    from edgert.compile import compile_model

    with Progress(
        TextColumn("[bold]{task.fields[model]}[/]"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=1.0, model=model.path.name)

        def progress(stage: str, fraction: float) -> None:
            bar.update(task, description=stage, completed=fraction)

        result = compile_model(model, options, progress)
    manifest = result.artifact.manifest
    state = "up to date" if result.cached else f"built in {manifest.build_seconds:.2f} s"
    out.print(f"[bold]{manifest.model}[/] {state} ({result.seconds:.2f} s in all)", highlight=False)
    out.print(f"  key       {manifest.key.dirname}  ({manifest.key.describe()})", highlight=False)
    out.print(f"  artifact  {result.artifact.file}  {_size(result.artifact.size)}", highlight=False)
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


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _io_table(io: ModelIO, title: str) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for kind, specs in (("input", io.inputs), ("output", io.outputs)):
        for spec in specs:
            table.add_row(kind, escape(spec.name), spec.dtype.value, escape(spec.shape_text()))
    return table


@app.command()
def inspect(
    target: Annotated[
        Path, typer.Argument(help="An ONNX file, a model directory, or an artifact directory.")
    ],
) -> None:
    """Show a model's inputs and outputs, opset, ops, dynamic axes and bounds, and artifacts."""
    from edgert.onnx import io_specs, load_source

    with _errors():
        if (target / "manifest.json").is_file():
            artifact = Artifact.read(target)
            _show_artifact(artifact)
            out.print(_io_table(artifact.manifest.io, "IO"))
            return
        if target.is_dir():
            model = ModelDir(target)
            config = model.config
            path = model.source_path
        else:
            model, config, path = None, ModelConfig(name=target.stem), target
        source = load_source(path)
        io = io_specs(source, config, require_bounds=False)
        out.print(f"[bold]{config.name}[/]  {path}  sha256 {source.sha256[:16]}", highlight=False)
        opsets = ", ".join(f"{d} {v}" for d, v in source.opsets.items())
        out.print(f"opset: {opsets}   IR version {source.model.ir_version}", highlight=False)
        out.print(_io_table(io, "IO"))
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
        if model is not None:
            for found in model.artifacts():
                if isinstance(found, EdgertError):
                    out.print(f"[red]broken artifact[/]: {escape(found.message)}", highlight=False)
                else:
                    _show_artifact(found)


def _show_artifact(artifact: Artifact) -> None:
    m = artifact.manifest
    passed = "passed" if m.parity.get("passed") else "FAILED"
    out.print(
        f"artifact {artifact.path.name}: {m.key.describe()}, {_size(artifact.size)}, built "
        f"{m.built_at}, parity {passed}",
        highlight=False,
    )


@app.command("list")
def list_models(repository: RepositoryOpt = DEFAULT_REPOSITORY) -> None:
    """List the repository's models and their artifacts, and which backends this machine has."""
    with _errors():
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
        fallbacks: list[tuple[str, Artifact]] = []  # artifacts auto built for a fallback backend
        for model in Repository(repository).models():
            try:
                config = model.config
            except EdgertError as exc:
                table.add_row(model.path.name, "", "", f"[red]{escape(exc.message)}[/]")
                continue
            source = "yes" if model.source_path.is_file() else "[yellow]missing[/]"
            artifacts = model.artifacts()
            if not artifacts:
                table.add_row(config.name, config.version, source, "[yellow]not compiled[/]")
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
                    _size(found.size),
                    "passed" if found.manifest.parity.get("passed") else "FAILED",
                )
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


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="Model directory, or model name in the repository.")],
    input: Annotated[
        Path,
        typer.Option(
            "--input", "-i", help="Inputs: .npy (one input), .npz, or JSON {name: nested list}."
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write outputs to .npy, .npz or .json.")
    ] = None,
    backend: Annotated[BackendChoice, typer.Option(help="Runtime to use.")] = BackendChoice.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print outputs as JSON.")] = False,
    repository: RepositoryOpt = DEFAULT_REPOSITORY,
) -> None:
    """Run a compiled model once on local inputs, through the same code the daemon uses.

    Picks the artifact that runs on this machine (refusing stale or foreign ones, with the
    rebuild command). Inputs declared constant in model.toml are filled in.
    """
    with _errors():
        loaded = open_model(Repository(repository).model(model), backend.value)
        try:
            feeds = read_inputs(input, loaded.runner.io, loaded.constants)
            outputs = loaded.infer(feeds)
        finally:
            loaded.close()
        if output is not None:
            write_outputs(output, outputs)
        key = loaded.artifact.manifest.key
        if as_json:
            print(json.dumps({k: v.tolist() for k, v in outputs.items()}))
            return
        err.print(
            f"{loaded.config.name} {loaded.config.version} on {key.backend} {key.precision} "
            f"in {loaded.runner.last_infer_seconds * 1000:.2f} ms",
            highlight=False,
        )
        np.set_printoptions(precision=5, suppress=True, threshold=64)
        for name, value in outputs.items():
            out.print(
                f"[bold]{escape(name)}[/] {value.dtype.name}{escape(str(list(value.shape)))}",
                highlight=False,
            )
            out.print(escape(np.array2string(value)), highlight=False)
        if output is not None:
            err.print(f"wrote {output}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Daemon config (TOML); see device/edgert.toml."),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="Broker URL: mqtt://[user:password@]host[:port] or mqtts://..."),
    ] = None,
    repository: Annotated[
        Path | None, typer.Option("--repository", "-r", help="Model repository to serve.")
    ] = None,
    node: Annotated[
        str | None, typer.Option(help="Node id (default: the host name, reduced to [a-zA-Z0-9_-]).")
    ] = None,
    rebuild_stale: Annotated[
        bool,
        typer.Option(
            "--rebuild-stale",
            help="Rebuild (in a child process) models whose artifacts are for another machine or "
            "an older model.onnx, instead of refusing them.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    """Serve the repository's models over MQTT until SIGTERM or Ctrl-C.

    Loads every compiled model (compiling the others in a child process), connects, publishes
    `online`, the model catalogue and stats, and answers requests on `edgert/infer/<model>`.
    On SIGTERM it stops taking requests, answers what it took, publishes `offline`, exits 0.
    On SIGHUP it reloads: models recompiled since are swapped in without dropping a request.
    """
    from edgert.daemon.__main__ import SETTINGS_VARIABLE, load_settings, settings_argument

    argument = settings_argument(
        config,
        broker=broker,
        repository=repository if (repository or config) else DEFAULT_REPOSITORY,
        node=node,
        rebuild_stale=rebuild_stale,
        verbose=verbose,
    )
    with _errors():
        load_settings(argument, DEFAULT_REPOSITORY)  # a bad config fails here, in one line
    sys.stdout.flush()
    sys.stderr.flush()
    # The daemon runs in a lean process (same pid, so systemd and signals see no difference)
    # without the CLI's libraries: Typer, Click, Rich and pydantic hold memory it never uses.
    # The settings travel in the environment: a broker password must not show in `ps`.
    environment = {**os.environ, SETTINGS_VARIABLE: argument}
    os.execve(sys.executable, [sys.executable, "-m", "edgert.daemon"], environment)


@app.command()
def doctor(
    broker: Annotated[
        str | None,
        typer.Option(help="Also check this broker is reachable: mqtt://host[:port]."),
    ] = None,
) -> None:
    """Report TensorRT, CUDA, driver, cuda-python, GPU, JetPack, DLA, ONNX Runtime and broker
    facts, and whether they fit together. Paste its output into bug reports."""
    from edgert.doctor import run_checks
    from edgert.settings import parse_broker_url

    with _errors():
        target = parse_broker_url(broker) if broker else None
        findings = run_checks(target)
    table = Table(show_edge=False)
    for column in ("", "check", "value"):
        table.add_column(column)
    marks = {True: "[green]ok[/]", False: "[red]PROBLEM[/]", None: ""}
    for finding in findings:
        value = escape(finding.value)
        if finding.hint:
            value += f"\n[yellow]{escape(finding.hint)}[/]"
        table.add_row(marks[finding.ok], f"{finding.section}: {finding.item}", value)
    out.print(table)
    problems = [f for f in findings if f.ok is False]
    if problems:
        err.print(f"{len(problems)} problem(s) found")
        raise typer.Exit(1)


@app.command()
def infer(
    model: Annotated[str, typer.Argument(help="Model name, as the daemon serves it.")],
    input: Annotated[
        Path,
        typer.Option("--input", "-i", help="Inputs: .npy (one input), .npz, or JSON {name: list}."),
    ],
    broker: Annotated[str, typer.Option(help="Broker URL.")] = "mqtt://127.0.0.1:1883",
    node: Annotated[str | None, typer.Option(help="Send to this node only.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 10.0,
    wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for a node's catalogue to list the model as ready before "
            "sending; 0: send at once."
        ),
    ] = 30.0,
) -> None:
    """Send one request to a serving daemon over MQTT and print the reply as JSON.

    Waits (`--wait`) until a node lists the model as ready, so a daemon still loading it, or
    none at all, is named in one line rather than a silent timeout.
    """
    from edgert.client import Client

    with _errors():
        raw = read_tensors(input)
        with Client(broker, node=node) as client:
            if wait > 0:
                client.wait_ready(model, wait)
            reply = client.infer(model, raw, timeout=timeout)
        print(json.dumps(reply.raw))
