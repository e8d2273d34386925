"""Tensor files for the command line: inputs read from ``.npy``, ``.npz`` or JSON, outputs written
to them whole or not at all (a temporary file, then a rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgert.errors import InputError
from edgert.spec import ModelIO

__all__ = ["read_inputs", "read_tensors", "write_outputs"]


def read_tensors(path: Path) -> Any:
    """What ``path`` holds: one array (``.npy``, or a JSON value), or a name -> array mapping
    (``.npz``, or a JSON object); InputError when it cannot be read."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        if path.suffix == ".json":
            return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
    raise InputError(f"{path}: use a .npy, .npz or .json file")


def read_inputs(path: Path, io: ModelIO, constants: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The model's inputs from ``path``, each cast to its spec's dtype; one array stands for the
    one input model.toml's constants leave."""
    requested = [s for s in io.inputs if s.name not in constants]
    raw = read_tensors(path)
    if not isinstance(raw, dict):
        if len(requested) != 1:
            names = ", ".join(s.name for s in requested)
            raise InputError(
                f"{path} holds one array but the model takes {len(requested)} inputs ({names}); "
                "use .npz or a JSON object of name -> values"
            )
        raw = {requested[0].name: raw}
    by_name = {s.name: s for s in io.inputs}
    unknown = [k for k in raw if k not in by_name]
    if unknown:
        raise InputError(
            f"{path}: unknown input(s) {', '.join(unknown)}; the model takes: {', '.join(by_name)}"
        )
    return {name: by_name[name].coerce(value) for name, value in raw.items()}


def write_outputs(path: Path, outputs: Mapping[str, np.ndarray]) -> None:
    """``outputs`` to ``path`` by its suffix: ``.npy`` (one output), ``.npz`` or ``.json``."""
    if path.suffix == ".npy":
        if len(outputs) != 1:
            raise InputError(
                f"the model has {len(outputs)} outputs; write them to .npz or .json instead"
            )
        array = next(iter(outputs.values()))

        def write_npy(p: Path) -> None:
            with p.open("wb") as fh:
                np.save(fh, array, allow_pickle=False)

        _write_atomic(path, write_npy)
    elif path.suffix == ".npz":

        def write_npz(p: Path) -> None:
            with p.open("wb") as fh:
                np.savez(fh, **outputs)  # type: ignore[arg-type]

        _write_atomic(path, write_npz)
    elif path.suffix == ".json":
        text = json.dumps({k: v.tolist() for k, v in outputs.items()}) + "\n"

        def write_json(p: Path) -> None:
            p.write_text(text)

        _write_atomic(path, write_json)
    else:
        raise InputError(f"{path}: use a .npy, .npz or .json output file")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
