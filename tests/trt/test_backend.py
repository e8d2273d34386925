"""The TensorRT backend end to end against the emulator: compile → load → infer → serve.

``tests/trt/site`` goes first on ``PYTHONPATH`` (and ``sys.path``), so ``import tensorrt`` gets
the emulator of ``$EMULATED_TRT`` and ``cuda.bindings.runtime`` host memory; edgert's own code is
unchanged, and its build child process imports the same. Outputs are compared with ONNX Runtime
running the source model directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from onnx import helper

from edgert import ModelDir, compile_model, open_model
from edgert.compile import CompileOptions
from edgert.errors import (
    BuildError,
    IncompatibleArtifact,
    InputError,
    ModelLoadError,
    ParityError,
)
from edgert.onnx import io_specs, load_source, with_io_dims
from tests.corpus import make_model, tensor, write
from tests.trt.emulation import REPO, emulate, purge


def _model(tmp_path: Path, name: str = "occupancy") -> ModelDir:
    shutil.copytree(
        REPO / "engines" / name, tmp_path / name, ignore=shutil.ignore_patterns("build")
    )
    return ModelDir(tmp_path / name)


def _reference(model: ModelDir, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime on the source, its IO dims as edgert reads them (a raw dim_value 0 would be
    a real zero for ONNX Runtime)."""
    source = load_source(model.source_path)
    prepared = with_io_dims(source.model, io_specs(source, model.config))
    session = ort.InferenceSession(prepared.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def test_compile_load_infer_equals_onnxruntime(emulated: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    result = compile_model(model, CompileOptions(backend="tensorrt"))
    key = result.artifact.manifest.key
    assert (key.backend, key.backend_version, key.device) == ("tensorrt", emulated, "sm_87")
    assert result.artifact.file.name == "engine.plan" and result.parity["passed"]
    loaded = open_model(model, backend="tensorrt")
    try:
        rng = np.random.default_rng(0)
        for batch in (1, 3, 64):  # min, between, max of the profile
            x = rng.standard_normal((batch, 4)).astype(np.float32)
            (expected,) = _reference(model, {"readings": x})
            got = loaded.infer({"readings": x})["probabilities"]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(InputError, match="outside the engine's profile"):
            loaded.infer({"readings": np.zeros((65, 4), np.float32)}, check=False)
    finally:
        loaded.close()


def test_auto_prefers_tensorrt_and_list_says_why_not_elsewhere(
    emulated: str, tmp_path: Path
) -> None:
    model = _model(tmp_path)
    result = compile_model(model)  # backend auto
    assert result.artifact.manifest.key.backend == "tensorrt"
    assert result.artifact.manifest.notes[0] == "backend auto chose tensorrt"
    listing = subprocess.run(
        [sys.executable, "-m", "edgert", "list", "--repository", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert listing.returncode == 0, listing.stderr
    assert f"tensorrt {emulated}" in listing.stdout
    assert "backend tensorrt: available" in listing.stdout


def _list(repository: Path) -> str:
    listing = subprocess.run(
        [sys.executable, "-m", "edgert", "list", "--repository", str(repository)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert listing.returncode == 0, listing.stderr
    return listing.stdout


def test_list_shows_a_build_in_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`edgert list` from another shell while `edgert compile` builds the engine: the build's
    backend and how far it got, then the artifact alone once it is done."""
    emulate(monkeypatch, "10.3.0")
    monkeypatch.setenv("EMULATOR_STEP_DELAY", "0.5")  # 8 steps: about 4 s of building
    model = _model(tmp_path)
    build = subprocess.Popen(
        [sys.executable, "-m", "edgert", "compile", str(model.path), "--backend", "tensorrt"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 60
        while "building" not in (listed := _list(tmp_path)):
            assert build.poll() is None, "the build ended before list saw it"
            assert time.monotonic() < end, listed
        row = next(line for line in listed.splitlines() if "building" in line)
        assert "occupancy" in row and "tensorrt" in row and "%" in row, row
        assert build.wait(timeout=60) == 0
    finally:
        build.kill()
    listed = _list(tmp_path)
    assert "building" not in listed and "tensorrt 10.3.0" in listed, listed


def test_stateful_model_with_scalar_and_int64_inputs(emulated: str, tmp_path: Path) -> None:
    """silero VAD: an int64 scalar `sr` (int32 inside TensorRT 8.6), a carried state, If nodes."""
    model = _model(tmp_path, "silero_vad")
    compile_model(model, CompileOptions(backend="tensorrt"))
    loaded = open_model(model, backend="tensorrt")
    try:
        rng = np.random.default_rng(1)
        feeds = {
            "input": rng.uniform(-1, 1, (2, 576)).astype(np.float32),
            "state": np.zeros((2, 2, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
        expected = _reference(model, feeds)
        got = loaded.infer(feeds)
        np.testing.assert_allclose(got["output"], expected[0], atol=1e-5)
        np.testing.assert_allclose(got["stateN"], expected[1], atol=1e-5)
        assert got["output"].dtype == np.float32
    finally:
        loaded.close()


def test_fp16_is_rounded_so_parity_can_fail(emulated: str, tmp_path: Path) -> None:
    """Values beyond float16's range: the FP16 engine diverges and nothing is kept."""
    x = tensor("x", np.float32, ["batch", 4])
    y = tensor("y", np.float32, ["batch", 4])
    scale = helper.make_tensor("scale", onnx.TensorProto.FLOAT, [4], [7.0e4] * 4)
    node = helper.make_node("Mul", ["x", "scale"], ["y"])
    dims = "[dims]\nbatch = { min = 1, opt = 2, max = 4 }\n"
    write(tmp_path / "big", make_model([node], [x], [y], [scale]), dims)
    model = ModelDir(tmp_path / "big")
    compile_model(model, CompileOptions(backend="tensorrt", precision="fp32"))
    with pytest.raises(ParityError, match="'y'"):
        compile_model(model, CompileOptions(backend="tensorrt", precision="fp16"))
    kept = [p.name for p in model.build_dir.iterdir()]
    assert kept == [p for p in kept if p.startswith("tensorrt-fp32-")]


def test_data_dependent_output_uses_an_output_allocator(emulated: str, tmp_path: Path) -> None:
    """NonZero: the output's size is known only after the run (int64, int32 inside 8.6)."""
    x = tensor("x", np.float32, [8])
    idx = tensor("idx", np.int64, [1, None])
    node = helper.make_node("NonZero", ["x"], ["idx"])
    write(
        tmp_path / "nz",
        make_model([node], [x], [idx]),
        '[dims]\n"idx.1" = { min = 0, opt = 4, max = 8 }\n',
    )
    model = ModelDir(tmp_path / "nz")
    compile_model(model, CompileOptions(backend="tensorrt"))
    loaded = open_model(model, backend="tensorrt")
    try:
        for values in ([0, 1, 0, 2, 0, 0, 3, 0], [1] * 8, [0] * 8):
            arr = np.array(values, np.float32)
            got = loaded.infer({"x": arr})["idx"]
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got.ravel(), np.nonzero(arr)[0])
    finally:
        loaded.close()


def test_parser_error_names_the_node(emulated: str, tmp_path: Path) -> None:
    x = tensor("x", np.float32, [1, 4])
    y = tensor("y", np.float32, [1, 4])
    node = helper.make_node("Hardmax", ["x"], ["h"], name="the_odd_one")
    node2 = helper.make_node("Identity", ["h"], ["y"])
    # An op from a domain TensorRT does not know (here: a made-up one) fails the parser.
    node.domain = "com.example.custom"
    model_proto = make_model([node, node2], [x], [y])
    model_proto.opset_import.append(helper.make_opsetid("com.example.custom", 1))
    write(tmp_path / "odd", model_proto)
    model = ModelDir(tmp_path / "odd")
    with pytest.raises(Exception) as info:
        compile_model(model, CompileOptions(backend="tensorrt"))
    assert "the_odd_one" in str(info.value) or "Hardmax" in str(info.value)
    assert not model.build_dir.exists() or not any(model.build_dir.iterdir())


def test_dla_on_a_machine_without_one_is_a_build_error(emulated: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    toml = model.path / "model.toml"
    toml.write_text(toml.read_text() + "\n[tensorrt]\ndla_core = 0\n")
    with pytest.raises(BuildError, match="DLA core 0 asked for; this device has 0"):
        compile_model(ModelDir(model.path), CompileOptions(backend="tensorrt", precision="fp16"))
    with pytest.raises(BuildError, match="DLA runs FP16 or INT8 only"):
        compile_model(ModelDir(model.path), CompileOptions(backend="tensorrt", precision="fp32"))


def test_int8_without_qdq_is_refused(emulated: str, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="QuantizeLinear/DequantizeLinear"):
        compile_model(_model(tmp_path), CompileOptions(backend="tensorrt", precision="int8"))


def test_engine_for_another_gpu_is_refused_with_both_keys(
    emulated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path)
    compile_model(model, CompileOptions(backend="tensorrt"))
    monkeypatch.setenv("EMULATOR_SM", "sm_86")
    purge()
    with pytest.raises(IncompatibleArtifact) as info:
        open_model(model, backend="tensorrt")
    message = info.value.message
    assert "built for device sm_87, this machine has sm_86" in message
    assert f"edgert compile {model.path} --backend tensorrt" in message


def test_corrupt_plan_is_refused_with_tensorrts_log(emulated: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    artifact = compile_model(model, CompileOptions(backend="tensorrt")).artifact
    plan = artifact.file.read_bytes()
    artifact.file.write_bytes(plan[: len(plan) // 2])
    from edgert.backends import get

    runner = get("tensorrt").load(artifact.file, artifact.manifest.io)
    with pytest.raises(ModelLoadError, match=r"could not deserialize the engine: .+"):
        runner.activate()
    # Through open_model the manifest's sha256 catches it first, and says so.
    with pytest.raises(IncompatibleArtifact, match="sha256"):
        open_model(model, backend="tensorrt")


def test_engine_that_does_not_fit_in_gpu_memory_is_refused(
    emulated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path)
    compile_model(model, CompileOptions(backend="tensorrt"))
    monkeypatch.setenv("EMULATOR_GPU_MEMORY", str(1024))
    purge()
    with pytest.raises(ModelLoadError, match=r"needs \d+ MiB of GPU memory, 0 MiB of 0 MiB"):
        open_model(model, backend="tensorrt")


def test_buffers_are_reused_and_released(emulated: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    compile_model(model, CompileOptions(backend="tensorrt"))
    loaded = open_model(model, backend="tensorrt")
    runner = loaded.runner
    buffers = runner._buffers  # type: ignore[attr-defined]
    before = buffers.allocations
    for batch in (1, 64, 7, 2):
        loaded.infer({"readings": np.ones((batch, 4), np.float32)})
    assert buffers.allocations == before  # sized at the profile max: no allocation per call
    from cuda.bindings import runtime as fake

    live = len(fake._buffers)
    loaded.close()
    assert len(fake._buffers) < live and runner._buffers is None  # type: ignore[attr-defined]


def test_build_child_killed_is_a_clear_error(
    emulated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An out-of-memory kill of the build process: a BuildError, nothing kept, no hang."""
    monkeypatch.setenv("EMULATOR_KILL_BUILD", "1")
    model = _model(tmp_path)
    with pytest.raises(BuildError, match="killed by signal 9"):
        compile_model(model, CompileOptions(backend="tensorrt"))
    assert not model.build_dir.exists() or not any(model.build_dir.iterdir())


@pytest.mark.parametrize(
    "case", ["int64_io", "float16_io", "multi_io", "constant_input", "dim_zero"]
)
def test_corpus_models_equal_onnxruntime(
    emulated: str, case: str, corpus: Callable[[str], Path]
) -> None:
    """Every IO dtype and shape form of the corpus runs on each TensorRT version."""
    model = ModelDir(corpus(case).parent)
    result = compile_model(model, CompileOptions(backend="tensorrt"))
    assert result.parity["passed"]
    loaded = open_model(model, backend="tensorrt")
    try:
        rng = np.random.default_rng(3)
        feeds: dict[str, np.ndarray] = {}
        for spec in loaded.io.inputs:
            if spec.name in loaded.constants:
                continue
            shape = [d if isinstance(d, int) else 3 for d in spec.shape]
            if spec.dtype.numpy.kind in "iu":
                feeds[spec.name] = rng.integers(0, 8, shape).astype(spec.dtype.numpy)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype.numpy)
        got = loaded.infer(feeds)
        expected = _reference(model, {**feeds, **loaded.constants})
        for spec, want in zip(loaded.io.outputs, expected, strict=True):
            assert got[spec.name].dtype == want.dtype
            np.testing.assert_allclose(got[spec.name], want, rtol=1e-3, atol=1e-3)
    finally:
        loaded.close()


def test_int64_outside_int32_is_refused_on_86_only(
    emulated: str, corpus: Callable[[str], Path]
) -> None:
    model = ModelDir(corpus("int64_io").parent)
    compile_model(model, CompileOptions(backend="tensorrt"))
    loaded = open_model(model, backend="tensorrt")
    try:
        ids = np.array([[1, 2**40]], np.int64)
        (engine_ids,) = [t for t in loaded.runner._tensors if t.name == "ids"]  # type: ignore[attr-defined]
        if emulated.startswith("8."):
            assert engine_ids.dtype == np.int32  # 8.6 has no INT64: cast on the host
            with pytest.raises(InputError, match=r"outside int32; TensorRT 8\.6 runs int64"):
                loaded.infer({"ids": ids}, check=False)
        else:
            assert engine_ids.dtype == np.int64
    finally:
        loaded.close()


def test_timing_cache_is_kept_per_version_and_gpu(emulated: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    compile_model(model, CompileOptions(backend="tensorrt"))
    cache = tmp_path / ".cache" / f"timing-trt{emulated}-sm_87.cache"
    assert cache.is_file() and cache.stat().st_size > 0


def test_changed_source_makes_the_engine_stale(emulated: str, tmp_path: Path) -> None:
    model = _model(tmp_path)
    compile_model(model, CompileOptions(backend="tensorrt"))
    proto = onnx.load(str(model.source_path))
    proto.doc_string = "retrained"
    onnx.save(proto, str(model.source_path))
    with pytest.raises(IncompatibleArtifact, match=r"changed since it was built \(stale\)"):
        open_model(model, backend="tensorrt")


def test_int8_from_qdq_nodes_builds_on_every_version(emulated: str, tmp_path: Path) -> None:
    x = tensor("x", np.float32, ["batch", 4])
    y = tensor("y", np.float32, ["batch", 3])
    rng = np.random.default_rng(5)
    inits = [
        onnx.numpy_helper.from_array(np.float32(0.05), "scale"),
        onnx.numpy_helper.from_array(np.int8(0), "zero"),
        onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]),
        helper.make_node("MatMul", ["xd", "w"], ["y"]),
    ]
    dims = "[dims]\nbatch = { min = 1, opt = 2, max = 8 }\n"
    write(tmp_path / "q", make_model(nodes, [x], [y], inits), dims)
    model = ModelDir(tmp_path / "q")
    result = compile_model(model, CompileOptions(backend="tensorrt", precision="int8"))
    assert result.parity["passed"] and result.artifact.manifest.key.precision == "int8"


def test_progress_comes_from_the_builders_monitor_where_it_has_one(
    emulated: str, tmp_path: Path
) -> None:
    seen: list[tuple[str, float]] = []
    compile_model(
        _model(tmp_path),
        CompileOptions(backend="tensorrt"),
        lambda stage, fraction: seen.append((stage, fraction)),
    )
    from_monitor = [f for stage, f in seen if stage == "Building engine"]
    if emulated.startswith("8."):
        assert from_monitor == []  # no IProgressMonitor in 8.6
    else:
        assert len(from_monitor) >= 3 and from_monitor == sorted(from_monitor)
        # The child phases' steps move it within each of the 3 top-level steps.
        assert len(set(from_monitor)) > 4, from_monitor
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
