"""The emulated builder: ``Builder`` and ``build_serialized_network``, which checks what
TensorRT's builder checks, reports progress, and writes an emulated plan.

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import time
from typing import Any

import numpy as np

from tests.trt import emulator_onnx as ox
from tests.trt.emulator_core import (
    State,
    api_error,
    call_override,
    check_arg,
    check_initialized,
    emit,
    new_object,
    register_logger,
    to_int,
)
from tests.trt.emulator_plan import JETSON_SMS, encode_plan, host_memory

__all__ = ["BuildClasses"]


class BuildClasses:
    """Namespace of the full (all-version) Builder; see ParseClasses."""

    class Builder:
        _rt: State

        def __init__(self, logger: Any) -> None:
            check_initialized(logger, self._rt.trt.ILogger, "Builder.__init__")
            register_logger(self._rt, logger, "createInferBuilder")
            self._logger = logger

        @property
        def logger(self) -> Any:
            return self._logger

        def create_network(self, flags: int = 0) -> Any:
            rt, flags = self._rt, to_int(flags, "create_network")
            creation = rt.trt.NetworkDefinitionCreationFlag
            if rt.major < 10:
                explicit = bool(flags & (1 << int(creation.EXPLICIT_BATCH)))
                strongly = False
            else:
                explicit = True  # implicit batch is gone; EXPLICIT_BATCH is ignored on 10
                strongly = rt.major >= 11 or bool(flags & (1 << int(creation.STRONGLY_TYPED)))
            return new_object(
                rt.trt.INetworkDefinition,
                _builder=self,
                _explicit_batch=explicit,
                _strongly_typed=strongly,
                _model=None,
                _tensors=[],
                _name="",
            )

        def create_builder_config(self) -> Any:
            rt = self._rt
            return new_object(
                rt.trt.IBuilderConfig,
                _logger=self._logger,
                _pools={},
                _flags={"TF32"},  # on by default, as in TensorRT
                _profiles=[],
                _opt_level=3,
                _device_type=rt.trt.DeviceType.GPU,
                _dla_core=-1,
                _hw_level=rt.trt.HardwareCompatibilityLevel.NONE,
                _monitor=None,
                _timing_cache=None,
            )

        def create_optimization_profile(self) -> Any:
            return new_object(self._rt.trt.IOptimizationProfile, _shapes={})

        @property
        def num_DLA_cores(self) -> int:
            return self._rt.num_dla_cores()

        @property
        def platform_has_fast_fp16(self) -> bool:
            sm = int(self._rt.current_sm()[3:])
            return sm == 53 or (sm >= 60 and sm != 61)

        @property
        def platform_has_fast_int8(self) -> bool:
            return int(self._rt.current_sm()[3:]) >= 61

        @property
        def platform_has_tf32(self) -> bool:
            return int(self._rt.current_sm()[3:]) >= 80

        def build_serialized_network(self, network: Any, config: Any) -> Any:
            trt = self._rt.trt
            check_arg(network, trt.INetworkDefinition, "build_serialized_network", "network")
            check_arg(config, trt.IBuilderConfig, "build_serialized_network", "config")
            time.sleep(float(os.environ.get("EMULATOR_BUILD_DELAY", "0")))  # a long build
            if os.environ.get("EMULATOR_KILL_BUILD") == "1":
                # What the kernel's OOM killer does to a TensorRT build on an 8 GB Jetson.
                os.kill(os.getpid(), signal.SIGKILL)
            return _Build(self, network, config).run()


class _Cancelled(Exception):
    pass


class _NoKernel(Exception):
    """ONNX Runtime cannot run the model: the emulated builder finds no implementation."""


class _Build:
    """One ``build_serialized_network`` call: checks as TensorRT's builder does, reports
    progress, and writes the plan. Errors go to the builder's logger; the call returns None."""

    def __init__(self, builder: Any, network: Any, config: Any) -> None:
        self.rt: State = builder._rt
        self.builder, self.network, self.config = builder, network, config
        self.logger = builder._logger

    def error(self, code: int, text: str, kind: str = "Internal Error") -> None:
        emit(self.logger, self.rt, "ERROR", api_error(code, kind, "builder.cpp", text))

    def run(self) -> Any:
        problems = self.check()
        for problem in problems:
            self.error(4, problem)
        if problems:
            return None
        try:
            plan = self.progress_and_plan()
        except _Cancelled:
            self.error(2, "Build was cancelled by the progress monitor.")
            return None
        except _NoKernel as exc:
            self.error(10, f"Could not find any implementation for the network: {exc}")
            return None
        return host_memory(self.rt, plan)

    def flags(self) -> set[str]:
        return set(self.config._flags)

    def check(self) -> list[str]:
        rt, network, config = self.rt, self.network, self.config
        if network._builder is not self.builder:
            return ["the network was created by another builder"]
        if network._model is None or not network.num_outputs:
            return ["Network must have at least one output"]
        found = []
        if network._strongly_typed and self.flags() & {"FP16", "INT8"}:
            found.append(
                "Parameter check failed, condition: !(flags & (kFP16 | kINT8)). Precision flags "
                "cannot be set on a strongly typed network"
            )
        found += self.check_profiles()
        if config._device_type == rt.trt.DeviceType.DLA:
            found += self.check_dla()
        if config._hw_level.name == "AMPERE_PLUS":
            sm = rt.current_sm()
            if int(sm[3:]) < 80 or sm in JETSON_SMS:
                found.append(
                    f"Hardware compatibility {config._hw_level.name} needs a discrete Ampere or "
                    f"later GPU; this is {sm}"
                )
            if config._device_type == rt.trt.DeviceType.DLA:
                found.append("Hardware compatibility is not supported with DLA")
        return found

    def inputs(self) -> list[ox.IoTensor]:
        return [t._rt_tensor for t in self.network._tensors if t._rt_tensor.is_input]

    def check_profiles(self) -> list[str]:
        inputs = {t.name: t for t in self.inputs()}
        dynamic = [t.name for t in inputs.values() if -1 in t.shape]
        profiles = self.config._profiles
        if dynamic and not profiles:
            return [
                "Network has dynamic or shape inputs, but no optimization profile has been "
                f"defined (dynamic: {', '.join(dynamic)})."
            ]
        found = []
        for index, profile in enumerate(profiles):
            for name in profile:
                if name not in inputs:
                    found.append(f"optimization profile {index} names '{name}', not an input")
            for name, tensor in inputs.items():
                if name not in profile:
                    if name in dynamic:
                        found.append(
                            f"{name}: dynamic input is missing dimensions in profile {index}."
                        )
                    continue
                for which, dims in zip(("min", "opt", "max"), profile[name], strict=True):
                    if len(dims) != len(tensor.shape):
                        found.append(
                            f"{name}: profile {index} {which} has rank {len(dims)}, the network "
                            f"input has rank {len(tensor.shape)}"
                        )
                        continue
                    for axis, (got, net) in enumerate(zip(dims, tensor.shape, strict=True)):
                        if net != -1 and got != net:
                            found.append(
                                f"{name}: for dimension number {axis} in profile {index} does "
                                f"not match network definition (got {which}={got}, network={net})"
                            )
        return found

    def check_dla(self) -> list[str]:
        rt, config = self.rt, self.config
        cores, core = rt.num_dla_cores(), config._dla_core
        if cores == 0 or not 0 <= core < cores:
            return [f"DLA core {core} requested, but this platform has {cores} DLA cores"]
        low_precision = (
            bool(self.flags() & {"FP16", "INT8"})
            if rt.major < 11
            else not ox.has_float32(self.network._model)
        )
        if not low_precision:
            if "GPU_FALLBACK" not in self.flags():
                return ["DLA supports only FP16 and INT8, and GPU fallback is not enabled"]
            emit(self.logger, rt, "WARNING", "DLA runs FP16/INT8 only: layers fall back to GPU")
        return []

    def progress_and_plan(self) -> bytes:
        model = self.network._model
        nodes = max(len(model.graph.node), 1)
        phases = [("Optimizing network", 1), ("Selecting tactics", nodes), ("Serializing", 1)]
        top = "Building engine"
        monitor = self.config._monitor if self.rt.major >= 10 else None
        plan = b""
        pause = float(os.environ.get("EMULATOR_STEP_DELAY", "0"))  # a slow build, step by step
        with _Phase(monitor, top, None, len(phases)) as outer:
            for step, (name, count) in enumerate(phases):
                with _Phase(monitor, name, top, count) as inner:
                    for i in range(count):
                        if name == "Serializing":
                            plan = self.plan()
                        time.sleep(pause)
                        inner.step(i)
                outer.step(step)
        return plan

    def plan(self) -> bytes:
        rt, config, model = self.rt, self.config, self.network._model
        flags = self.flags()
        if rt.major < 11 and "INT8" in flags and not ox.has_qdq(model):
            emit(
                self.logger,
                rt,
                "WARNING",
                "Calibrator is not being used. Users must provide dynamic range for all tensors "
                "that are not Int32 or Bool. Missing scales: layers fall back to FP16/FP32.",
            )
        model_bytes = model.SerializeToString()
        try:
            ox.make_session(model_bytes)
        except Exception as exc:  # onnxruntime raises its own (unexported) exception types
            raise _NoKernel(str(exc).splitlines()[0]) from exc
        tensors = [t._rt_tensor for t in self.network._tensors]
        profiles = config._profiles or [
            {t.name: [list(t.shape)] * 3 for t in tensors if t.is_input}
        ]
        cache = config._timing_cache
        if cache is not None and "DISABLE_TIMING_CACHE" not in flags:
            digest = hashlib.sha256(model_bytes).hexdigest()[:16]
            cache._entries |= {f"{digest}:{n.op_type}:{i}" for i, n in enumerate(model.graph.node)}
        header = {
            "trt_version": rt.version,
            "sm": rt.current_sm(),
            "fp16": rt.major < 11 and "FP16" in flags,
            "int8": rt.major < 11 and "INT8" in flags,
            "strongly_typed": bool(self.network._strongly_typed),
            "version_compatible": "VERSION_COMPATIBLE" in flags,
            "lean_runtime": "VERSION_COMPATIBLE" in flags and "EXCLUDE_LEAN_RUNTIME" not in flags,
            "hardware_compatibility": config._hw_level.name,
            "dla_core": config._dla_core if config._device_type.name == "DLA" else -1,
            "profiles": profiles,
            "io": [t.to_json() for t in tensors],
            "device_memory": _device_memory(tensors, profiles, model),
            "name": self.network._name or model.graph.name,
        }
        return encode_plan(header, model_bytes)


def _device_memory(tensors: list[ox.IoTensor], profiles: list[Any], model: Any) -> int:
    """Emulated activation memory: twice the inputs at their largest profile shapes, plus the
    weights' size and 1 MiB of scratch. Only its order of magnitude means anything."""
    largest = 0
    for profile in profiles:
        total = 0
        for t in tensors:
            if t.is_input and t.name in profile:
                total += math.prod(profile[t.name][2]) * ox.np_dtype(t.trt_type).itemsize
        largest = max(largest, total)
    weights = sum(len(t.raw_data) or int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
    return int(2 * largest + weights + (1 << 20))


class _Phase:
    """phase_start / step_complete / phase_finish on an IProgressMonitor (if any). A monitor
    method that raises is printed, as by TensorRT's trampoline; a raising step_complete counts
    as False (cancel), which is the emulator's choice, not a documented TensorRT behaviour."""

    def __init__(self, monitor: Any, name: str, parent: str | None, steps: int) -> None:
        self.monitor, self.name, self.parent, self.steps = monitor, name, parent, steps

    def __enter__(self) -> _Phase:
        if self.monitor is not None:
            args = (self.name, self.parent, self.steps)
            call_override(self.monitor, "phase_start", "phaseStart", *args)
        return self

    def step(self, index: int) -> None:
        if self.monitor is None:
            return
        ok, go_on = call_override(self.monitor, "step_complete", "stepComplete", self.name, index)
        if not (ok and bool(go_on)):
            raise _Cancelled

    def __exit__(self, *exc_info: object) -> None:
        if self.monitor is not None:
            call_override(self.monitor, "phase_finish", "phaseFinish", self.name)
