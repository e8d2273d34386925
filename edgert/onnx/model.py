"""Load, check and shape-infer an ONNX source; read its IO specs. Imports ``onnx`` only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from edgert.config import ModelConfig
from edgert.digest import source_digest
from edgert.errors import (
    ConfigError,
    ModelCheckError,
    ModelLoadError,
    UnboundedDimError,
    first_line,
)
from edgert.spec import Dim, DimRange, DType, ModelIO, Shape, TensorSpec

__all__ = [
    "ModelIO",
    "OnnxSource",
    "external_data_files",
    "io_specs",
    "load_source",
    "source_sha256",
    "with_io_dims",
    "write_prepared",
]

_ONNX_DTYPES: dict[int, DType] = {
    TensorProto.FLOAT: DType.FLOAT32,
    TensorProto.FLOAT16: DType.FLOAT16,
    TensorProto.DOUBLE: DType.FLOAT64,
    TensorProto.INT8: DType.INT8,
    TensorProto.UINT8: DType.UINT8,
    TensorProto.INT16: DType.INT16,
    TensorProto.UINT16: DType.UINT16,
    TensorProto.INT32: DType.INT32,
    TensorProto.UINT32: DType.UINT32,
    TensorProto.INT64: DType.INT64,
    TensorProto.UINT64: DType.UINT64,
    TensorProto.BOOL: DType.BOOL,
}


@dataclass(frozen=True)
class OnnxSource:
    """A loaded, checked and shape-inferred ONNX model, with where it came from."""

    path: Path
    model: onnx.ModelProto
    sha256: str
    external: tuple[Path, ...] = ()  # its external data files, in the order the sha256 took them

    @property
    def opset(self) -> int:
        """The default-domain (ai.onnx) opset the model imports."""
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    @property
    def opsets(self) -> dict[str, int]:
        return {(o.domain or "ai.onnx"): o.version for o in self.model.opset_import}

    def ops_used(self) -> Counter[str]:
        """Op types used anywhere in the graph (subgraphs included), as ``domain::Op`` or ``Op``."""
        counts: Counter[str] = Counter()
        stack = [self.model.graph]
        while stack:
            graph = stack.pop()
            for node in graph.node:
                key = (
                    f"{node.domain}::{node.op_type}"
                    if node.domain not in ("", "ai.onnx")
                    else (node.op_type)
                )
                counts[key] += 1
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        stack.append(attr.g)
                    stack.extend(attr.graphs)
        return counts


def external_data_files(model: onnx.ModelProto, base: Path) -> list[Path]:
    """The external data files a model's initializers point to (unique, in order)."""
    files: list[Path] = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is not None and (base / location) not in files:
            files.append(base / location)
    return files


def source_sha256(path: Path, model: onnx.ModelProto | None = None) -> str:
    """sha256 over the ONNX file and its external data files, in order.

    ``model`` names the external files: pass it as loaded without its external data
    (``load_external_data=False``); once the data is loaded the references are gone.
    """
    extras = external_data_files(model, path.parent) if model is not None else []
    return source_digest(path, extras)


def load_source(path: Path) -> OnnxSource:
    """Load ``path``, run onnx.checker and shape inference; one clear error on any failure."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such ONNX file")
    try:
        # Load the graph without weights first: a clean parse error for non-ONNX/truncated files.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: not a readable ONNX model (truncated or not ONNX): {first_line(exc)}"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not a readable ONNX model (empty graph)")
    missing = [p for p in external_data_files(model, path.parent) if not p.is_file()]
    if missing:
        raise ModelLoadError(
            f"{path}: external data file(s) missing: {', '.join(str(p) for p in missing)}"
        )
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelCheckError(f"{path}: onnx.checker rejects it: {first_line(exc)}") from exc
    max_opset = onnx.defs.onnx_opset_version()
    source = OnnxSource(path, model, "")
    if source.opset > max_opset:
        raise ModelCheckError(
            f"{path}: opset {source.opset} is newer than this onnx {onnx.__version__} supports "
            f"(up to {max_opset})"
        )
    # Hash now: loading the external data below drops the references to its files.
    external = tuple(external_data_files(model, path.parent))
    sha256 = source_digest(path, external)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(f"{path}: external data unreadable: {first_line(exc)}") from exc
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as exc:
        raise ModelCheckError(f"{path}: shape inference failed: {first_line(exc)}") from exc
    return OnnxSource(path, model, sha256, external)


def _raw_dims(value: onnx.ValueInfoProto) -> Shape | None:
    """The ONNX shape with unnamed dynamic dims ('?', -1, 0, missing) named ``<tensor>.<axis>``."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param.strip() not in ("", "?", "-1"):
            dims.append(dim.dim_param.strip())
        else:
            dims.append(f"{value.name}.{axis}")
    return tuple(dims)


def _dtype(value: onnx.ValueInfoProto, where: str) -> DType:
    if not value.type.HasField("tensor_type"):
        raise ModelCheckError(
            f"{where} '{value.name}' is not a tensor ({value.type.WhichOneof('value')}); edgert "
            "serves tensor inputs and outputs only"
        )
    elem = value.type.tensor_type.elem_type
    if elem not in _ONNX_DTYPES:
        name = TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else elem
        raise ModelCheckError(f"{where} '{value.name}' has unsupported element type {name}")
    return _ONNX_DTYPES[elem]


def io_specs(source: OnnxSource, config: ModelConfig, *, require_bounds: bool = True) -> ModelIO:
    """Derive IO specs, apply model.toml shape overrides, and bound every dynamic input dim.

    With ``require_bounds=False`` (for inspection) unbounded dims are left out of ``dims``.
    """
    graph = source.model.graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in initializers]
    names = {v.name for v in graph_inputs}
    unknown = set(config.inputs) - names
    if unknown:
        raise ConfigError(
            f"model.toml names input(s) {', '.join(sorted(unknown))} that the model does not "
            f"have; it has: {', '.join(sorted(names))}"
        )
    inputs = []
    for value in graph_inputs:
        dtype = _dtype(value, "input")
        shape = _raw_dims(value)
        override = config.inputs[value.name].shape if value.name in config.inputs else None
        if override is not None:
            shape = _apply_override(value.name, shape, override)
        if shape is None:
            raise ModelCheckError(
                f"input '{value.name}' has no shape in the ONNX; give one in model.toml: "
                f"[inputs.{value.name}] shape = [...]"
            )
        inputs.append(TensorSpec(value.name, dtype, shape))
    dims: dict[str, DimRange] = {}
    for spec in inputs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) or dim in dims:
                continue
            if dim not in config.dims:
                if not require_bounds:
                    continue
                key = dim if dim.isidentifier() else f'"{dim}"'
                raise UnboundedDimError(
                    f"input '{spec.name}' axis {axis} ('{dim}') is dynamic and has no bounds; "
                    f"add to model.toml: [dims] {key} = {{ min = 1, opt = 1, max = 8 }}"
                )
            dims[dim] = config.dims[dim]
    # Dims named by overrides may also be fixed sizes in model.toml (min == max).
    out_names = {v.name for v in graph.output}
    unknown = set(config.outputs) - out_names
    if unknown:
        raise ConfigError(
            f"model.toml names output(s) {', '.join(sorted(unknown))} that the model does not "
            f"have; it has: {', '.join(sorted(out_names))}"
        )
    outputs = []
    for value in graph.output:
        shape = _raw_dims(value)
        # Converters name output dims apart from the input's (skl2onnx, tf2onnx: 'unk__7'), so
        # model.toml may say axis 0 is the batch: [outputs.label] shape = ["batch"].
        override = config.outputs[value.name].shape if value.name in config.outputs else None
        if override is not None:
            shape = _apply_override(value.name, shape, override, "output")
        outputs.append(TensorSpec(value.name, _dtype(value, "output"), shape or ()))
    return ModelIO(tuple(inputs), tuple(outputs), dims)


def with_io_dims(model: onnx.ModelProto, io: ModelIO) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs and outputs carry ``io``'s dims: named dims as
    dim_param, sizes as dim_value. Runtimes read dim_value 0 as a real zero-size axis and some
    reject -1, so the graph must say what edgert means by them before anything builds from it."""
    specs = {s.name: s for s in (*io.inputs, *io.outputs)}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    # Shapes inferred from the old IO dims (a dim_value 0 read as a real 0) would contradict
    # the rewritten ones; a runtime infers them again.
    del fixed.graph.value_info[:]
    # Outputs too: TensorRT (and the emulator) size an output declared [0, 3] as empty.
    for value in (*fixed.graph.input, *fixed.graph.output):
        spec = specs.get(value.name)
        if spec is None:
            continue
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for dim in spec.shape:
            if isinstance(dim, int):
                shape.dim.add().dim_value = dim
            else:
                shape.dim.add().dim_param = dim
    return fixed


def _apply_override(name: str, shape: Shape | None, override: Shape, kind: str = "input") -> Shape:
    if shape is None:
        return override
    if len(shape) != len(override):
        raise ConfigError(
            f"model.toml gives {kind} '{name}' shape {list(override)} of rank {len(override)}; "
            f"the model's is {list(shape)}, rank {len(shape)}"
        )
    for axis, (have, want) in enumerate(zip(shape, override, strict=True)):
        if isinstance(have, int) and have != want:
            raise ConfigError(
                f"model.toml gives {kind} '{name}' axis {axis} as {want!r}, but the model fixes "
                f"it at {have}"
            )
    return override


def write_prepared(model: onnx.ModelProto, directory: Path) -> Path:
    """Save the graph a backend builds from (converted, IO dims named) as ``prepared.onnx`` in
    ``directory``, weights beside it when over protobuf's 2 GiB, so a runtime resolves them."""
    prepared = directory / "prepared.onnx"
    onnx.save_model(
        model,
        str(prepared),
        save_as_external_data=model.ByteSize() > 1 << 30,
        location="prepared.onnx.data",
    )
    return prepared
