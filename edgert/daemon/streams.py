"""Stateful streams: state kept per stream id between a device's requests.

model.toml declares it per input (DESIGN.md, "Smart-home integration"):

- ``kind = "carried"``: an output fed back as this input on the stream's next request
  (``from_output``, ``initial`` value, ``batch_axis``); silero VAD's ``state`` ← ``stateN``.
- ``kind = "windowed"``: the device sends ``chunk`` samples; the last ``context`` samples of the
  stream's previous model input are prepended along the last axis (zeros at the start); silero's
  64 samples of context before each 512-sample chunk.

A request without a stream id runs from the initial state. ``reset`` starts a stream over. Idle
streams expire after ``ttl`` seconds, and at most ``cap`` are kept (the least recently used goes):
model.toml's ``[state] ttl`` and ``max_streams``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from edgert.config import ModelConfig
from edgert.daemon import stacking
from edgert.errors import InputError
from edgert.spec import ModelIO, TensorSpec

__all__ = ["Carried", "StreamPlan", "StreamStates", "Windowed"]


@dataclass(frozen=True)
class Carried:
    name: str
    from_output: str
    initial: float
    batch_axis: int


@dataclass(frozen=True)
class Windowed:
    name: str
    context: int
    chunk: int


@dataclass(frozen=True)
class StreamPlan:
    """Which inputs carry state, and how; empty for a stateless model."""

    carried: tuple[Carried, ...] = ()
    windowed: tuple[Windowed, ...] = ()
    ttl: float = 300.0  # [state]: seconds an idle stream's state is kept
    cap: int = 256  # [state] max_streams

    @property
    def stateful(self) -> bool:
        return bool(self.carried or self.windowed)

    @property
    def internal_outputs(self) -> frozenset[str]:
        """Outputs that only feed state back: left out of replies."""
        return frozenset(c.from_output for c in self.carried)

    @classmethod
    def of(cls, config: ModelConfig, io: ModelIO) -> StreamPlan:
        """The plan of model.toml's carried and windowed inputs (their keys were checked when
        it was read), checked against the model's inputs and outputs."""
        outputs = {s.name for s in io.outputs}
        carried, windowed = [], []
        for name, conf in config.inputs.items():
            if conf.kind == "carried":
                if conf.from_output not in outputs:
                    raise config.problem(
                        f"inputs.{name}",
                        "from_output",
                        f"expected an output ({', '.join(sorted(outputs))}), "
                        f"got {conf.from_output!r}",
                    )
                axis = conf.batch_axis or 0
                rank = len(io.input(name).shape)
                if axis >= rank:
                    raise config.problem(
                        f"inputs.{name}", "batch_axis", f"{axis} is past the input's rank, {rank}"
                    )
                carried.append(Carried(name, conf.from_output, conf.initial or 0.0, axis))
            elif conf.kind == "windowed" and conf.context is not None and conf.chunk is not None:
                last = io.input(name).shape[-1]
                if isinstance(last, str) and last in io.dims:  # a named dim fixed in model.toml
                    bound = io.dims[last]
                    last = bound.max if bound.min == bound.max else last
                if isinstance(last, int) and last != conf.context + conf.chunk:
                    raise config.problem(
                        f"inputs.{name}",
                        "chunk",
                        f"context {conf.context} + chunk {conf.chunk} must be the input's last "
                        f"dim, {last}",
                    )
                windowed.append(Windowed(name, conf.context, conf.chunk))
        state = config.state
        return cls(tuple(carried), tuple(windowed), state.ttl, state.max_streams)

    def max_rows(self, io: ModelIO, specs: Sequence[TensorSpec]) -> int:
        """How many rows (streams of one row, say) one run may take: the bound of the request
        inputs' leading dim; 1 when they have none."""
        leading = {s.shape[0] if s.shape else None for s in specs}
        (dim,) = leading if len(leading) == 1 else (None,)
        return io.dims[dim].max if isinstance(dim, str) and dim in io.dims else 1

    def stack(self, fulls: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Several streams' full inputs as one run: carried inputs along their batch axis, the
        others along axis 0 (as the model's batch dim)."""
        return stacking.stack(fulls, axes={c.name: c.batch_axis for c in self.carried})

    def split(
        self, outputs: Mapping[str, np.ndarray], rows: Sequence[int]
    ) -> list[dict[str, np.ndarray]]:
        """A stacked run's outputs back to each stream: carried outputs along their input's
        batch axis, the others along axis 0."""
        return stacking.split(
            outputs, rows, axes={c.from_output: c.batch_axis for c in self.carried}
        )

    def request_specs(self, specs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        """What a device sends: no carried inputs; windowed ones a chunk long."""
        carried = {c.name for c in self.carried}
        chunks = {w.name: w.chunk for w in self.windowed}
        return tuple(
            replace(s, shape=(*s.shape[:-1], chunks[s.name])) if s.name in chunks else s
            for s in specs
            if s.name not in carried
        )


@dataclass
class _State:
    carried: dict[str, np.ndarray] = field(default_factory=dict)
    window: dict[str, np.ndarray] = field(default_factory=dict)
    used: float = 0.0


class StreamStates:
    """The state of every live stream of one model. Thread-safe; a stream's requests must still
    run one at a time, in order (the scheduler puts one per stream in a run)."""

    def __init__(
        self, plan: StreamPlan, io: ModelIO, ttl: float | None = None, cap: int | None = None
    ) -> None:
        self.plan, self.io = plan, io
        self.ttl = plan.ttl if ttl is None else ttl
        self.cap = plan.cap if cap is None else cap
        self._streams: OrderedDict[str, _State] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def feeds(
        self, stream: str | None, reset: bool, sent: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """The model's full inputs for one request: what was sent, plus the stream's state."""
        state = self._state(stream, reset)
        rows = stacking.row_count(sent)
        full = dict(sent)
        for c in self.plan.carried:
            held = state.carried.get(c.name)
            if held is not None and held.shape[c.batch_axis] != rows:
                raise InputError(
                    f"stream '{stream}' was {held.shape[c.batch_axis]} wide and this request is "
                    f"{rows}: send reset to start it over"
                )
            full[c.name] = held if held is not None else self._initial(c, rows)
        for w in self.plan.windowed:
            chunk = sent[w.name]
            context = state.window.get(w.name)
            if context is None or context.shape[:-1] != chunk.shape[:-1]:
                context = np.zeros((*chunk.shape[:-1], w.context), chunk.dtype)
            full[w.name] = np.concatenate([context, chunk], axis=-1)
        return full

    def update(
        self, stream: str | None, full: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        """Keep what the next request of ``stream`` needs from this one."""
        if stream is None:
            return
        with self._lock:
            state = self._streams.get(stream)
            if state is None:
                return
            for c in self.plan.carried:
                state.carried[c.name] = np.array(outputs[c.from_output], copy=True)
            for w in self.plan.windowed:
                state.window[w.name] = np.array(full[w.name][..., -w.context :], copy=True)

    def _state(self, stream: str | None, reset: bool) -> _State:
        if stream is None:
            return _State()
        now = time.monotonic()
        with self._lock:
            for old, held in list(self._streams.items()):
                if now - held.used > self.ttl:
                    del self._streams[old]
            state = self._streams.get(stream)
            if state is None or reset:
                state = _State()
                self._streams[stream] = state
            state.used = now
            self._streams.move_to_end(stream)
            while len(self._streams) > self.cap:
                self._streams.popitem(last=False)
            return state

    def _initial(self, c: Carried, rows: int) -> np.ndarray:
        spec = self.io.input(c.name)
        shape = [
            rows if axis == c.batch_axis else (d if isinstance(d, int) else 1)
            for axis, d in enumerate(spec.shape)
        ]
        return np.full(shape, c.initial, spec.dtype.numpy)
