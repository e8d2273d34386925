"""The ONNX Runtime backend and the backend registry, on tiny models run by real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.backends import BuildRequest, choose, get, status
from edgert.backends.base import Backend
from edgert.backends.onnxrt import KIND, OnnxRuntimeKind, isa_of, reference_session
from edgert.config import ModelConfig, Precision
from edgert.errors import BackendError, BuildError, ConfigError, InferenceError, InputError
from edgert.onnx import ModelIO, OnnxSource, io_specs, load_source

CONFIG = ModelConfig.from_dict({"dims": {"batch": [1, 2, 4]}}, default_name="tiny")


def _save(directory: Path, nodes: list[onnx.NodeProto], weights: list[np.ndarray]) -> Path:
    """Inputs a, b: float32[batch, 3]; output y: float32[batch, 2]; weights named w0, w1, ..."""
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = directory / "model.onnx"
    onnx.save_model(model, str(path))
    return path


def tiny_model(directory: Path) -> Path:
    """y = Relu((a + b) @ w0 + w1)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("MatMul", ["ab", "w0"], ["mm"]),
        helper.make_node("Add", ["mm", "w1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"]),
    ]
    weights = [rng.standard_normal((3, 2)).astype(np.float32), np.full(2, 0.1, np.float32)]
    return _save(directory, nodes, weights)


def qdq_model(directory: Path) -> Path:
    """y = DequantizeLinear(QuantizeLinear(a - b)) @ w0: a model quantized in QDQ format."""
    nodes = [
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("QuantizeLinear", ["d", "w1", "w2"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "w1", "w2"], ["dq"]),
        helper.make_node("MatMul", ["dq", "w0"], ["y"]),
    ]
    weights = [np.ones((3, 2), np.float32), np.float32(0.05), np.int8(0)]
    return _save(directory, nodes, weights)


def _source(path: Path) -> tuple[OnnxSource, ModelIO]:
    source = load_source(path)
    return source, io_specs(source, CONFIG)


def _build(path: Path, precision: Precision = "fp32") -> tuple[Backend, Path]:
    source, io = _source(path)
    out = path.parent / f"out-{precision}"
    out.mkdir()
    result = OnnxRuntimeKind().build(BuildRequest(source, io, CONFIG, precision, out))
    return KIND.load(out / result.artifact, io), out


def _feeds(batch: int = 3, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((batch, 3)).astype(np.float32) for n in "ab"}


def _plain_ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y: np.ndarray = session.run(["y"], feeds)[0]
    return y


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_model(tmp_path)


def test_build_writes_ort_artifact_and_reports_progress(tiny: Path) -> None:
    source, io = _source(tiny)
    out = tiny.parent / "out"
    out.mkdir()
    stages: list[float] = []
    request = BuildRequest(source, io, CONFIG, "fp32", out, lambda _, f: stages.append(f))
    result = OnnxRuntimeKind().build(request)
    assert result.artifact == "model.ort" and result.notes == ()
    assert result.options == {"optimization": "all", "format": "ort"}
    assert [p.name for p in out.iterdir()] == ["model.ort"]  # scratch files cleaned up
    assert stages and stages == sorted(stages) and all(0 <= f <= 1 for f in stages)


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_artifact_matches_plain_onnxruntime(tiny: Path, batch: int) -> None:
    runner, _ = _build(tiny)
    feeds = _feeds(batch)
    with runner:
        got = runner.infer(feeds)
    assert list(got) == ["y"] and got["y"].shape == (batch, 2)
    np.testing.assert_allclose(got["y"], _plain_ort(tiny, feeds), rtol=1e-6, atol=1e-6)
    assert runner.infer_count == 1 and runner.last_infer_seconds > 0


def test_fp16_artifact_keeps_float32_io_and_stays_close(tiny: Path) -> None:
    source, io = _source(tiny)
    out = tiny.parent / "out"
    out.mkdir()
    result = KIND.build(BuildRequest(source, io, CONFIG, "fp16", out))
    assert any("FP16" in note for note in result.notes)
    feeds = _feeds()
    with KIND.load(out / result.artifact, io) as runner:
        y = runner.infer(feeds)["y"]
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _plain_ort(tiny, feeds), rtol=1e-2, atol=1e-2)


def test_reference_session_runs_the_source(tiny: Path) -> None:
    source, _ = _source(tiny)
    feeds = _feeds()
    (y,) = reference_session(source).run(["y"], feeds)
    np.testing.assert_allclose(y, _plain_ort(tiny, feeds), rtol=1e-6)


def test_runner_state_is_checked(tiny: Path) -> None:
    runner, _ = _build(tiny)
    with pytest.raises(BackendError, match=r"infer\(\) before activate\(\)"):
        runner.infer(_feeds())
    runner.activate()
    with pytest.raises(BackendError, match="already active"):
        runner.activate()
    runner.deactivate()
    runner.deactivate()  # idempotent
    assert not runner.is_active
    with pytest.raises(BackendError, match=r"before activate"):
        runner.infer(_feeds())


def test_unloadable_artifact_is_an_inference_error(tmp_path: Path, tiny: Path) -> None:
    _, io = _source(tiny)
    bogus = tmp_path / "bogus.ort"
    bogus.write_bytes(b"not a model")
    runner = KIND.load(bogus, io)
    with pytest.raises(InferenceError, match="ONNX Runtime cannot load"):
        runner.activate()
    assert not runner.is_active


def _with(**changes: np.ndarray | list[float] | None) -> dict[str, object]:
    feeds: dict[str, object] = dict(_feeds())
    for name, value in changes.items():
        if value is None:
            del feeds[name]
        else:
            feeds[name] = value
    return feeds


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        (_with(b=None), r"^missing input\(s\) b; the model takes: a, b$"),
        (_with(c=np.zeros((3, 3), np.float32)), r"^unknown input\(s\) c; the model takes: a, b$"),
        (_with(b=None, c=np.zeros(1)), r"missing input\(s\) b; unknown input\(s\) c;"),
        (_with(a=np.zeros((3, 3))), "input 'a' has dtype float64, the model expects float32"),
        (_with(a=[[0.0, 0.0, 0.0]] * 3), "input 'a' must be a numpy array, got list"),
        (
            _with(b=np.zeros((2, 3), np.float32)),
            "axis 'batch' is 3 in input 'a' but 2 in input 'b'",
        ),
        (_with(a=np.zeros((3, 4), np.float32)), r"axis 1 must be 3"),
        (_with(a=np.zeros((5, 3), np.float32)), r"axis 0 \('batch'\) is 5, allowed 1..4"),
    ],
)
def test_infer_validates_feeds(tiny: Path, feeds: dict[str, np.ndarray], match: str) -> None:
    runner, _ = _build(tiny)
    with runner, pytest.raises(InputError, match=match):
        runner.infer(feeds)
    assert runner.infer_count == 0


def test_int8_needs_qdq_nodes(tiny: Path) -> None:
    with pytest.raises(BuildError, match="int8 needs a quantized ONNX"):
        _build(tiny, "int8")
    assert list((tiny.parent / "out-int8").iterdir()) == []


def test_int8_builds_a_qdq_model(tmp_path: Path) -> None:
    path = qdq_model(tmp_path)
    runner, out = _build(path, "int8")
    assert (out / "model.ort").is_file()
    feeds = _feeds()
    with runner:
        y = runner.infer(feeds)["y"]
    np.testing.assert_allclose(y, _plain_ort(path, feeds), atol=1e-6)


def test_registry() -> None:
    with pytest.raises(
        ConfigError, match="unknown backend 'nope'; known: tensorrt, onnxruntime, auto"
    ):
        get("nope")
    assert choose("auto") is KIND and get("onnxruntime") is KIND
    assert choose("onnxruntime").name == "onnxruntime"
    (entry,) = [s for s in status() if s.name == "onnxruntime"]
    assert entry.available and entry.reason is None and entry.kind is KIND


def test_kind_describes_this_machine() -> None:
    assert KIND.version() == ort.__version__
    assert KIND.device().startswith("cpu-")


@pytest.mark.parametrize(
    ("cpuinfo", "isa"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n", "avx512"),
        ("flags\t\t: fpu sse2 avx avx2 fma\nflags\t\t: fpu sse2 avx avx2 fma\n", "avx2"),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n", "neon"),
        ("flags\t\t: fpu sse2\n", ""),
        ("", ""),
    ],
)
def test_the_artifact_key_names_the_vector_extension(cpuinfo: str, isa: str) -> None:
    """ALL-level ORT artifacts hold kernels blocked for the CPU's vector width: the device in
    their key says which, so an AVX-512 build is refused on an AVX2 machine."""
    assert isa_of(cpuinfo) == isa
