"""A starter model.toml for an ONNX file: what ``edgert init <model.onnx>`` writes beside it.

Every dynamic dim of the inputs gets a name and placeholder bounds under ``[dims]``: the name the
exporter gave it (dims that share a name are one dim, bounded once: they must agree), or, for a
dim the exporter left unnamed, ``<input>_<axis>``, which the input's ``shape`` then names. Each
key carries a comment saying what it is; docs/model-toml.md has the rest. ``edgert compile``
takes the file as written; the bounds are placeholders to set to the sizes devices send.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgert.onnx import load_source
from edgert.schema import key_text

__all__ = ["PLACEHOLDER", "StarterInput", "read_inputs", "starter_toml", "write_starter"]

PLACEHOLDER = (1, 1, 8)  # min, opt, max written for every dynamic dim
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass
class StarterInput:
    """One graph input as the starter sees it: its dtype and its dims (a size, the exporter's
    name, or None where the exporter left a dynamic dim unnamed); ``shape`` is None for an
    input of unknown rank."""

    name: str
    dtype: str
    shape: list[int | str | None] | None
    names: list[int | str] = field(default_factory=list)  # every dim named, after naming

    @property
    def renamed(self) -> bool:
        return self.shape is not None and None in self.shape


def read_inputs(model: onnx.ModelProto) -> list[StarterInput]:
    """The graph's inputs (initializers excluded), every dynamic dim named."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = _dtype_name(tensor.elem_type)
        shape: list[int | str | None] | None = None
        if tensor.HasField("shape"):
            shape = [_dim(d) for d in tensor.shape.dim]
        inputs.append(StarterInput(value.name, dtype, shape))
    taken = {d for i in inputs for d in i.shape or () if isinstance(d, str)}
    for item in inputs:
        for axis, dim in enumerate(item.shape or ()):
            if dim is None:
                dim = _fresh(f"{_NOT_A_NAME.sub('_', item.name)}_{axis}", taken)
                taken.add(dim)
            item.names.append(dim)
    return inputs


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    """A size, the exporter's name, or None for a dynamic dim without one (as edgert reads
    them: '?', -1, 0 or nothing are unnamed)."""
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param.strip() not in ("", "?", "-1"):
        return dim.dim_param.strip()
    return None


def _dtype_name(elem_type: int) -> str:
    """numpy's name for an ONNX element type (``float32``), else ONNX's own (``string``)."""
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type).name)
    except (KeyError, TypeError, ValueError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _fresh(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _line(text: str, comment: str) -> str:
    """A TOML line with its comment, aligned."""
    return f"{text:<40}# {comment}" if len(text) < 40 else f"{text}  # {comment}"


def _shape_text(dims: list[int | str]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else _quoted(d) for d in dims) + "]"


def starter_toml(onnx_path: Path) -> str:
    """The starter model.toml for ``onnx_path`` (checked and shape-inferred first: an
    EdgertError for a file that is not a usable ONNX model)."""
    source = load_source(onnx_path)
    inputs = read_inputs(source.model)
    lines = [
        f"# model.toml for {onnx_path.name}, written by `edgert init`: a starting point to edit.",
        "# Every key: docs/model-toml.md. Check it with `edgert inspect` and `edgert compile`.",
        "",
        _line(f"# name = {_quoted(onnx_path.parent.resolve().name)}", "default: the directory's"),
        _line('version = "1"', "your model's own version, echoed in every reply"),
        _line(f"source = {_quoted(onnx_path.name)}", "the ONNX file, beside this one"),
        _line('precision = "fp32"', "default build precision: fp32 | fp16 | int8"),
        _line('description = ""', "what it does, for the catalogue"),
        _line("# labels = []", "class names, in output order (or a labels file's name)"),
    ]
    lines += _dims_lines(inputs)
    for item in inputs:
        lines += _input_lines(item)
    lines += [
        "",
        "# Outputs: " + ", ".join(_describe_output(v) for v in source.model.graph.output) + ".",
        "# [postprocess] turns them into a reply's result (top_k, threshold or detect); a",
        "# [preprocess] table takes JPEG, PNG or WAV payloads from devices: docs/model-toml.md.",
    ]
    return "\n".join(lines) + "\n"


def _dims_lines(inputs: list[StarterInput]) -> list[str]:
    uses: dict[str, list[str]] = {}
    for item in inputs:
        for axis, dim in enumerate(item.names):
            if isinstance(dim, str):
                uses.setdefault(dim, []).append(f"{item.name} axis {axis}")
    if not uses:
        return ["", "# No dynamic dims: every input has a fixed shape, so [dims] needs nothing."]
    low, opt, high = PLACEHOLDER
    lines = [
        "",
        "# Bounds of each dynamic dim: engines are built for min..max and tuned for opt.",
        "# Placeholders: set the sizes your devices send. Dims that must agree share one name.",
        "[dims]",
    ]
    for dim, where in uses.items():
        text = f"{key_text(dim)} = {{ min = {low}, opt = {opt}, max = {high} }}"
        lines.append(_line(text, ", ".join(where)))
    return lines


def _input_lines(item: StarterInput) -> list[str]:
    header = f"[inputs.{key_text(item.name)}]"
    if item.shape is None:
        return [
            "",
            header,
            _line("# shape = []", "the ONNX gives no shape: list its sizes and dim names"),
        ]
    lines = ["", _line(header, f"{item.dtype} {_shape_text(item.names)}")]
    if item.renamed:
        lines.append(_line(f"shape = {_shape_text(item.names)}", "names the exporter left out"))
    lines += [
        _line('kind = "request"', "sent by a device (or constant, carried, windowed)"),
        _line("# range = [0.0, 1.0]", "of the parity check's seeded random samples"),
    ]
    return lines


def _describe_output(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dtype = _dtype_name(tensor.elem_type)
    if not tensor.HasField("shape"):
        return f"{value.name} {dtype}"
    dims = [_dim(d) for d in tensor.shape.dim]
    return f"{value.name} {dtype} [" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _quoted(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def write_starter(onnx_path: Path) -> Path:
    """Write the starter model.toml beside ``onnx_path``; FileExistsError if there is one
    (never overwritten)."""
    text = starter_toml(onnx_path)
    target = onnx_path.parent / "model.toml"
    with target.open("x", encoding="utf-8") as fh:
        fh.write(text)
    return target
