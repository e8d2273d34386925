"""Several requests' rows as one run, and the run's outputs back to each request in order: the one
stacking that batches (:class:`~edgert.daemon.batcher.BatchPlan`) and stateful streams
(:class:`~edgert.daemon.streams.StreamPlan`) share. Pure logic on arrays.

Each tensor is stacked along its own axis (``axes``; 0, the batch dim, unless given): a stream's
carried state has its batch dim elsewhere (silero VAD's ``state`` is ``[2, batch, 128]``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np

__all__ = ["row_count", "split", "stack", "stackable"]

_AXIS_0: Mapping[str, int] = MappingProxyType({})


def row_count(feeds: Mapping[str, np.ndarray]) -> int:
    """How many rows a request brings: its first input's leading dim (1 when it has none)."""
    return int(next(iter(feeds.values())).shape[0]) if feeds else 1


def stackable(
    first: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], names: Iterable[str]
) -> bool:
    """Whether ``other`` can be stacked with ``first``: for each of ``names``, the same dtype and
    the same dims past axis 0."""
    return all(
        first[n].shape[1:] == other[n].shape[1:] and first[n].dtype == other[n].dtype for n in names
    )


def stack(
    requests: Sequence[Mapping[str, np.ndarray]],
    names: Iterable[str] | None = None,
    axes: Mapping[str, int] = _AXIS_0,
) -> dict[str, np.ndarray]:
    """One run's feeds: each of ``names`` (default: the first request's) concatenated along its
    axis, in request order. A single request's feeds are taken as they are."""
    if len(requests) == 1:
        return dict(requests[0])
    names = requests[0].keys() if names is None else names
    return {n: np.concatenate([r[n] for r in requests], axis=axes.get(n, 0)) for n in names}


def split(
    outputs: Mapping[str, np.ndarray],
    rows: Sequence[int],
    names: Iterable[str] | None = None,
    axes: Mapping[str, int] = _AXIS_0,
) -> list[dict[str, np.ndarray]]:
    """A stacked run's ``outputs`` back to each request: its ``rows`` (in order) of each of
    ``names`` (default: every output) along that output's axis, as views. A single request
    gets every output as it is."""
    if len(rows) == 1:
        return [dict(outputs)]
    names = tuple(outputs) if names is None else tuple(names)
    bounds = itertools.pairwise(itertools.accumulate(rows, initial=0))
    return [
        {n: _rows(outputs[n], start, end, axes.get(n, 0)) for n in names} for start, end in bounds
    ]


def _rows(array: np.ndarray, start: int, end: int, axis: int) -> np.ndarray:
    return array[(slice(None),) * axis + (slice(start, end),)]
