"""Dynamic batching as pure logic: which requests can share one inference, how to stack their
inputs along the batch axis, and how to split the outputs back, in order
(:mod:`edgert.daemon.stacking`, shared with stateful streams).

A model batches when every request input and every output starts with the same named dynamic
dim (``batch``) whose upper bound is above 1; requests may carry several rows each. Requests whose
other dims differ (two sequence lengths) cannot be stacked and go in separate batches. Constants
(model.toml) are not stacked: a model whose constant has the batch dim does not batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from edgert.config import ModelConfig
from edgert.daemon import stacking
from edgert.spec import ModelIO

__all__ = ["BatchPlan", "BatchSettings"]


@dataclass(frozen=True)
class BatchSettings:
    """model.toml ``[batching]`` (:class:`edgert.sections.BatchingSection`), as the scheduler
    takes it."""

    max_batch: int | None = None  # cap below the profile's bound on the batch dim
    max_queue_delay_us: int = 0  # how long a partial batch waits for more (0: take what is queued)
    instances: int = 1  # runners of the model, each one inference at a time
    threads: int = 0  # CPU threads per instance (0: all cores for one, cores / instances else)

    @classmethod
    def of(cls, config: ModelConfig) -> BatchSettings:
        """The model's ``[batching]`` (checked when model.toml was read)."""
        return cls(**msgspec.structs.asdict(config.batching))

    def threads_per_instance(self, cores: int) -> int:
        """CPU threads for each instance: as set, else the cores split between instances (0,
        the runtime's default, for a single instance)."""
        if self.threads or self.instances == 1:
            return self.threads
        return max(1, cores // self.instances)


@dataclass(frozen=True)
class BatchPlan:
    """How one model's requests are grouped: ``max_batch`` rows along axis 0 of ``inputs``."""

    inputs: tuple[str, ...]  # the request inputs, stacked along axis 0
    outputs: tuple[str, ...]
    max_batch: int  # 1: no batching

    @classmethod
    def for_model(
        cls, io: ModelIO, constants: Mapping[str, np.ndarray], limit: int | None = None
    ) -> BatchPlan:
        """The plan for ``io``; ``limit`` (model.toml ``[batching] max_batch``) caps the
        profile's bound."""
        requested = [s for s in io.inputs if s.name not in constants]
        leading = {s.shape[0] if s.shape else None for s in (*requested, *io.outputs)}
        constant_dims = {d for s in io.inputs if s.name in constants for d in s.shape}
        names = (tuple(s.name for s in requested), tuple(s.name for s in io.outputs))
        if len(leading) != 1 or not requested:
            return cls(*names, 1)
        (dim,) = leading
        if not isinstance(dim, str) or dim not in io.dims or dim in constant_dims:
            return cls(*names, 1)
        bound = io.dims[dim].max
        return cls(*names, max(1, min(bound, limit) if limit else bound))

    @property
    def batches(self) -> bool:
        return self.max_batch > 1

    def rows(self, feeds: Mapping[str, np.ndarray]) -> int:
        """How many rows a request brings (1 for a model that does not batch)."""
        return int(feeds[self.inputs[0]].shape[0]) if self.batches else 1

    def fits(self, first: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> bool:
        """Whether ``other`` can be stacked with ``first``: same dtypes, same dims past axis 0."""
        return self.batches and stacking.stackable(first, other, self.inputs)

    def stack(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """One feed of all ``requests``' rows, in order."""
        return stacking.stack(requests, self.inputs)

    def split(
        self, outputs: Mapping[str, np.ndarray], rows: Sequence[int]
    ) -> list[dict[str, np.ndarray]]:
        """``outputs`` of a stacked run, back to each request's rows (in ``rows`` order)."""
        return stacking.split(outputs, rows, self.outputs)
