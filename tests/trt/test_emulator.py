"""The TensorRT emulator itself: its names against the real bindings, and its behaviour on small
seeded ONNX models, driven by hand through host_cuda as the backend would."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgert.backends.cuda import CudaError
from tests.trt.bindings import TrtApi, api
from tests.trt.emulator import VERSIONS, make_tensorrt
from tests.trt.emulator_core import TrtEnum, no_constructor
from tests.trt.host_cuda import HostCuda

V8, V10, V11 = VERSIONS

# --------------------------------------------------------------------------------------------
# Names and parameters against the real bindings


def _public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public attributes the emulator defines on a class (not those of object/bytes/tuple)."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        owner = next((c for c in cls.__mro__ if name in vars(c)), None)
        if owner is None or owner.__module__ in ("builtins", "enum"):
            continue
        yield name, vars(owner)[name]


def _check_callable(real: TrtApi, qual: str, member: str | None, fn: Any) -> list[str]:
    """Every way the emulated function can be called (positionally, or by keyword) must bind
    an overload of the real one."""
    params = list(inspect.signature(fn).parameters.values())
    if member is not None or qual in real.classes():  # methods and constructors take self
        params = params[1:]
    names = [p.name for p in params]
    required = sum(1 for p in params if p.default is inspect.Parameter.empty)
    overloads = real.overloads(qual, member)
    where = f"{qual}.{member}" if member else qual
    bad = []
    for n in range(required, len(params) + 1):
        if not any(o.binds(n, []) for o in overloads):
            bad.append(f"{where}: {n} positional arguments bind no real overload {names}")
        if not any(o.binds(0, names[:n]) for o in overloads):
            bad.append(f"{where}: keywords {names[:n]} bind no real overload")
    return bad


def _check_class(real: TrtApi, qual: str, cls: type) -> list[str]:
    if not real.is_class(qual):
        return [f"class {qual} is not in the real bindings"]
    bad = []
    if isinstance(cls, type) and issubclass(cls, TrtEnum):
        return [
            f"{qual}.{m} is not in the real bindings"
            for m in cls.__members__
            if not real.has(qual, m)
        ]
    # The constructor that runs: a class without its own is built by object.__init__().
    init = next(vars(c)["__init__"] for c in cls.__mro__ if "__init__" in vars(c))
    if init is no_constructor:
        if real.signatures(qual):
            bad.append(f"{qual} has a constructor in the real bindings")
    elif init is object.__init__:
        if not any(o.binds(0, []) for o in real.overloads(qual)):
            bad.append(f"{qual}() is constructible here but not in the real bindings")
    else:
        bad += _check_callable(real, qual, None, init)
    for name, value in _public_members(cls):
        where = f"{qual}.{name}"
        if not real.has(qual, name):
            bad.append(f"{where} is not in the real bindings")
        elif isinstance(value, type):
            bad += _check_class(real, f"{qual}.{name}", value)
        elif isinstance(value, property):
            member = real.member(qual, name)
            assert member is not None
            if member.kind != "property":
                bad.append(f"{where} is a {member.kind} in the real bindings, not a property")
            elif value.fset is not None and not member.writable:
                bad.append(f"{where} is read-only in the real bindings")
        elif callable(value) and not isinstance(value, TrtEnum):
            bad += _check_callable(real, qual, name, value)
    return bad


@pytest.mark.parametrize("version", VERSIONS)
def test_every_emulated_name_and_parameter_is_real(version: str) -> None:
    real, trt = api(version), make_tensorrt(version)
    bad = []
    for name, value in vars(trt).items():
        if name.startswith("_"):
            continue
        if not real.has(name):
            bad.append(f"trt.{name} is not in the real bindings")
        elif isinstance(value, type):
            bad += _check_class(real, name, value)
        elif callable(value) and not isinstance(value, TrtEnum):
            bad += _check_callable(real, name, None, value)
    assert trt.__version__ == version == real.version
    assert not bad, "\n".join(bad)


# Names whose presence differs between versions: the emulator must follow the real bindings
# both ways (the test above only proves it adds nothing).
VERSION_SENSITIVE = [
    ("BuilderFlag", "FP16"),
    ("BuilderFlag", "INT8"),
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
    ("DataType", "INT64"),
    ("ParserError", "node_name"),
    ("Builder", "platform_has_fast_fp16"),
    ("IBuilderConfig", "progress_monitor"),
    ("ICudaEngine", "device_memory_size"),
    ("ICudaEngine", "device_memory_size_v2"),
    ("IProgressMonitor", None),
    ("ExecutionContextAllocationStrategy", None),
    ("", "int64"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("cls", "member"), VERSION_SENSITIVE)
def test_version_sensitive_names_follow_the_real_bindings(
    version: str, cls: str, member: str | None
) -> None:
    real, trt = api(version), make_tensorrt(version)
    if cls == "":
        emulated = hasattr(trt, member or "")
        expected = real.has(member or "")
    else:
        emulated = hasattr(trt, cls) and (member is None or hasattr(getattr(trt, cls), member))
        expected = real.has(cls, member)
    assert emulated == expected, f"{cls}.{member}: emulated {emulated}, real {expected}"


# --------------------------------------------------------------------------------------------
# Models (seeded) and a hand-driven backend


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: Any = (), **kw: Any):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", 17), *kw.get("extra_opsets", [])]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def dense(seed: int = 0) -> onnx.ModelProto:
    """y = relu(x @ W + b), x: [N, 8] with a dynamic batch."""
    rng = np.random.default_rng(seed)
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 4], rng.normal(size=32).astype(np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], rng.normal(size=4).astype(np.float32))
    return _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("Add", ["h", "b"], ["a"], name="bias"),
            helper.make_node("Relu", ["a"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w, b],
    )


def scaled(factor: float) -> onnx.ModelProto:
    """y = x * factor, x: [2, 3] static."""
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [factor])
    return _model(
        [helper.make_node("Mul", ["x", "k"], ["y"], name="scale")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [k],
    )


def nonzero() -> onnx.ModelProto:
    """The indices of positive entries of x [3, 4]: a data-dependent [2, -1] int64 output."""
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    return _model(
        [
            helper.make_node("Greater", ["x", "zero"], ["mask"], name="positive"),
            helper.make_node("NonZero", ["mask"], ["idx"], name="where"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "K"])],
        [zero],
    )


def forest() -> onnx.ModelProto:
    """A one-split TreeEnsembleClassifier (ONNX-ML), as sklearn exports."""
    tree = helper.make_node(
        "TreeEnsembleClassifier",
        ["x"],
        ["label", "proba"],
        domain="ai.onnx.ml",
        name="forest",
        nodes_treeids=[0, 0, 0],
        nodes_nodeids=[0, 1, 2],
        nodes_featureids=[0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
        nodes_values=[0.5, 0.0, 0.0],
        nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 0, 0],
        class_treeids=[0, 0],
        class_nodeids=[1, 2],
        class_ids=[0, 1],
        class_weights=[1.0, 1.0],
        classlabels_int64s=[0, 1],
    )
    return _model(
        [tree],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("proba", TensorProto.FLOAT, ["N", 2]),
        ],
        extra_opsets=[helper.make_opsetid("ai.onnx.ml", 3)],
    )


def argmax() -> onnx.ModelProto:
    """An int64 input added to an int64 output: x [4] int64 -> y = x + 1 (int64)."""
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    return _model(
        [helper.make_node("Add", ["x", "one"], ["y"], name="inc")],
        [helper.make_tensor_value_info("x", TensorProto.INT64, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [4])],
        [one],
    )


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)  # type: ignore[no-any-return]


class Emu:
    """One emulated TensorRT with a capturing logger: build, load, run."""

    def __init__(self, version: str, **kwargs: Any) -> None:
        self.trt: ModuleType = make_tensorrt(version, **kwargs)
        self.major = int(version.split(".")[0])
        trt = self.trt

        class Log(trt.ILogger):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.lines: list[tuple[Any, str]] = []

            def log(self, severity: Any, msg: str) -> None:
                self.lines.append((severity, msg))

        self.log = Log()

    def errors(self) -> str:
        sev = self.trt.ILogger.Severity
        return "\n".join(m for s, m in self.log.lines if s in (sev.ERROR, sev.INTERNAL_ERROR))

    def network(self, model: onnx.ModelProto, explicit: bool = True) -> tuple[Any, Any, bool]:
        trt = self.trt
        builder = trt.Builder(self.log)
        explicit_batch = self.major < 10 and explicit
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if explicit_batch else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.log)
        self.parser = parser
        return builder, network, parser.parse(model.SerializeToString())

    def build(
        self, model: onnx.ModelProto, profile: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        builder, network, ok = self.network(model)
        assert ok, [str(self.parser.get_error(i)) for i in range(self.parser.num_errors)]
        config = builder.create_builder_config()
        for flag in options.get("flags", ()):
            config.set_flag(getattr(self.trt.BuilderFlag, flag))
        if "hardware" in options:
            level = self.trt.HardwareCompatibilityLevel[options["hardware"]]
            config.hardware_compatibility_level = level
        if "monitor" in options:
            config.progress_monitor = options["monitor"]
        if profile:
            p = builder.create_optimization_profile()
            for name, shapes in profile.items():
                p.set_shape(name, *shapes)
            assert config.add_optimization_profile(p) == 0
        return builder.build_serialized_network(network, config)

    def load(self, plan: Any, host_code: bool = False) -> Any:
        runtime = self.trt.Runtime(self.log)
        runtime.engine_host_code_allowed = host_code
        return runtime.deserialize_cuda_engine(plan)


def _host(array: np.ndarray, cuda: HostCuda, stream: Any) -> Any:
    buf = cuda.alloc_device(array.nbytes)
    cuda.copy_to_device(buf, np.ascontiguousarray(array), stream)
    return buf


def run(engine: Any, feeds: dict[str, np.ndarray], cuda: HostCuda) -> dict[str, np.ndarray]:
    """Shapes, addresses, execute, copy back: the backend's steps for static-size outputs."""
    context = engine.create_execution_context()
    stream = cuda.stream()
    buffers = {}
    for name, array in feeds.items():
        assert context.set_input_shape(name, array.shape)
        buffers[name] = _host(array, cuda, stream)
        assert context.set_tensor_address(name, buffers[name].ptr)
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if name in feeds:
            continue
        shape = tuple(context.get_tensor_shape(name))
        dtype = make_np(engine.get_tensor_dtype(name))
        outputs[name] = np.empty(shape, dtype)
        buffers[name] = cuda.alloc_device(outputs[name].nbytes)
        assert context.set_tensor_address(name, buffers[name].ptr)
    assert context.execute_async_v3(stream.handle)
    for name, array in outputs.items():
        cuda.copy_to_host(array, buffers[name], stream)
    stream.synchronize()
    return outputs


def make_np(dtype: Any) -> Any:
    return {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64}[
        dtype.name
    ]


@pytest.fixture
def cuda() -> Iterator[HostCuda]:
    with HostCuda() as memory:
        yield memory


# --------------------------------------------------------------------------------------------
# Compile, load, infer


@pytest.mark.parametrize("version", VERSIONS)
def test_dynamic_batch_matches_onnx_runtime(version: str, cuda: HostCuda) -> None:
    emu, model = Emu(version), dense(seed=1)
    plan = emu.build(model, {"x": [(1, 8), (4, 8), (8, 8)]})
    assert plan is not None, emu.errors()
    engine = emu.load(bytes(plan))
    assert engine is not None, emu.errors()
    assert tuple(engine.get_tensor_shape("x")) == (-1, 8)
    assert [tuple(d) for d in engine.get_tensor_profile_shape("x", 0)] == [(1, 8), (4, 8), (8, 8)]
    rng = np.random.default_rng(7)
    for batch in (1, 3, 8):
        x = rng.normal(size=(batch, 8)).astype(np.float32)
        got = run(engine, {"x": x}, cuda)["y"]
        np.testing.assert_allclose(got, reference(model, {"x": x})[0], rtol=1e-6)
    context = engine.create_execution_context()
    assert not context.set_input_shape("x", (9, 8))  # outside the profile
    assert "does not satisfy any optimization profile" in emu.errors()


def test_a_dynamic_input_without_a_profile_fails_the_build() -> None:
    emu = Emu(V10)
    assert emu.build(dense()) is None
    assert "no optimization profile has been defined" in emu.errors()


def test_execute_needs_input_shapes_and_addresses(cuda: HostCuda) -> None:
    emu = Emu(V10)
    engine = emu.load(emu.build(dense(), {"x": [(1, 8), (2, 8), (4, 8)]}))
    context, stream = engine.create_execution_context(), cuda.stream()
    assert context.infer_shapes() == ["x"]
    assert context.execute_async_v3(stream.handle) is False
    assert "input shape not specified for x" in emu.errors()
    assert context.set_input_shape("x", (2, 8))
    x = _host(np.ones((2, 8), np.float32), cuda, stream)
    assert context.set_tensor_address("x", x.ptr)
    assert context.execute_async_v3(stream.handle) is False  # y has no address
    assert "Address is not set for output tensor y" in emu.errors()


def test_a_freed_host_or_short_buffer_is_refused(cuda: HostCuda) -> None:
    emu = Emu(V8)
    engine = emu.load(emu.build(scaled(2.0)))
    context, stream = engine.create_execution_context(), cuda.stream()
    x, y = _host(np.ones((2, 3), np.float32), cuda, stream), cuda.alloc_device(24)
    stale = y.ptr
    y.free()
    for address, why in [
        (stale, "not inside any live device allocation"),
        (cuda.alloc_host(24).ptr, "is host memory"),
        (cuda.alloc_device(20).ptr, "needs 24 bytes"),
    ]:
        assert context.set_tensor_address("x", x.ptr)
        assert context.set_tensor_address("y", address)
        assert context.execute_async_v3(stream.handle) is False
        assert why in emu.errors()


def test_work_on_a_stream_runs_at_synchronize(cuda: HostCuda) -> None:
    emu = Emu(V10)
    engine = emu.load(emu.build(scaled(3.0)))
    context, stream = engine.create_execution_context(), cuda.stream()
    x, y = _host(np.ones((2, 3), np.float32), cuda, stream), cuda.alloc_device(24)
    pinned = cuda.alloc_host(24)
    out = pinned.view(np.float32, (2, 3))
    out[:] = -1
    context.set_tensor_address("x", x.ptr)
    context.set_tensor_address("y", y.ptr)
    assert context.execute_async_v3(stream.handle)
    cuda.copy_to_host(out, y, stream)
    assert (out == -1).all()  # nothing ran yet: a backend that skips synchronize() reads junk
    stream.synchronize()
    assert (out == 3).all()


# --------------------------------------------------------------------------------------------
# Parser and builder failures


@pytest.mark.parametrize("version", VERSIONS)
def test_an_onnx_ml_node_fails_parsing_with_the_node_named(version: str) -> None:
    emu = Emu(version)
    _, _, ok = emu.network(forest())
    assert not ok and emu.parser.num_errors == 1
    error = emu.parser.get_error(0)
    assert error.node() == 0
    assert error.code() == emu.trt.ErrorCode.UNSUPPORTED_NODE
    assert "Plugin not found" in error.desc()
    assert "TreeEnsembleClassifier" in emu.errors()
    if emu.major >= 10:
        assert error.node_name() == "forest"
    else:
        assert not hasattr(error, "node_name")


def test_a_string_tensor_fails_parsing_at_its_node() -> None:
    emu = Emu(V10)
    model = _model(
        [
            helper.make_node("Cast", ["x"], ["text"], to=TensorProto.STRING, name="to_text"),
            helper.make_node("Cast", ["text"], ["y"], to=TensorProto.FLOAT, name="back"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    _, _, ok = emu.network(model)
    assert not ok
    error = emu.parser.get_error(0)
    assert (error.node(), error.node_name()) == (0, "to_text")
    assert "STRING" in error.desc()


def test_trt8_needs_explicit_batch() -> None:
    emu = Emu(V8)
    _, network, ok = emu.network(dense(), explicit=False)
    assert not ok and network.has_implicit_batch_dimension
    assert "explicit batch" in emu.parser.get_error(0).desc()
    assert emu.errors()


def test_dla_on_a_machine_without_dla_fails_the_build() -> None:
    emu = Emu(V8)
    builder, network, _ = emu.network(scaled(1.0))
    config = builder.create_builder_config()
    config.default_device_type = emu.trt.DeviceType.DLA
    config.DLA_core = 0
    config.set_flag(emu.trt.BuilderFlag.FP16)
    assert builder.num_DLA_cores == 0
    assert builder.build_serialized_network(network, config) is None
    assert "this platform has 0 DLA cores" in emu.errors()


def test_progress_monitor_phases_and_cancel() -> None:
    emu = Emu(V10)
    trt = emu.trt

    class Monitor(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self, stop_after: int) -> None:
            trt.IProgressMonitor.__init__(self)
            self.events: list[tuple[Any, ...]] = []
            self.stop_after = stop_after

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.events.append(("start", phase_name, parent_phase, num_steps))

        def step_complete(self, phase_name: str, step: int) -> bool:
            self.events.append(("step", phase_name, step))
            return len(self.events) < self.stop_after

        def phase_finish(self, phase_name: str) -> None:
            self.events.append(("finish", phase_name))

    done = Monitor(stop_after=1000)
    assert emu.build(scaled(1.0), monitor=done) is not None
    assert done.events[0] == ("start", "Building engine", None, 3)
    assert done.events[-1] == ("finish", "Building engine")
    cancel = Monitor(stop_after=3)
    assert emu.build(scaled(1.0), monitor=cancel) is None
    assert "cancelled" in emu.errors()


# --------------------------------------------------------------------------------------------
# Precision, int64, output allocators


@pytest.mark.parametrize("version", [V8, V10])
def test_fp16_rounding_breaks_parity_of_a_sensitive_model(version: str, cuda: HostCuda) -> None:
    model = scaled(1000.0)  # 50..100 * 1000 overflows float16 (max 65504)
    x = np.random.default_rng(3).uniform(50, 100, size=(2, 3)).astype(np.float32)
    expected = reference(model, {"x": x})[0]
    fp32, fp16 = Emu(version), Emu(version)
    exact = run(fp32.load(fp32.build(model)), {"x": x}, cuda)["y"]
    rounded = run(fp16.load(fp16.build(model, flags=["FP16"])), {"x": x}, cuda)["y"]
    np.testing.assert_allclose(exact, expected, rtol=1e-6)
    assert not np.allclose(rounded, expected, rtol=1e-2)
    assert np.isinf(rounded).any()


def test_trt11_has_no_fp16_flag_and_follows_the_onnx_types() -> None:
    trt = make_tensorrt(V11)
    assert not hasattr(trt.BuilderFlag, "FP16")
    assert not hasattr(trt.Builder, "platform_has_fast_fp16")


@pytest.mark.parametrize(("version", "engine_type"), [(V8, "INT32"), (V10, "INT64")])
def test_int64_io(version: str, engine_type: str, cuda: HostCuda) -> None:
    emu = Emu(version)
    engine = emu.load(emu.build(argmax()))
    assert engine.get_tensor_dtype("x").name == engine_type
    x = np.array([1, 2, -3, 40], dtype=make_np(engine.get_tensor_dtype("x")))
    got = run(engine, {"x": x}, cuda)["y"]
    assert got.dtype == make_np(engine.get_tensor_dtype("y"))
    assert got.tolist() == [2, 3, -2, 41]


@pytest.mark.parametrize(("version", "hook"), [(V8, "sync"), (V10, "async"), (V10, "sync")])
def test_nonzero_uses_the_output_allocator(version: str, hook: str, cuda: HostCuda) -> None:
    emu = Emu(version)
    trt = emu.trt
    engine = emu.load(emu.build(nonzero()))
    assert tuple(engine.get_tensor_shape("idx")) == (2, -1)
    calls: list[tuple[Any, ...]] = []
    held: dict[str, Any] = {}

    class Allocator(trt.IOutputAllocator):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.shape: tuple[int, ...] | None = None

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int):
            calls.append(("sync", tensor_name, size))
            held[tensor_name] = cuda.alloc_device(size)
            return held[tensor_name].ptr

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shape = tuple(shape)

    class AsyncAllocator(Allocator):
        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):  # type: ignore[no-untyped-def]
            calls.append(("async", tensor_name, size))
            held[tensor_name] = cuda.alloc_device(size)
            return held[tensor_name].ptr

    allocator = AsyncAllocator() if hook == "async" else Allocator()
    x = np.array([[1, -1, 2, 0], [0, 0, 3, 0], [-5, 4, 0, 0]], np.float32)
    context, stream = engine.create_execution_context(), cuda.stream()
    context.set_tensor_address("x", _host(x, cuda, stream).ptr)
    assert tuple(context.get_tensor_shape("idx")) == (2, -1)
    assert context.set_output_allocator("idx", allocator)
    assert context.execute_async_v3(stream.handle), emu.errors()
    expected = np.stack(np.nonzero(x > 0))
    assert allocator.shape == expected.shape == tuple(context.get_tensor_shape("idx"))
    itemsize = 4 if emu.major < 10 else 8
    assert calls == [(hook, "idx", expected.size * itemsize)]
    got = np.empty(expected.shape, make_np(engine.get_tensor_dtype("idx")))
    cuda.copy_to_host(got, held["idx"], stream)
    stream.synchronize()
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------------------------
# Plans on other machines


def test_corrupt_and_foreign_plans_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    emu = Emu(V10, sm="sm_87")
    plan = bytes(emu.build(scaled(1.0)))
    assert emu.load(b"not a plan at all") is None
    assert "magicTag" in emu.errors()
    broken = bytearray(plan)
    broken[len(broken) // 2] ^= 0xFF
    assert emu.load(bytes(broken)) is None
    assert "corrupt plan" in emu.errors()
    assert Emu(V11).load(plan) is None  # another version, not version-compatible
    monkeypatch.setenv("EMULATOR_SM", "sm_86")
    other = Emu(V10)
    assert other.load(plan) is None
    assert "expecting compute 8.7 got compute 8.6" in other.errors()


def test_compatible_plans_load_where_tensorrt_allows() -> None:
    ampere = Emu(V10, sm="sm_86")
    portable = ampere.build(scaled(1.0), hardware="AMPERE_PLUS")
    assert portable is not None, ampere.errors()
    ampere.trt._emulator.sm = "sm_89"
    assert ampere.load(portable) is not None
    ampere.trt._emulator.sm = "sm_75"
    assert ampere.load(portable) is None
    jetson = Emu(V10, sm="sm_87")  # hardware compatibility is for discrete GPUs only
    assert jetson.build(scaled(1.0), hardware="AMPERE_PLUS") is None
    old = Emu(V8)
    vc = bytes(old.build(scaled(1.0), flags=["VERSION_COMPATIBLE"]))
    newer = Emu(V10)
    assert newer.load(vc) is None  # its lean runtime needs host code allowed
    assert newer.load(vc, host_code=True) is not None


# --------------------------------------------------------------------------------------------
# Binding-level strictness


def test_pybind_strictness() -> None:
    trt = make_tensorrt(V10)

    class Forgetful(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:  # does not call ILogger.__init__
            pass

    with pytest.raises(TypeError, match="must be called when overriding"):
        trt.Builder(Forgetful())
    emu = Emu(V10)
    config = emu.trt.Builder(emu.log).create_builder_config()
    with pytest.raises(TypeError):
        config.set_flag(0)
    with pytest.raises(TypeError):
        config.set_flag(make_tensorrt(V10).BuilderFlag.FP16)  # another module's enum
    assert trt.DataType.FLOAT != 0 and int(trt.DataType.HALF) == 1
    with pytest.raises(TypeError, match="No constructor"):
        trt.ICudaEngine()
    plan = emu.build(scaled(1.0))
    assert bytes(plan)[:4] and plan.nbytes == len(bytes(plan))
    with pytest.raises(TypeError):
        len(plan)


def test_a_raising_logger_is_swallowed(capsys: pytest.CaptureFixture[str]) -> None:
    trt = make_tensorrt(V8)

    class Broken(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            raise ValueError("boom")

    assert trt.Runtime(Broken()).deserialize_cuda_engine(b"junk") is None
    assert "Exception caught in log(): boom" in capsys.readouterr().err


def test_host_cuda_memory_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMULATOR_SM", raising=False)
    with HostCuda(total_memory=1 << 20) as memory:
        assert memory.mem_info() == (1 << 20, 1 << 20)
        buf = memory.alloc_device(1 << 19)
        assert memory.mem_info()[0] == 1 << 19
        with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
            memory.alloc_device(1 << 20)
        buf.free()
        assert memory.mem_info()[0] == 1 << 20
        assert memory.info.sm == "sm_87" and memory.info.name == "emulated"
