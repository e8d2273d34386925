"""The models the fuzz tests decode requests for, compiled for real, and set up for decoding as
the daemon sets them up (``Models.serve``): request specs without constants or carried
inputs, windowed inputs a chunk long, model.toml's declared format and ``[preprocess]``."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

from edgert import ModelDir, compile_model, open_model
from edgert.codec import InputsDecoder
from edgert.daemon.decoding import declared_format, decode_request, request_specs
from edgert.daemon.streams import StreamPlan
from edgert.pipeline import Preprocess, Transform
from edgert.protocol import Request
from edgert.settings import DaemonConfig
from edgert.spec import ModelIO, TensorSpec
from edgert.transport import Message
from tests.corpus import int64_io, make_model, multi_io, tensor, write

__all__ = ["MAX_ELEMENTS", "REPO", "Target", "audio_model", "build_repository", "bytesum_model"]

REPO = Path(__file__).resolve().parents[2]
MAX_ELEMENTS = DaemonConfig().max_elements  # the daemon's default bound

AUDIO_TOML = """
[dims]
batch = { min = 1, opt = 1, max = 1 }
samples = { min = 1, opt = 512, max = 16000 }

[inputs.audio]
format = "wav"

[preprocess]
kind = "audio"
rate = 16000
format = "wav"
"""


def bytesum_model(directory: Path) -> None:
    """uint8[1, 16] bytes → float32[1] their sum; model.toml declares raw input."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("Cast", ["bytes"], ["wide"], to=1),  # FLOAT
        helper.make_node("ReduceSum", ["wide", "axes"], ["sum"], keepdims=0),
    ]
    model = make_model(
        nodes, [tensor("bytes", np.uint8, [1, 16])], [tensor("sum", np.float32, [1])], [axes]
    )
    write(directory, model, '[inputs.bytes]\nformat = "raw"\n')


def audio_model(directory: Path) -> None:
    """float32[1, samples] mono 16 kHz audio (sent as WAV) → its mean level, float32[1]."""
    nodes = [helper.make_node("ReduceMean", ["audio"], ["level"], axes=[1], keepdims=0)]
    model = make_model(
        nodes,
        [tensor("audio", np.float32, ["batch", "samples"])],
        [tensor("level", np.float32, ["batch"])],
    )
    write(directory, model, AUDIO_TOML)


def build_repository(root: Path) -> Path:
    """The example models (occupancy: float32 sensor MLP; silero_vad: stream state; person: JPEG
    pre-processing), a raw-bytes model, a WAV model and two corpus models with int inputs."""
    for name in ("occupancy", "silero_vad", "person"):
        shutil.copytree(
            REPO / "engines" / name, root / name, ignore=shutil.ignore_patterns("build")
        )
    bytesum_model(root / "bytesum")
    audio_model(root / "loudness")
    multi_io(root / "multi")  # float32 a, b and int32 k, one shared batch axis
    int64_io(root / "tokens")  # int64 ids [batch, seq]
    for directory in sorted(root.iterdir()):
        compile_model(ModelDir(directory))
    return root


@dataclass(frozen=True)
class Target:
    """One served model as the daemon's decoder sees it."""

    name: str
    io: ModelIO
    specs: tuple[TensorSpec, ...]
    declared: str | None
    pre: Preprocess | None
    stateful: bool

    @classmethod
    def load(cls, directory: Path) -> Target:
        loaded = open_model(ModelDir(directory), "onnxruntime")
        try:
            streams = StreamPlan.of(loaded.config, loaded.io)
            specs = streams.request_specs(request_specs(loaded.io, loaded.constants))
            pre = Preprocess.of(loaded.config, specs[0]) if len(specs) == 1 else None
            declared = declared_format(loaded.config, specs)
            return cls(loaded.config.name, loaded.io, specs, declared, pre, streams.stateful)
        finally:
            loaded.close()

    def decode(
        self, message: Message, key: str | None = None, max_elements: int = MAX_ELEMENTS
    ) -> tuple[Request, Transform | None]:
        inputs = InputsDecoder(self.specs, self.io)  # as the daemon has it (short path included)
        return decode_request(
            message, self.io, self.name, inputs, key, max_elements, self.declared, self.pre
        )

    def check(self, request: Request) -> None:
        """What a decoded request promises: every request input, each fitting its spec."""
        assert request.model == self.name
        assert set(request.inputs) == {s.name for s in self.specs}
        for spec in self.specs:
            array = request.inputs[spec.name]
            spec.check(array, self.io.dims)
            assert array.dtype.isnative and array.flags.c_contiguous
        assert (
            request.id is None
            or (type(request.id) is str and 0 < len(request.id) <= 128)
            or (type(request.id) is int and -(2**63) <= request.id < 2**64)
        )
        assert request.stream is None or 0 < len(request.stream) <= 128
        assert request.deadline_ms is None or request.deadline_ms > 0
        assert not request.reset or request.stream is not None


def load_targets(root: Path) -> Mapping[str, Target]:
    return {d.name: Target.load(d) for d in sorted(root.iterdir()) if d.is_dir()}


def spec_names(specs: Sequence[TensorSpec]) -> list[str]:
    return [s.name for s in specs]
