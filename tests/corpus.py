"""Small ONNX models of the kinds users bring, written by seeded generators.

Each case is a function ``case(directory) -> Path`` that writes ``directory/model.onnx`` (and a
``model.toml`` beside it when the case needs dynamic-axis bounds or constants) and returns the ONNX
path. Weights come from seeded numpy generators, so every run writes the same bytes.

Together the cases back edgert's promise: any valid ONNX file compiles with, at most, a model.toml
giving bounds for its dynamic axes. Dynamic dims the exporter left unnamed ('?', -1, 0, missing)
are named ``<input>.<axis>`` by edgert, so their bounds go under that name (``"x.0"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = [
    "CASES",
    "DIM_BOUNDS",
    "EMBED",
    "HIDDEN",
    "IN",
    "IR_VERSION",
    "OPSET",
    "OUT",
    "SAMPLE_RATE",
    "VOCAB",
    "make_model",
    "mlp",
    "tensor",
    "weight",
    "write",
]

OPSET = 17
IR_VERSION = 8
IN, HIDDEN, OUT = 4, 8, 3
VOCAB, EMBED = 16, 8
SAMPLE_RATE = 16000
DIM_BOUNDS = (1, 4, 32)  # min, opt, max written for every dynamic axis in the corpus

Dims = Sequence[int | str | None]  # None: a dim with neither dim_value nor dim_param
Case = Callable[[Path], Path]


def tensor(name: str, dtype: type | str, shape: Dims | None) -> onnx.ValueInfoProto:
    """A graph input/output declaration; ``shape`` None means unknown rank."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, shape)


def weight(
    name: str, shape: Sequence[int], seed: int, dtype: type = np.float32
) -> onnx.TensorProto:
    """A seeded initializer, scaled so activations of the corpus models stay near 1."""
    values = np.random.default_rng(seed).standard_normal(shape) / np.sqrt(shape[0])
    return numpy_helper.from_array(values.astype(dtype), name)


def mlp(
    x: str, y: str, dtype: type = np.float32, seed: int = 0, prefix: str = ""
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and weights of ``y = Gemm(Relu(Gemm(x)))``, IN -> HIDDEN -> OUT features."""
    p = prefix
    nodes = [
        helper.make_node("Gemm", [x, f"{p}w1", f"{p}b1"], [f"{p}gemm1"]),
        helper.make_node("Relu", [f"{p}gemm1"], [f"{p}relu1"]),
        helper.make_node("Gemm", [f"{p}relu1", f"{p}w2", f"{p}b2"], [y]),
    ]
    weights = [
        weight(f"{p}w1", (IN, HIDDEN), seed, dtype),
        weight(f"{p}b1", (HIDDEN,), seed + 1, dtype),
        weight(f"{p}w2", (HIDDEN, OUT), seed + 2, dtype),
        weight(f"{p}b2", (OUT,), seed + 3, dtype),
    ]
    return nodes, weights


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "corpus", list(inputs), list(outputs), list(initializers)
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version,
        producer_name="edgert-tests",
    )


def write(directory: Path, model: onnx.ModelProto, toml: str | None = None, **save: object) -> Path:
    """Save ``model`` as ``directory/model.onnx`` (and ``toml`` as model.toml); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save_model(model, str(path), **save)  # type: ignore[arg-type]
    if toml is not None:
        (directory / "model.toml").write_text(toml.strip() + "\n")
    return path


def _bounds(*names: str) -> str:
    lo, opt, hi = DIM_BOUNDS
    lines = [f"{name} = {{ min = {lo}, opt = {opt}, max = {hi} }}" for name in names]
    return "[dims]\n" + "\n".join(lines) + "\n"


def _mlp_model(batch: int | str | None, dtype: type = np.float32) -> onnx.ModelProto:
    nodes, weights = mlp("x", "y", dtype)
    return make_model(
        nodes, [tensor("x", dtype, [batch, IN])], [tensor("y", dtype, [batch, OUT])], weights
    )


def _dynamic_mlp(directory: Path, batch: int | str | None, toml_key: str) -> Path:
    return write(directory, _mlp_model(batch), _bounds(toml_key))


def fixed_mlp(directory: Path) -> Path:
    """float32 [1, 4] -> Gemm/Relu/Gemm -> [1, 3]; fixed shapes, so no model.toml at all."""
    return write(directory, _mlp_model(1))


def dim_symbol(directory: Path) -> Path:
    """The batch axis is the symbol "batch"; model.toml bounds it by that name."""
    return _dynamic_mlp(directory, "batch", "batch")


def dim_question(directory: Path) -> Path:
    """dim_param "?" (as some exporters write): edgert names it "x.0"."""
    return _dynamic_mlp(directory, "?", '"x.0"')


def dim_minus_one(directory: Path) -> Path:
    """dim_value -1: edgert names it "x.0"."""
    return _dynamic_mlp(directory, -1, '"x.0"')


def dim_zero(directory: Path) -> Path:
    """dim_value 0: edgert treats it as dynamic and names it "x.0"."""
    return _dynamic_mlp(directory, 0, '"x.0"')


def dim_missing(directory: Path) -> Path:
    """A dim with neither dim_value nor dim_param: edgert names it "x.0"."""
    return _dynamic_mlp(directory, None, '"x.0"')


def int64_io(directory: Path) -> Path:
    """int64 token ids -> Gather/ReduceMean -> float32 "pooled", and ArgMax -> int64 "best"."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("ArgMax", ["pooled"], ["best"], axis=1, keepdims=0),
    ]
    model = make_model(
        nodes,
        [tensor("ids", np.int64, ["batch", "seq"])],
        [tensor("pooled", np.float32, ["batch", EMBED]), tensor("best", np.int64, ["batch"])],
        [weight("table", (VOCAB, EMBED), seed=10)],
    )
    toml = _bounds("batch", "seq") + f"\n[inputs.ids]\nrange = [0, {VOCAB - 1}]\n"
    return write(directory, model, toml)


def float16_io(directory: Path) -> Path:
    """The MLP with float16 weights, input and output."""
    return write(directory, _mlp_model(1, np.float16))


def multi_io(directory: Path) -> Path:
    """a, b (float32, shared "batch"), k (int32) -> Softmax(MLP((a + b) @ mix)) "probs", k + 1."""
    nodes, weights = mlp("mixed", "logits", seed=20)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("MatMul", ["ab", "mix"], ["mixed"]),
        *nodes,
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("Add", ["k", "one"], ["count"]),
    ]
    weights += [weight("mix", (IN, IN), seed=25), numpy_helper.from_array(np.int32(1), "one")]
    model = make_model(
        nodes,
        [
            tensor("a", np.float32, ["batch", IN]),
            tensor("b", np.float32, ["batch", IN]),
            tensor("k", np.int32, ["batch"]),
        ],
        [tensor("probs", np.float32, ["batch", OUT]), tensor("count", np.int32, ["batch"])],
        weights,
    )
    return write(directory, model, _bounds("batch"))


def external_data(directory: Path) -> Path:
    """The fixed MLP with every weight in one external file, model.onnx.data."""
    return write(
        directory,
        _mlp_model(1),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )


def constant_input(directory: Path) -> Path:
    """An If on ``sr == 16000`` (sr: int64 scalar input) picks one of two MLPs; sr is constant."""
    branches = []
    for prefix, seed in (("then_", 30), ("else_", 40)):
        nodes, weights = mlp("x", f"{prefix}y", seed=seed, prefix=prefix)
        # Branch weights live in the branch graph; x comes from the outer scope.
        branch = helper.make_graph(
            nodes, f"{prefix}branch", [], [tensor(f"{prefix}y", np.float32, [1, OUT])], weights
        )
        branches.append(branch)
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["is_rate"]),
        helper.make_node(
            "If", ["is_rate"], ["y"], then_branch=branches[0], else_branch=branches[1]
        ),
    ]
    model = make_model(
        nodes,
        [tensor("x", np.float32, [1, IN]), tensor("sr", np.int64, [])],
        [tensor("y", np.float32, [1, OUT])],
        [numpy_helper.from_array(np.array(SAMPLE_RATE, np.int64), "rate")],
    )
    toml = f'[inputs.sr]\nkind = "constant"\nvalue = {SAMPLE_RATE}\n'
    return write(directory, model, toml)


CASES: dict[str, Case] = {
    case.__name__: case
    for case in (
        fixed_mlp,
        dim_symbol,
        dim_question,
        dim_minus_one,
        dim_zero,
        dim_missing,
        int64_io,
        float16_io,
        multi_io,
        external_data,
        constant_input,
    )
}
