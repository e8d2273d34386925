"""What the emulated ONNX parser and builder know about a model: which nodes TensorRT's parser
would refuse, the network's IO tensors (with each version's type mapping), which outputs have
data-dependent shapes, and an ONNX Runtime session to compute with.

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

__all__ = [
    "DATA_DEPENDENT_OPS",
    "PARSER_MAX_OPSET",
    "UNSUPPORTED_OPS",
    "IoTensor",
    "ParseProblem",
    "find_problem",
    "io_tensors",
    "load_model",
    "make_session",
    "np_dtype",
]

# Ops whose output size depends on the data: their outputs need an IOutputAllocator.
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})

# Default-domain ops the ONNX-TensorRT parser has no importer for, in 8.6 through 11 (onnx-
# tensorrt docs/operators.md marks them N): sequences, optionals, strings, integer-only linear
# algebra. Everything outside the default domain (ai.onnx.ml, com.microsoft...) is refused too:
# the parser then looks for a plugin of that name and finds none.
UNSUPPORTED_OPS = frozenset(
    {
        "ConcatFromSequence",
        "ConvInteger",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    }
)

# The newest ai.onnx opset each emulated parser knows (the emulator's own table, kept apart from
# edgert's): 8.6 up to 17, 10.3 up to 20, 11.x up to 25 (onnx-tensorrt docs/operators.md of
# 8.5/8.6 and 10.0-10.8; NVIDIA's ONNX Opset Guide for 11.x).
PARSER_MAX_OPSET = {8: 17, 10: 20, 11: 25}

_PLUGIN_NOT_FOUND = (
    'Assertion failed: creator && "Plugin not found, are the plugin name, version, and namespace '
    'correct?"'
)

# ONNX element type -> (numpy dtype, TensorRT DataType member) per TensorRT major. 8.x has no
# INT64: its parser imports int64 IO as INT32 (onnx2trt convertDtype), and casts DOUBLE to FLOAT.
_TYPES: dict[int, tuple[Any, str]] = {
    TensorProto.FLOAT: (np.float32, "FLOAT"),
    TensorProto.FLOAT16: (np.float16, "HALF"),
    TensorProto.DOUBLE: (np.float64, "FLOAT"),
    TensorProto.INT8: (np.int8, "INT8"),
    TensorProto.UINT8: (np.uint8, "UINT8"),
    TensorProto.INT32: (np.int32, "INT32"),
    TensorProto.INT64: (np.int64, "INT64"),
    TensorProto.BOOL: (np.bool_, "BOOL"),
}

_NP_OF_TRT = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


def np_dtype(trt_type: str) -> np.dtype[Any]:
    """The numpy dtype of a TensorRT DataType member name."""
    return np.dtype(_NP_OF_TRT[trt_type])


@dataclass(frozen=True)
class ParseProblem:
    """Why the parser refuses a model: the ErrorCode member name, the node (-1: none)."""

    code: str
    node: int
    node_name: str
    op: str
    func: str
    desc: str
    log: tuple[str, ...] = ()


@dataclass(frozen=True)
class IoTensor:
    """One network input or output as the engine sees it."""

    name: str
    is_input: bool
    onnx_type: int
    trt_type: str  # DataType member name
    shape: tuple[int, ...]  # -1 where dynamic
    data_dependent: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "is_input": self.is_input,
            "onnx_type": self.onnx_type,
            "trt_type": self.trt_type,
            "shape": list(self.shape),
            "data_dependent": self.data_dependent,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IoTensor:
        return cls(
            data["name"],
            data["is_input"],
            data["onnx_type"],
            data["trt_type"],
            tuple(data["shape"]),
            data["data_dependent"],
        )


def load_model(data: bytes, path: str | None) -> onnx.ModelProto:
    """The model with external data loaded from beside ``path``; ValueError if not ONNX."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"Failed to parse ONNX model: {exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ValueError("Failed to parse ONNX model: the model has no graph")
    if any(
        t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer
    ):  # weights beside the file
        if path is None:
            raise ValueError("the model has external weights: pass the path of the ONNX file")
        onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    return model


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return model


def _type_name(elem_type: int) -> str:
    return f"{TensorProto.DataType.Name(elem_type)} ({elem_type})"


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def find_problem(model: onnx.ModelProto, major: int) -> ParseProblem | None:
    """The first thing TensorRT's ONNX parser would stop at, or None."""
    for value in _graph_inputs(model):
        kind = value.type.WhichOneof("value")
        elem = value.type.tensor_type.elem_type if kind == "tensor_type" else -1
        if elem not in _TYPES:
            what = _type_name(elem) if elem >= 0 else f"non-tensor type {kind}"
            return ParseProblem(
                "UNSUPPORTED_GRAPH",
                -1,
                "",
                "",
                "importInput",
                f"Unsupported ONNX data type: {what} for network input '{value.name}'",
            )
    inferred = _infer(model)
    types = {
        v.name: v.type
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    newest = PARSER_MAX_OPSET[major]
    for index, node in enumerate(model.graph.node):
        where = f'While parsing node number {index} [{node.op_type} -> "{",".join(node.output)}"]:'
        since = _since_version(node, opset)
        if since > newest:
            # The real parser has no opset gate (it warns below 7 only): its importer reads an op
            # as the newest version it knows and then fails on what changed (Split-18's
            # num_outputs, ReduceMean-18's axes input...). The emulator refuses such a node.
            return ParseProblem(
                "UNSUPPORTED_NODE",
                index,
                node.name,
                node.op_type,
                "parseNode",
                f"{node.op_type} of opset {since} (the model imports opset {opset}) is newer "
                f"than this parser supports (opsets up to {newest})",
                (where,),
            )
        if node.domain not in ("", "ai.onnx") or node.op_type in UNSUPPORTED_OPS:
            return ParseProblem(
                "UNSUPPORTED_NODE",
                index,
                node.name,
                node.op_type,
                "importFallbackPluginImporter",
                _PLUGIN_NOT_FOUND,
                (
                    where,
                    f"No importer registered for op: {node.op_type}. Attempting to import as "
                    "plugin.",
                    f"Searching for plugin: {node.op_type}, plugin_version: 1, "
                    f"plugin_namespace: {node.domain}",
                ),
            )
        for name in [*node.input, *node.output]:
            value_type = types.get(name)
            if value_type is None:
                continue
            kind = value_type.WhichOneof("value")
            elem = value_type.tensor_type.elem_type if kind == "tensor_type" else -1
            if kind != "tensor_type" or elem == TensorProto.STRING:
                what = _type_name(elem) if kind == "tensor_type" else f"non-tensor type {kind}"
                return ParseProblem(
                    "UNSUPPORTED_NODE",
                    index,
                    node.name,
                    node.op_type,
                    "parseNode",
                    f"Unsupported ONNX data type: {what} for tensor '{name}'",
                    (where,),
                )
    return None


def _since_version(node: onnx.NodeProto, opset: int) -> int:
    """The opset that defined the version of ``node``'s op a model of ``opset`` uses; 0 for
    ops outside the default domain or unknown to onnx."""
    if node.domain not in ("", "ai.onnx"):
        return 0
    try:
        return int(onnx.defs.get_schema(node.op_type, opset, "").since_version)
    except onnx.defs.SchemaError:
        return 0


def _shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)


def _trt_type(elem: int, major: int) -> str:
    name = _TYPES[elem][1]
    return "INT32" if name == "INT64" and major < 10 else name


def _reachable_from_data_dependent(model: onnx.ModelProto) -> set[str]:
    tainted: set[str] = set()
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type in DATA_DEPENDENT_OPS or tainted.intersection(node.input):
            tainted.update(node.output)
    return tainted


def io_tensors(model: onnx.ModelProto, major: int) -> list[IoTensor]:
    """Inputs then outputs, with TensorRT's dtypes and -1 for dynamic dims; ValueError for an
    input of unknown rank (TensorRT needs the rank) or an output of unsupported type."""
    inferred = _infer(model)
    found = []
    for value in _graph_inputs(model):
        shape = _shape(value)
        if shape is None:
            raise ValueError(f"network input '{value.name}' has no shape (unknown rank)")
        elem = value.type.tensor_type.elem_type
        found.append(IoTensor(value.name, True, elem, _trt_type(elem, major), shape))
    tainted = _reachable_from_data_dependent(model)
    inferred_out = {v.name: v for v in inferred.graph.output}
    for value in model.graph.output:
        info = inferred_out.get(value.name, value)
        elem = info.type.tensor_type.elem_type
        if elem not in _TYPES:
            raise ValueError(f"network output '{value.name}' has type {_type_name(elem)}")
        shape = _shape(info)
        if shape is None:
            raise ValueError(f"network output '{value.name}' has no inferable rank")
        dependent = value.name in tainted and -1 in shape
        found.append(IoTensor(value.name, False, elem, _trt_type(elem, major), shape, dependent))
    return found


def make_session(model_bytes: bytes) -> Any:
    """An ONNX Runtime CPU session (one thread: tests run many engines side by side)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def has_float32(model: onnx.ModelProto) -> bool:
    """Whether any IO tensor or initializer is float32 (DLA runs FP16/INT8 only)."""
    values = [*model.graph.input, *model.graph.output]
    if any(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in values):
        return True
    return any(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)


def zero_feeds(inputs: list[IoTensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Zero-filled ONNX Runtime feeds (to learn output shapes that do not depend on data)."""
    return {
        t.name: np.zeros(shapes[t.name], dtype=helper.tensor_dtype_to_np_dtype(t.onnx_type))
        for t in inputs
    }
