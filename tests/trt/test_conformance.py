"""The TensorRT conformance check: real bindings per version, and the compat module against them.

The first group proves the introspection is real (each fact could come out the other way); the
second proves the checker catches planted mistakes; the last checks edgert's own compat module.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from tests.trt.bindings import VERSIONS, Overload, Param, TrtApi, api, parse_doc, split_top_level
from tests.trt.conformance import Violation, check, check_file, version_classes

COMPAT = Path(__file__).resolve().parents[2] / "edgert" / "backends" / "trt_compat.py"
V8, V10, V11 = VERSIONS

# --------------------------------------------------------------------------------------------
# The bindings

FACTS = [
    # (version, class, member, exists)
    (V8, "IExecutionContext", "execute_async_v2", True),
    (V8, "Builder", "build_engine", True),
    (V8, "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", True),
    (V8, "BuilderFlag", "FP16", True),
    (V8, "IProgressMonitor", None, False),
    (V8, "ParserError", "node_name", False),
    (V8, "DataType", "INT64", False),
    (V8, "OnnxParser", "supports_model_v2", False),
    (V8, "IOutputAllocator", "reallocate_output_async", False),
    (V10, "IExecutionContext", "execute_async_v2", False),
    (V10, "Builder", "build_engine", False),
    (V10, "IExecutionContext", "execute_async_v3", True),
    (V10, "IProgressMonitor", None, True),
    (V10, "DataType", "INT64", True),
    (V10, "ParserError", "node_name", True),
    (V10, "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", True),
    (V10, "ICudaEngine", "num_bindings", False),
    (V10, "IOutputAllocator", "reallocate_output_async", True),
    (V11, "BuilderFlag", "FP16", False),
    (V11, "BuilderFlag", "INT8", False),
    (V11, "Builder", "platform_has_fast_fp16", False),
    (V11, "ICudaEngine", "device_memory_size", False),
    (V11, "ICudaEngine", "device_memory_size_v2", True),
    (V11, "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", False),
    (V11, "NetworkDefinitionCreationFlag", "STRONGLY_TYPED", True),
    (V11, "OnnxParser", "supports_model", False),
    (V11, "OnnxParser", "supports_model_v2", True),
    (V11, "IInt8EntropyCalibrator2", None, False),
]


@pytest.mark.parametrize(("version", "cls", "member", "exists"), FACTS)
def test_bindings_facts(version: str, cls: str, member: str | None, exists: bool) -> None:
    assert api(version).has(cls, member) is exists


def test_each_version_is_its_real_wheel(trt_api: TrtApi) -> None:
    assert trt_api.data["version"] == trt_api.version
    assert trt_api.data["wheel"].endswith(".whl")
    assert f"-{trt_api.version}-" in trt_api.data["wheel"]
    # What every supported version has (the named-tensor API edgert is written against).
    for cls, member in [
        ("ICudaEngine", "num_io_tensors"),
        ("ICudaEngine", "get_tensor_name"),
        ("IExecutionContext", "set_input_shape"),
        ("IExecutionContext", "set_tensor_address"),
        ("IExecutionContext", "execute_async_v3"),
        ("Runtime", "deserialize_cuda_engine"),
        ("MemoryPoolType", "WORKSPACE"),
    ]:
        assert trt_api.has(cls, member), (cls, member)


def test_signatures_are_parsed_from_pybind11(trt_api: TrtApi) -> None:
    assert trt_api.signatures("IExecutionContext", "execute_async_v3") == [
        [Param("stream_handle", False, annotation=_int(trt_api))]
    ]
    (network,) = trt_api.overloads("Builder", "create_network")
    assert [p.name for p in network.params] == ["flags"] and network.params[0].has_default
    assert network.returns == "INetworkDefinition"
    assert trt_api.signatures("Builder") == [
        [Param("logger", False, annotation="tensorrt.ILogger")]
    ]
    assert trt_api.signatures("ICudaEngine") == []  # no constructor: engines come from Runtime
    assert trt_api.enum_members("ILogger.Severity") == [
        "INTERNAL_ERROR",
        "ERROR",
        "WARNING",
        "INFO",
        "VERBOSE",
    ]


def _int(trt_api: TrtApi) -> str:
    # pybind11 3 (the 11.x bindings) writes int parameters as typing.SupportsInt.
    return "typing.SupportsInt" if trt_api.version == V11 else "int"


def test_members_follow_pybind11_bases(trt_api: TrtApi) -> None:
    assert trt_api.bases("IActivationLayer") == ["ILayer"]
    assert "name" not in trt_api.data["classes"]["IActivationLayer"]["members"]
    assert trt_api.has("IActivationLayer", "name")
    assert "name" in trt_api.members("IActivationLayer")
    assert trt_api.bases("Logger") == ["ILogger"]
    assert trt_api.has("Logger", "log") and trt_api.has("Logger.Severity", "ERROR")


def test_output_allocator_hooks_come_from_the_bindings() -> None:
    # 8.6 binds the hooks; 10+ only name them in the class docstring (and the trampoline).
    assert api(V8).member("IOutputAllocator", "reallocate_output").kind == "method"  # type: ignore[union-attr]
    for version in (V10, V11):
        hook = api(version).member("IOutputAllocator", "reallocate_output_async")
        assert hook is not None and hook.kind == "hook"
        assert [p.name for p in hook.overloads[0].params] == [
            "tensor_name",
            "memory",
            "size",
            "alignment",
            "stream",
        ]


def test_pybind11_docstring_parsing() -> None:
    doc = textwrap.dedent(
        """\
        f(*args, **kwargs)
        Overloaded function.

        1. f(self: tensorrt.X, a: int, b: tensorrt.DataType = <DataType.FLOAT: 0>) -> tensorrt.Y

        Text.

        2. f(self: tensorrt.X, c: Dict[str, List[int]], *, d: int = 2) -> List[tensorrt.Y]
        """
    )
    first, second = parse_doc(doc, "f", drop_self=True)
    assert [(p["name"], p["has_default"]) for p in first["params"]] == [("a", False), ("b", True)]
    assert first["returns"] == "Y" and second["returns"] is None
    assert [(p["name"], p["kind"]) for p in second["params"]] == [
        ("c", "positional"),
        ("d", "keyword_only"),
    ]
    assert split_top_level("a: X = <E.A: 0>, b: List[Tuple[int, int]] = [1, 2]") == [
        "a: X = <E.A: 0>",
        "b: List[Tuple[int, int]] = [1, 2]",
    ]
    two = Overload((Param("a", False), Param("b", True)), None, "")
    assert two.binds(1, []) and two.binds(0, ["a", "b"]) and two.binds(2, [])
    assert not two.binds(3, []) and not two.binds(0, []) and not two.binds(1, ["a"])


# --------------------------------------------------------------------------------------------
# The checker, on planted mistakes

HEADER = "from __future__ import annotations\n\nimport tensorrt as trt\n"
MARK = "# <-"


def _source(body: str, header: str = HEADER) -> str:
    return header + textwrap.dedent(body)


def _marked(source: str) -> list[int]:
    return [i for i, line in enumerate(source.splitlines(), 1) if MARK in line]


def _by_version(violations: list[Violation]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {v: [] for v in VERSIONS}
    for violation in violations:
        found[violation.version].append(violation.line)
    return found


VERSION_CLASSES = """
    class Trt8:
        TRT_VERSION = "8.6.1"

        def run(self, context: trt.IExecutionContext, stream: int) -> None:
            context.execute_async_v2([], stream)

    class Trt10(Trt8):
        TRT_VERSION = "10.3.0"

        def run(self, context: trt.IExecutionContext, stream: int) -> None:
            context.execute_async_v3(stream)

        def launch(self, context: trt.IExecutionContext, stream: int) -> None:
            context.execute_async_v2([], stream)  # <-

    class Trt11(Trt10):
        TRT_VERSION = "11.4.0.106"
"""


def test_removed_method_in_a_version_branch_is_caught() -> None:
    source = _source(VERSION_CLASSES)
    (line,) = _marked(source)
    found = _by_version(check(source, "compat.py"))
    # Trt8.run is valid on 8.6 and overridden in Trt10; Trt10.launch is inherited by Trt11.
    assert found == {V8: [], V10: [line], V11: [line]}
    (first, *_) = check(source, "compat.py")
    assert str(first) == (
        f"compat.py:{line}: 10.3.0: trt.IExecutionContext has no member execute_async_v2 "
        "(on `context`)"
    )
    assert version_classes(source) == {"Trt8": V8, "Trt10": V10, "Trt11": V11}


def test_inherited_methods_are_checked_against_the_subclass_version() -> None:
    source = _source(
        """
        class Trt8:
            TRT_VERSION = "8.6.1"

            def precision(self, config: trt.IBuilderConfig) -> None:
                config.set_flag(trt.BuilderFlag.FP16)  # <-

        class Trt10(Trt8):
            TRT_VERSION = "10.3.0"

        class Trt11(Trt10):
            TRT_VERSION = "11.4.0.106"
        """
    )
    (line,) = _marked(source)
    assert _by_version(check(source)) == {V8: [], V10: [], V11: [line]}
    (violation,) = check(source)
    assert violation.message == "trt.BuilderFlag has no member FP16"


def test_enum_member_in_trt11_branch_is_caught() -> None:
    source = _source(
        """
        class Trt8:
            TRT_VERSION = "8.6.1"

            def precision(self, config: trt.IBuilderConfig) -> None:
                config.set_flag(trt.BuilderFlag.FP16)

        class Trt11(Trt8):
            TRT_VERSION = "11.4.0.106"

            def precision(self, config: trt.IBuilderConfig) -> None:
                config.set_flag(trt.BuilderFlag.FP16)  # <-
        """
    )
    assert _by_version(check(source)) == {V8: [], V10: [], V11: _marked(source)}


def test_misspelled_override_is_caught() -> None:
    source = _source(
        """
        class Trt10:
            TRT_VERSION = "10.3.0"

            def allocator(self) -> trt.IOutputAllocator:
                class _Allocator(trt.IOutputAllocator):
                    def __init__(self) -> None:
                        trt.IOutputAllocator.__init__(self)

                    def reallocate_output_async(self, name, memory, size, alignment, stream):
                        return 0

                    def reallocate_output_asnyc(self, name, memory, size, alignment, stream):  # <-
                        return 0

                    def _helper(self) -> None:
                        pass

                return _Allocator()
        """
    )
    (line,) = _marked(source)
    violations = check(source)
    assert [(v.version, v.line) for v in violations] == [(V10, line)]
    assert "reallocate_output_asnyc" in violations[0].message


def test_override_counts_when_any_version_of_its_scope_calls_it() -> None:
    # Shared code runs on 8.6 too, where TensorRT never calls reallocate_output_async: harmless.
    source = _source(
        """
        class Allocator(trt.IOutputAllocator):
            def reallocate_output(self, name, memory, size, alignment):
                return 0

            def reallocate_output_async(self, name, memory, size, alignment, stream):
                return 0

            def notify_shapes(self, name, shape):  # <-
                pass
        """
    )
    (line,) = _marked(source)
    assert _by_version(check(source)) == {V8: [line], V10: [line], V11: [line]}


def test_bad_keyword_and_bad_arity_are_caught() -> None:
    source = _source(
        """
        def run(context: trt.IExecutionContext, stream: int) -> None:
            context.execute_async_v3(stream=stream)  # <-
            context.set_tensor_address("x", 0, 1)  # <-
            context.set_tensor_address(name="x", memory=0)
            trt.Builder()  # <-
            trt.ICudaEngine()  # <-
        """
    )
    lines = _marked(source)
    violations = [v for v in check(source) if v.version == V10]
    assert [v.line for v in violations] == lines
    assert violations[0].message == (
        "trt.IExecutionContext.execute_async_v3() has no parameter stream; "
        "signatures: (stream_handle)"
    )
    assert "accepts no call with 3 positional" in violations[1].message
    assert "cannot be constructed" in violations[3].message


def test_types_flow_from_returns_properties_self_and_with() -> None:
    source = _source(
        """
        class Build:
            def __init__(self, logger: trt.ILogger) -> None:
                self.builder: trt.Builder = trt.Builder(logger)

            def _config(self) -> trt.IBuilderConfig:
                return self.builder.create_builder_config()

            def run(self, engine: trt.ICudaEngine) -> None:
                network = self.builder.create_network(0)
                network.add_nothing()  # <-
                self._config().set_flagz(0)  # <-
                self.builder.platform_has_fast_fp16  # <-
                with trt.Runtime(trt.Logger()) as runtime:
                    runtime.deserialize_cuda_engine(b"").get_tensor_nam("x")  # <-
                engine.num_io_tensors = 3  # <-
                network = object()
                network.add_nothing()
        """
    )
    lines = _marked(source)
    found = _by_version(check(source))
    assert found[V8] == found[V10] == [line for i, line in enumerate(lines) if i != 2]
    assert found[V11] == lines  # platform_has_fast_fp16 is gone in 11
    (readonly,) = [v for v in check(source) if v.line == lines[-1] and v.version == V8]
    assert readonly.message == "trt.ICudaEngine.num_io_tensors is a read-only property"


def test_import_time_code_is_checked_against_every_version() -> None:
    source = _source(
        """
        class Trt10:
            TRT_VERSION = "10.3.0"
            INT64 = trt.DataType.INT64  # <-

            def monitor(self, progress: trt.IProgressMonitor) -> None:
                pass
        """
    )
    (line,) = _marked(source)
    assert _by_version(check(source)) == {V8: [line], V10: [], V11: []}
    # Without postponed annotations, a signature's annotations run when the class is defined.
    eager = source.replace("from __future__ import annotations\n", "")
    (line,) = _marked(eager)
    assert _by_version(check(eager)) == {V8: [line, line + 2], V10: [], V11: []}


def test_untyped_names_are_not_checked() -> None:
    source = _source(
        """
        class Trt10:
            TRT_VERSION = "10.3.0"

            def run(self, context, stream: int) -> None:
                context.execute_async_v2([], stream)
                getattr(trt.BuilderFlag, "FP16", None)
        """
    )
    assert check(source) == []


def test_unknown_trt_version_is_reported() -> None:
    source = _source('class Trt9:\n    TRT_VERSION = "9.0"\n')
    (violation,) = check(source)
    assert violation.version == "9.0" and "none of the introspected" in violation.message


def test_clean_source_has_no_violations() -> None:
    source = _source(
        """
        class Log(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                pass

        SEVERITY = {trt.ILogger.Severity.ERROR: "error", trt.Logger.WARNING: "warning"}

        class Trt8:
            TRT_VERSION = "8.6.1"

            def flags(self) -> int:
                return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)

            def memory(self, engine: trt.ICudaEngine) -> int:
                return int(engine.device_memory_size)

        class Trt10(Trt8):
            TRT_VERSION = "10.3.0"

            def flags(self) -> int:
                return 0

            def memory(self, engine: trt.ICudaEngine) -> int:
                return int(engine.device_memory_size_v2)

            def monitor(self, config: trt.IBuilderConfig) -> None:
                class _Monitor(trt.IProgressMonitor):
                    def phase_start(self, phase_name, parent_phase, num_steps):
                        pass

                    def step_complete(self, phase_name, step):
                        return True

                    def phase_finish(self, phase_name):
                        pass

                config.progress_monitor = _Monitor()

        class Trt11(Trt10):
            TRT_VERSION = "11.4.0.106"

        def build(version: Trt8, path: str, log: Log) -> bytes:
            builder = trt.Builder(log)
            network = builder.create_network(version.flags())
            parser = trt.OnnxParser(network, log)
            if not parser.parse_from_file(path):
                errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
                raise RuntimeError(errors)
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
            config.builder_optimization_level = 3
            profile = builder.create_optimization_profile()
            profile.set_shape("x", (1, 3), (4, 3), (8, 3))
            config.add_optimization_profile(profile)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=True)
            plan = builder.build_serialized_network(network, config)
            return bytes(plan)

        def run(engine: trt.ICudaEngine, stream: int) -> None:
            context = engine.create_execution_context()
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    context.set_input_shape(name, engine.get_tensor_shape(name))
                context.set_tensor_address(name, 0)
            context.execute_async_v3(stream_handle=stream)
        """
    )
    assert check(source) == []


# --------------------------------------------------------------------------------------------
# edgert's compat module


def _compat_source() -> str:
    if not COMPAT.exists():
        pytest.fail(
            f"{COMPAT.relative_to(COMPAT.parents[2])} does not exist yet: the TensorRT compat "
            "module these tests check (see tests/trt/conformance.py for its convention)"
        )
    return COMPAT.read_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_compat_module_conforms(version: str) -> None:
    _compat_source()
    violations = [v for v in check_file(COMPAT) if v.version == version]
    assert not violations, "\n".join(str(v) for v in violations)


def test_compat_module_has_a_branch_per_version() -> None:
    assert sorted(version_classes(_compat_source()).values()) == sorted(VERSIONS)


def _plant(source: str, version: str, code: str, needle: str) -> tuple[str, int]:
    """Insert `code` (written with `trt.`) at the top of the first method of the compat class
    that declares TRT_VERSION = version; returns the new source and the line holding needle."""
    tree = ast.parse(source)
    alias = next(
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if a.name == "tensorrt"
    )
    branch = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and version_classes(ast.unparse(ast.Module([node], []))) == {node.name: version}
    )
    method = next(n for n in branch.body if isinstance(n, ast.FunctionDef) and n.args.args)
    method.body[:0] = ast.parse(textwrap.dedent(code).replace("trt.", f"{alias}.")).body
    new = ast.unparse(ast.fix_missing_locations(tree))
    line = next(i for i, text in enumerate(new.splitlines(), 1) if needle in text)
    return new, line


PLANTED_V2 = """
    _planted_context: trt.IExecutionContext = None
    _planted_context.execute_async_v2([], 0)
"""


def test_checker_catches_a_removed_method_planted_in_the_real_trt10_branch() -> None:
    source = _compat_source()
    planted, line = _plant(source, V10, PLANTED_V2, "_planted_context.execute")
    hits = [v for v in check(planted, "trt_compat.py") if "execute_async_v2" in v.message]
    assert V10 in {v.version for v in hits if v.line == line}, hits
    assert V8 not in {v.version for v in hits}
    # The same line in the 8.6 branch is valid there.
    planted8, line8 = _plant(source, V8, PLANTED_V2, "_planted_context.execute")
    assert not [v for v in check(planted8) if v.version == V8 and v.line == line8]


def test_checker_catches_an_fp16_flag_planted_in_the_real_trt11_branch() -> None:
    planted, line = _plant(
        _compat_source(), V11, "_planted_flag = trt.BuilderFlag.FP16\n", "_planted_flag"
    )
    hits = [v for v in check(planted) if v.line == line]
    assert [(v.version, v.message) for v in hits] == [(V11, "trt.BuilderFlag has no member FP16")]
