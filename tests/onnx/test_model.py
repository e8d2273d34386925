"""edgert.onnx against the corpus: loading, IO specs, dim bounds, hashing, FP16 conversion."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgert.config import ModelConfig, Tolerance
from edgert.daemon.batcher import BatchPlan
from edgert.errors import (
    ConfigError,
    EdgertError,
    ModelCheckError,
    ModelLoadError,
    UnboundedDimError,
)
from edgert.onnx import (
    ModelIO,
    OnnxSource,
    io_specs,
    load_source,
    source_sha256,
    to_fp16,
    with_io_dims,
)
from edgert.spec import DimRange, concrete_shape
from tests.corpus import CASES, DIM_BOUNDS, IN, OUT, SAMPLE_RATE, VOCAB, make_model, mlp, tensor

Corpus = Callable[[str], Path]
Build = Callable[[Path, Corpus], Path]  # writes an unusable file under tmp_path
BOUNDS = DimRange(*DIM_BOUNDS)
ANY = "*"  # in EXPECTED: a dynamic dim whose name onnx picks (shape inference's unk__N)
_MLP_IO = (["x: float32[x.0, 4]"], ["y: float32[y.0, 3]"], {"x.0": BOUNDS})

# case -> (inputs, outputs, dims), specs as TensorSpec.describe() writes them.
EXPECTED: dict[str, tuple[list[str], list[str], dict[str, DimRange]]] = {
    "fixed_mlp": (["x: float32[1, 4]"], ["y: float32[1, 3]"], {}),
    "dim_symbol": (["x: float32[batch, 4]"], ["y: float32[batch, 3]"], {"batch": BOUNDS}),
    "dim_question": _MLP_IO,
    "dim_minus_one": _MLP_IO,
    "dim_zero": _MLP_IO,
    "dim_missing": (["x: float32[x.0, 4]"], [f"y: float32[{ANY}, 3]"], {"x.0": BOUNDS}),
    "int64_io": (
        ["ids: int64[batch, seq]"],
        ["pooled: float32[batch, 8]", "best: int64[batch]"],
        {"batch": BOUNDS, "seq": BOUNDS},
    ),
    "float16_io": (["x: float16[1, 4]"], ["y: float16[1, 3]"], {}),
    "multi_io": (
        ["a: float32[batch, 4]", "b: float32[batch, 4]", "k: int32[batch]"],
        ["probs: float32[batch, 3]", "count: int32[batch]"],
        {"batch": BOUNDS},
    ),
    "external_data": (["x: float32[1, 4]"], ["y: float32[1, 3]"], {}),
    "constant_input": (["x: float32[1, 4]", "sr: int64[]"], ["y: float32[1, 3]"], {}),
}
# ONNX Runtime takes dim_value 0 literally (a fixed size 0): the raw file rejects any real input.
RUNNABLE = [name for name in CASES if name != "dim_zero"]


def _load(path: Path) -> tuple[OnnxSource, ModelConfig, ModelIO]:
    source = load_source(path)
    config = ModelConfig.load(path.parent)
    return source, config, io_specs(source, config)


def _matches(got: str, want: str) -> bool:
    if ANY not in want:
        return got == want
    head, tail = want.split(ANY)
    return got.startswith(head) and got.endswith(tail) and "," not in got[len(head) : -len(tail)]


def _feeds(io: ModelIO, config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs at the opt shape: floats ~N(0, 1), ints within model.toml's range."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in io.inputs:
        shape = concrete_shape(spec.shape, io.dims)
        if spec.name in config.constants():
            feeds[spec.name] = np.full(shape, config.constants()[spec.name], spec.dtype.numpy)
        elif spec.dtype.is_float:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype.numpy)
        else:
            declared = config.inputs.get(spec.name)
            low, high = declared.range if declared and declared.range else (0, 9)
            ints = rng.integers(int(low), int(high), shape, endpoint=True)
            feeds[spec.name] = ints.astype(spec.dtype.numpy)
    return feeds


def _run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# --- the corpus loads, and io_specs reads it as documented ---------------------------------------


def test_every_case_has_expectations() -> None:
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_case_loads_with_expected_specs(corpus: Corpus, name: str) -> None:
    source, _, io = _load(corpus(name))
    inputs, outputs, dims = EXPECTED[name]
    assert [s.describe() for s in io.inputs] == inputs
    got = [s.describe() for s in io.outputs]
    assert len(got) == len(outputs) and all(map(_matches, got, outputs)), got
    assert dict(io.dims) == dims
    assert ModelIO.from_dict(io.to_dict()) == io
    assert len(source.sha256) == 64


def test_model_toml_extras_reach_the_config(corpus: Corpus) -> None:
    ids = ModelConfig.load(corpus("int64_io").parent).inputs["ids"]
    assert ids.range == (0.0, float(VOCAB - 1))
    assert ModelConfig.load(corpus("constant_input").parent).constants() == {"sr": SAMPLE_RATE}
    assert not (corpus("fixed_mlp").parent / "model.toml").exists()


@pytest.mark.parametrize("name", RUNNABLE)
def test_case_runs_in_onnxruntime_at_its_opt_shape(corpus: Corpus, name: str) -> None:
    _, config, io = _load(corpus(name))
    outputs = _run(corpus(name), _feeds(io, config))
    for spec, array in zip(io.outputs, outputs, strict=True):
        assert array.dtype == spec.dtype.numpy
        fixed = [
            d if isinstance(d, int) else n for d, n in zip(spec.shape, array.shape, strict=True)
        ]
        assert list(array.shape) == fixed


def test_dim_zero_needs_the_named_dims_edgert_writes(corpus: Corpus) -> None:
    # ONNX Runtime reads dim_value 0 as a fixed size 0, so the raw file cannot run at batch 4;
    # with_io_dims (applied before every build) names the axis and it runs.
    source, config, io = _load(corpus("dim_zero"))
    feeds = _feeds(io, config)
    with pytest.raises(Exception, match="dimensions"):
        _run(corpus("dim_zero"), feeds)
    session = ort.InferenceSession(with_io_dims(source.model, io).SerializeToString())
    assert session.run(None, feeds)[0].shape[0] == feeds["x"].shape[0]


def test_constant_input_selects_the_branch(corpus: Corpus) -> None:
    _, config, io = _load(corpus("constant_input"))
    feeds = _feeds(io, config)
    [at_rate] = _run(corpus("constant_input"), feeds)
    [other] = _run(corpus("constant_input"), {**feeds, "sr": np.array(8000, np.int64)})
    assert not np.allclose(at_rate, other)


# --- dynamic dims without bounds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "unbounded"),
    [
        ("dim_symbol", [("x", 0, "batch")]),
        ("dim_question", [("x", 0, "x.0")]),
        ("dim_minus_one", [("x", 0, "x.0")]),
        ("dim_zero", [("x", 0, "x.0")]),
        ("dim_missing", [("x", 0, "x.0")]),
        ("int64_io", [("ids", 0, "batch"), ("ids", 1, "seq")]),
        ("multi_io", [("a", 0, "batch")]),
    ],
)
def test_unbounded_dim_names_input_axis_and_the_line_to_add(
    corpus: Corpus, name: str, unbounded: list[tuple[str, int, str]]
) -> None:
    path = corpus(name)
    source = load_source(path)
    lines: list[str] = []
    for input_name, axis, dim in unbounded:
        (path.parent / "model.toml").write_text("[dims]\n" + "\n".join(lines))
        with pytest.raises(UnboundedDimError) as exc:
            io_specs(source, ModelConfig.load(path.parent))
        message = _one_line(exc)
        assert f"input '{input_name}' axis {axis} ('{dim}')" in message
        header, line = message.split("add to model.toml: ")[1].split(" ", 1)
        assert header == "[dims]" and line.startswith(dim if dim.isidentifier() else f'"{dim}"')
        lines.append(line + "\n")  # the suggestion, pasted under [dims], must be valid TOML
    (path.parent / "model.toml").write_text("[dims]\n" + "\n".join(lines))
    io = io_specs(source, ModelConfig.load(path.parent))
    assert set(io.dims) == {dim for _, _, dim in unbounded}


# --- files that are not usable ONNX ---------------------------------------------------------------


def _simple(opset: int = 17, broken: bool = False) -> onnx.ModelProto:
    nodes, weights = mlp("x", "y")
    if broken:  # the Relu reads a tensor nothing produces
        nodes[1] = helper.make_node("Relu", ["nowhere"], ["relu1"])
    return make_model(
        nodes,
        [tensor("x", np.float32, [1, IN])],
        [tensor("y", np.float32, [1, OUT])],
        weights,
        opset,
    )


def _bytes(data: bytes) -> Build:
    def write(tmp: Path, corpus: Corpus) -> Path:
        (tmp / "bad.onnx").write_bytes(data)
        return tmp / "bad.onnx"

    return write


def _truncated(tmp: Path, corpus: Corpus) -> Path:
    data = corpus("fixed_mlp").read_bytes()
    return _bytes(data[: len(data) // 2])(tmp, corpus)


def _model(model: onnx.ModelProto) -> Build:
    def write(tmp: Path, corpus: Corpus) -> Path:
        onnx.save_model(model, str(tmp / "bad.onnx"))
        return tmp / "bad.onnx"

    return write


def _external(change: Callable[[Path], object]) -> Build:
    def write(tmp: Path, corpus: Corpus) -> Path:
        path = corpus("external_data")
        change(path.parent / "model.onnx.data")
        return path

    return write


NEWEST = onnx.defs.onnx_opset_version()
BAD_FILES: dict[str, tuple[Build, type[EdgertError], str]] = {
    "missing": (lambda tmp, corpus: tmp / "absent.onnx", ModelLoadError, "no such ONNX file"),
    "directory": (lambda tmp, corpus: tmp, ModelLoadError, "no such ONNX file"),
    "truncated": (_truncated, ModelLoadError, "truncated or not ONNX"),
    "random": (_bytes(np.random.default_rng(7).bytes(512)), ModelLoadError, "not ONNX"),
    "text": (_bytes(b"name = 'not a model'\n" * 20), ModelLoadError, "not ONNX"),
    "empty": (_bytes(b""), ModelLoadError, "empty graph"),
    "newer_opset": (
        _model(_simple(opset=NEWEST + 1)),
        ModelCheckError,
        f"opset {NEWEST + 1} is newer than this onnx {onnx.__version__} supports (up to {NEWEST})",
    ),
    "checker": (_model(_simple(broken=True)), ModelCheckError, "onnx.checker rejects it"),
    "no_external_data": (
        _external(Path.unlink),
        ModelLoadError,
        "external data file(s) missing: ",
    ),
    "short_external_data": (
        _external(lambda p: p.write_bytes(p.read_bytes()[:10])),
        ModelLoadError,
        "external data unreadable",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_unusable_file_raises_one_clear_line(tmp_path: Path, corpus: Corpus, case: str) -> None:
    build, error, fragment = BAD_FILES[case]
    path = build(tmp_path, corpus)
    with pytest.raises(error) as exc:
        load_source(path)
    message = _one_line(exc)
    assert str(path) in message and fragment in message


def test_missing_external_data_names_the_file(corpus: Corpus) -> None:
    path = corpus("external_data")
    (path.parent / "model.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match=r"missing: .*model\.onnx\.data$"):
        load_source(path)


# --- model.toml against the model -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        pytest.param('shape = [1, 4, "c"]', "of rank 3; the model's is [1, 4], rank 2", id="rank"),
        pytest.param("shape = [1, 5]", "axis 1 as 5, but the model fixes it at 4", id="size"),
        pytest.param('shape = ["n", 4]', "axis 0 as 'n', but the model fixes it at 1", id="name"),
    ],
)
def test_shape_override_contradicting_the_model(corpus: Corpus, toml: str, fragment: str) -> None:
    path = corpus("fixed_mlp")
    (path.parent / "model.toml").write_text(f"[dims]\nn = 4\n[inputs.x]\n{toml}\n")
    with pytest.raises(ConfigError) as exc:
        _load(path)
    assert "input 'x'" in _one_line(exc) and fragment in str(exc.value)


def test_model_toml_naming_an_unknown_input(corpus: Corpus) -> None:
    path = corpus("multi_io")
    (path.parent / "model.toml").write_text("[dims]\nbatch = 2\n[inputs.c]\nrange = [0, 1]\n")
    with pytest.raises(ConfigError) as exc:
        _load(path)
    assert _one_line(exc).endswith("input(s) c that the model does not have; it has: a, b, k")


@pytest.mark.parametrize(
    ("toml", "shape", "dims"),
    [
        ('[dims]\nbatch = [1, 2, 8]\n[inputs.x]\nshape = ["batch", 4]', ("batch", 4), {"batch"}),
        ("[inputs.x]\nshape = [2, 4]", (2, 4), set()),
    ],
)
def test_shape_override_names_or_fixes_an_unnamed_dim(
    corpus: Corpus, toml: str, shape: tuple[object, ...], dims: set[str]
) -> None:
    path = corpus("dim_question")
    (path.parent / "model.toml").write_text(toml + "\n")
    _, _, io = _load(path)
    assert io.input("x").shape == shape and set(io.dims) == dims


def _converter_style(tmp_path: Path) -> Path:
    """A softmax whose output names its batch axis apart from the input's, as skl2onnx and
    tf2onnx export them ('unk__7')."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["unk__7", 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("toml", "shape", "max_batch"),
    [
        ("", ("unk__7", 4), 1),  # unrelated names: not batched
        ('[outputs.y]\nshape = ["batch", 4]', ("batch", 4), 8),
    ],
)
def test_output_shape_override_names_the_batch_axis(
    tmp_path: Path, toml: str, shape: tuple[object, ...], max_batch: int
) -> None:
    path = _converter_style(tmp_path)
    (tmp_path / "model.toml").write_text("[dims]\nbatch = [1, 2, 8]\n" + toml + "\n")
    _, _, io = _load(path)
    assert io.outputs[0].shape == shape
    assert BatchPlan.for_model(io, {}).max_batch == max_batch


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[outputs.z]\nshape = ["batch", 4]', "output(s) z that the model does not have"),
        ('[outputs.y]\nshape = ["batch"]', "output 'y' shape ['batch'] of rank 1"),
        ('[outputs.y]\nshape = ["batch", 5]', "output 'y' axis 1 as 5, but the model fixes it"),
        ("[outputs.y]\nshape = [true]", "[outputs.y] shape: expected a list of sizes and dim"),
    ],
)
def test_bad_output_shape_override(tmp_path: Path, toml: str, fragment: str) -> None:
    path = _converter_style(tmp_path)
    (tmp_path / "model.toml").write_text("[dims]\nbatch = [1, 2, 8]\n" + toml + "\n")
    with pytest.raises(ConfigError) as exc:
        _load(path)
    assert fragment in str(exc.value)


# --- what a source is made of ---------------------------------------------------------------------


def test_ops_and_opset_include_subgraphs(corpus: Corpus) -> None:
    fixed = load_source(corpus("fixed_mlp"))
    assert (fixed.opset, fixed.opsets) == (17, {"ai.onnx": 17})
    assert fixed.ops_used() == Counter({"Gemm": 2, "Relu": 1})
    branches = load_source(corpus("constant_input")).ops_used()
    assert branches == Counter({"Equal": 1, "If": 1, "Gemm": 4, "Relu": 2})


def test_ops_of_another_domain_are_qualified(tmp_path: Path) -> None:
    node = helper.make_node("FusedGemm", ["x", "w1", "b1"], ["y"], domain="com.microsoft")
    _, weights = mlp("x", "y")
    model = make_model(
        [node], [tensor("x", np.float32, [1, IN])], [tensor("y", np.float32, [1, 8])], weights[:2]
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    source = load_source(tmp_path / "model.onnx")
    assert source.ops_used() == Counter({"com.microsoft::FusedGemm": 1})
    assert source.opset == 17 and source.opsets["com.microsoft"] == 1


def test_sha256_is_the_file_hash_and_the_corpus_is_deterministic(corpus: Corpus) -> None:
    path = corpus("fixed_mlp")
    assert load_source(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    again = CASES["fixed_mlp"](path.parent.parent / "again")
    assert again.read_bytes() == path.read_bytes()


def test_sha256_covers_external_data(corpus: Corpus) -> None:
    path = corpus("external_data")
    data = path.parent / "model.onnx.data"
    source = load_source(path)
    graph_only = onnx.load(str(path), load_external_data=False)
    assert source.sha256 == source_sha256(path, graph_only) != source_sha256(path)
    original = data.read_bytes()
    data.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    changed = load_source(path)
    assert changed.sha256 != source.sha256
    assert source_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    data.write_bytes(original)
    assert load_source(path).sha256 == source.sha256


# --- FP16 conversion ------------------------------------------------------------------------------


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    values = [*graph.input, *graph.output, *graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    return types | {t.name: t.data_type for t in graph.initializer}


def _io_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    values = [*model.graph.input, *model.graph.output]
    return [(v.name, v.type.tensor_type.elem_type) for v in values]


def _all_nodes(graph: onnx.GraphProto) -> list[tuple[onnx.GraphProto, onnx.NodeProto]]:
    found = []
    for node in graph.node:
        found.append((graph, node))
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                found += _all_nodes(sub)
    return found


@pytest.mark.parametrize("name", RUNNABLE)
def test_fp16_keeps_io_types_and_stays_close(corpus: Corpus, name: str) -> None:
    source, config, io = _load(corpus(name))
    before = source.model.SerializeToString()
    converted = to_fp16(source.model)
    assert source.model.SerializeToString() == before  # the source is not modified
    assert _io_types(converted) == _io_types(source.model)
    onnx.checker.check_model(converted, full_check=True)
    feeds = _feeds(io, config, seed=1)
    for want, got in zip(_run(source.model, feeds), _run(converted, feeds), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.max(np.abs(got.astype(np.float64) - want), initial=0) <= 1e-2


@pytest.mark.parametrize("name", ["fixed_mlp", "multi_io", "external_data", "constant_input"])
def test_fp16_converts_gemm_and_matmul_weights(corpus: Corpus, name: str) -> None:
    converted = to_fp16(load_source(corpus(name)).model)
    checked = 0
    for graph, node in _all_nodes(converted.graph):
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        weights = {t.name: t.data_type for t in graph.initializer}
        assert [weights[n] for n in node.input[1:]] == [TensorProto.FLOAT16] * (len(node.input) - 1)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize(("name", "op"), [("multi_io", "Softmax"), ("int64_io", "ReduceMean")])
def test_fp16_keeps_overflow_prone_ops_in_fp32(corpus: Corpus, name: str, op: str) -> None:
    converted = to_fp16(load_source(corpus(name)).model)
    types = _types(converted)
    [node] = [n for n in converted.graph.node if n.op_type == op]
    assert {types[n] for n in (*node.input, *node.output)} == {TensorProto.FLOAT}
    assert TensorProto.FLOAT16 in types.values()


def test_fp16_of_an_fp16_model_is_a_no_op(corpus: Corpus) -> None:
    source = load_source(corpus("float16_io"))
    assert to_fp16(source.model).SerializeToString() == source.model.SerializeToString()


def test_fp16_can_exceed_fp32_tolerance_so_parity_has_something_to_catch(corpus: Corpus) -> None:
    source = load_source(corpus("fixed_mlp"))
    converted = to_fp16(source.model)
    # Large inputs of alternating sign cancel in the dot products, so FP16's rounding of the
    # weights (~5e-4 relative) becomes a far larger relative error in the result.
    x = np.array([[1000.25, -999.75, 500.125, 3.0]], np.float32)
    [want], [got] = _run(source.model, {"x": x}), _run(converted, {"x": x})
    fp32 = Tolerance.for_precision("fp32")
    assert not np.allclose(got, want, atol=fp32.atol, rtol=fp32.rtol)
    assert np.max(np.abs(got - want)) > 1e-2
