"""The ``edgert`` command line: compile, inspect, init, list and run models.

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

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from edgert import __version__
from edgert.cliview import (
    err,
    findings_table,
    io_table,
    out,
    show_artifact,
    show_compiled,
    show_model_artifacts,
    show_models,
    show_outputs,
    show_source,
)
from edgert.config import ModelConfig
from edgert.errors import EdgertError
from edgert.repository import Artifact, ModelDir, Repository
from edgert.runtime import open_model
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
    show_compiled(result)


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
            show_artifact(artifact)
            out.print(io_table(artifact.manifest.io, "IO"))
            return
        if target.is_dir():
            model = ModelDir(target)
            config = model.config
            path = model.source_path
        else:
            model, config, path = None, ModelConfig(name=target.stem), target
        source = load_source(path)
        show_source(config, path, source, io_specs(source, config, require_bounds=False))
        if model is not None:
            show_model_artifacts(model)


@app.command()
def init(
    source: Annotated[
        Path, typer.Argument(help="The ONNX file (or a directory holding model.onnx).")
    ],
) -> None:
    """Write a starter model.toml beside an ONNX file: every dynamic dim named and given
    placeholder bounds, a comment per key. Never overwrites one (exit 2)."""
    from edgert.starter import write_starter

    path = source / "model.onnx" if source.is_dir() else source
    with _errors():
        try:
            written = write_starter(path)
        except FileExistsError:
            err.print(
                f"[bold red]error:[/] {escape(str(path.parent / 'model.toml'))} exists; "
                "edgert init does not overwrite it",
                highlight=False,
            )
            raise typer.Exit(2) from None
    out.print(escape(f"wrote {written}: set the bounds under [dims], then edgert compile"))


@app.command("list")
def list_models(repository: RepositoryOpt = DEFAULT_REPOSITORY) -> None:
    """List the repository's models and their artifacts, and which backends this machine has."""
    with _errors():
        show_models(Repository(repository).models())


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
        show_outputs(outputs)
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
    out.print(findings_table(findings))
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
