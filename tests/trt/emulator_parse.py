"""The emulated parse side: OnnxParser (with ParserError) filling an INetworkDefinition whose
inputs and outputs are ITensors.

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

from typing import Any

import onnx

from tests.trt import emulator_onnx as ox
from tests.trt.emulator_core import (
    Dims,
    State,
    check_arg,
    check_initialized,
    emit,
    new_object,
    to_int,
)

__all__ = ["ParseClasses"]


class ParseClasses:
    """Namespace of the full (all-version) parse-side classes; emulator.py derives each
    version's classes from them, keeping only the members that version really has."""

    class ParserError:
        _rt: State

        def code(self) -> Any:
            return self._rt.trt.ErrorCode[self._problem.code]

        def desc(self) -> str:
            return str(self._problem.desc)

        def node(self) -> int:
            return int(self._problem.node)

        def node_name(self) -> str:
            return str(self._problem.node_name)

        def node_operator(self) -> str:
            return str(self._problem.op)

        def func(self) -> str:
            return str(self._problem.func)

        def __str__(self) -> str:
            p = self._problem
            if self._rt.major < 10:
                return f"In node {p.node} ({p.func}): {p.code}: {p.desc}"
            return (
                f"In node {p.node} with name: {p.node_name} and operator: {p.op} ({p.func}): "
                f"{p.code}: {p.desc}"
            )

    class OnnxParser:
        _rt: State

        def __init__(self, network: Any, logger: Any) -> None:
            trt = self._rt.trt
            check_arg(network, trt.INetworkDefinition, "OnnxParser.__init__", "network")
            check_initialized(logger, trt.ILogger, "OnnxParser.__init__")
            self._network = network
            self._logger = logger
            self._errors: list[Any] = []

        def parse(self, model: Any, path: Any = None) -> bool:
            try:
                data = bytes(memoryview(model))
            except TypeError:
                raise TypeError(f"parse(): model must be a buffer, not {type(model)}") from None
            return self._parse(data, None if path is None else str(path))

        def parse_from_file(self, model: str) -> bool:
            if not isinstance(model, str):
                raise TypeError(f"parse_from_file(): model must be str, not {type(model)}")
            try:
                with open(model, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                return self._fail("MODEL_DESERIALIZE_FAILED", f"Failed to open file {model}: {exc}")
            return self._parse(data, model)

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> Any:
            index = to_int(index, "get_error")
            if not 0 <= index < len(self._errors):
                raise IndexError(f"get_error(): index {index} out of range")
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors.clear()

        def _fail(self, code: str, desc: str, problem: ox.ParseProblem | None = None) -> bool:
            problem = problem or ox.ParseProblem(code, -1, "", "", "parse", desc)
            for line in problem.log:
                emit(self._logger, self._rt, "ERROR", f"ModelImporter.cpp: {line}")
            emit(self._logger, self._rt, "ERROR", f"ModelImporter.cpp: ERROR: {problem.desc}")
            self._errors.append(new_object(self._rt.trt.ParserError, _problem=problem))
            return False

        def _parse(self, data: bytes, path: str | None) -> bool:
            rt, network = self._rt, self._network
            if network._model is not None:
                return self._fail("INVALID_GRAPH", "the network already holds a parsed model")
            if not network._explicit_batch:
                return self._fail(
                    "INVALID_VALUE",
                    "Assertion failed: !mImporterCtx.network()->hasImplicitBatchDimension() && "
                    '"This version of the ONNX parser only supports TensorRT INetworkDefinitions '
                    "with an explicit batch dimension. Please ensure the network was initialized "
                    'with the kEXPLICIT_BATCH flag."',
                )
            try:
                model = ox.load_model(data, path)
            except ValueError as exc:
                return self._fail("MODEL_DESERIALIZE_FAILED", str(exc))
            problem = ox.find_problem(model, rt.major)
            if problem is not None:
                return self._fail(problem.code, problem.desc, problem)
            try:
                tensors = ox.io_tensors(model, rt.major)
            except ValueError as exc:
                return self._fail("INVALID_GRAPH", str(exc))
            if rt.major < 10 and any(
                t.data_type == onnx.TensorProto.INT64 for t in model.graph.initializer
            ):
                emit(
                    self._logger,
                    rt,
                    "WARNING",
                    "onnx2trt_utils.cpp:374: Your ONNX model has been generated with INT64 "
                    "weights, while TensorRT does not natively support INT64. Attempting to cast "
                    "down to INT32.",
                )
            network._model = model
            network._tensors = [
                new_object(rt.trt.ITensor, _rt_tensor=t, _network=network) for t in tensors
            ]
            return True

    class ITensor:
        _rt: State

        @property
        def name(self) -> str:
            return str(self._rt_tensor.name)

        @property
        def shape(self) -> Dims:
            return Dims(self._rt_tensor.shape)

        @property
        def dtype(self) -> Any:
            return self._rt.trt.DataType[self._rt_tensor.trt_type]

        @property
        def is_network_input(self) -> bool:
            return bool(self._rt_tensor.is_input)

        @property
        def is_network_output(self) -> bool:
            return not self._rt_tensor.is_input

    class INetworkDefinition:
        _rt: State

        def _side(self, inputs: bool) -> list[Any]:
            return [t for t in self._tensors if t._rt_tensor.is_input == inputs]

        @property
        def num_inputs(self) -> int:
            return len(self._side(True))

        @property
        def num_outputs(self) -> int:
            return len(self._side(False))

        def get_input(self, index: int) -> Any:
            found = self._side(True)
            index = to_int(index, "get_input")
            return found[index] if 0 <= index < len(found) else None

        def get_output(self, index: int) -> Any:
            found = self._side(False)
            index = to_int(index, "get_output")
            return found[index] if 0 <= index < len(found) else None

        @property
        def has_implicit_batch_dimension(self) -> bool:
            return not self._explicit_batch

        @property
        def name(self) -> str:
            return self._name

        @name.setter
        def name(self, value: str) -> None:
            self._name = str(value)
