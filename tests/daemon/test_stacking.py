"""The one stack/split (edgert.daemon.stacking) that batches and streams share: shapes, several
rows per request, order, a tensor's own axis; and both plans held to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgert.daemon import stacking
from edgert.daemon.batcher import BatchPlan
from edgert.daemon.streams import Carried, StreamPlan


def _request(n: int, rows: int) -> dict[str, np.ndarray]:
    """``rows`` rows of request ``n``: every value says which request and row it is."""
    readings = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + 100 * n
    state = np.full((2, rows, 3), n, np.float32) + np.arange(rows, dtype=np.float32)[:, None] / 10
    return {"readings": readings, "state": state}


def test_rows_are_stacked_in_order_and_split_back_to_their_requests() -> None:
    requests = [_request(0, 1), _request(1, 3), _request(2, 2)]
    axes = {"state": 1}
    stacked = stacking.stack(requests, axes=axes)
    assert stacked["readings"].shape == (6, 4) and stacked["state"].shape == (2, 6, 3)
    np.testing.assert_array_equal(stacked["readings"][1:4], requests[1]["readings"])
    np.testing.assert_array_equal(stacked["state"][:, 4:6], requests[2]["state"])
    back = stacking.split(stacked, [1, 3, 2], axes=axes)
    assert [b["readings"].shape[0] for b in back] == [1, 3, 2]
    for request, got in zip(requests, back, strict=True):
        assert got.keys() == request.keys()
        for name, array in request.items():
            np.testing.assert_array_equal(got[name], array)


def test_names_limit_what_is_stacked_and_split() -> None:
    requests = [_request(0, 1), _request(1, 2)]
    stacked = stacking.stack(requests, ["readings"])
    assert list(stacked) == ["readings"]
    assert [list(b) for b in stacking.split(stacked, [1, 2], ["readings"])] == [["readings"]] * 2


def test_one_request_passes_through_as_it_is() -> None:
    request = _request(7, 2)
    stacked = stacking.stack([request], ["readings"])
    assert stacked.keys() == request.keys() and stacked["readings"] is request["readings"]
    (back,) = stacking.split(request, [2], ["readings"])
    assert back.keys() == request.keys() and back["state"] is request["state"]


def test_split_gives_views_of_the_run_outputs() -> None:
    outputs = {"scores": np.arange(12, dtype=np.float32).reshape(6, 2)}
    parts = stacking.split(outputs, [2, 4])
    assert all(np.shares_memory(p["scores"], outputs["scores"]) for p in parts)
    assert parts[1]["scores"].flags.c_contiguous  # axis 0 of a C-order array: still contiguous


def test_row_count_and_stackable() -> None:
    assert stacking.row_count(_request(0, 3)) == 3
    assert stacking.row_count({}) == 1
    a, b = _request(0, 1), _request(1, 4)
    assert stacking.stackable(a, b, ["readings"])
    wider = {"readings": np.zeros((1, 5), np.float32)}
    other_dtype = {"readings": np.zeros((1, 4), np.float64)}
    assert not stacking.stackable(a, wider, ["readings"])
    assert not stacking.stackable(a, other_dtype, ["readings"])


@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=6),
    st.integers(0, 2),
    st.sampled_from([np.float32, np.int64, np.bool_]),
)
@settings(max_examples=200, derandomize=True, database=None, deadline=None)
def test_split_undoes_stack(rows: list[int], axis: int, dtype: type) -> None:
    def tensor(n: int, count: int) -> np.ndarray:
        shape = [2, 3, 2]
        shape[axis] = count
        return (np.arange(int(np.prod(shape))).reshape(shape) + 1000 * n).astype(dtype)

    requests = [
        {"x": tensor(n, count), "y": np.full((count, 1), n)} for n, count in enumerate(rows)
    ]
    axes = {"x": axis}
    back = stacking.split(stacking.stack(requests, axes=axes), rows, axes=axes)
    assert len(back) == len(requests)
    for request, got in zip(requests, back, strict=True):
        for name, array in request.items():
            assert got[name].dtype == array.dtype
            np.testing.assert_array_equal(got[name], array)


def test_batches_and_streams_both_stack_and_split_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch plan and a stream plan (its carried state on axis 1) go through this module, with
    their own names and axes: one implementation, so they cannot drift apart."""
    calls: list[str] = []
    for name in ("stack", "split"):
        real = getattr(stacking, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(stacking, name, spy)
    requests, rows = [_request(0, 2), _request(1, 1), _request(2, 3)], [2, 1, 3]
    batch = BatchPlan(("readings",), ("readings",), 8)
    run = batch.stack(requests)
    assert list(run) == ["readings"] and run["readings"].shape == (6, 4)
    assert [p["readings"].shape[0] for p in batch.split(run, rows)] == rows
    stream = StreamPlan(carried=(Carried("state", "state", 0.0, 1),))
    run = stream.stack(requests)
    assert run["state"].shape == (2, 6, 3) and run["readings"].shape == (6, 4)
    for part, request in zip(stream.split(run, rows), requests, strict=True):
        np.testing.assert_array_equal(part["state"], request["state"])
        np.testing.assert_array_equal(part["readings"], request["readings"])
    assert calls == ["stack", "split", "stack", "split"]
