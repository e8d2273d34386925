"""The CLI's tensor files: what each suffix reads and writes, and that a failed write leaves the
old file as it was (never a half-written one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgert.errors import InputError
from edgert.spec import DimRange, DType, ModelIO, TensorSpec
from edgert.tensorfiles import read_inputs, read_tensors, write_outputs

IO = ModelIO(
    (TensorSpec("x", DType.FLOAT32, ("batch", 2)), TensorSpec("scale", DType.FLOAT32, (1,))),
    (),
    {"batch": DimRange(1, 1, 4)},
)
OUTPUTS: dict[str, np.ndarray] = {
    "y": np.array([[0.5, 1.5]], np.float32),
    "k": np.array([3, 4], np.int64),
}


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_outputs_read_back_as_written(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    write_outputs(path, OUTPUTS)
    back = read_tensors(path)
    assert set(back) == set(OUTPUTS)
    for name, array in OUTPUTS.items():
        np.testing.assert_array_equal(np.asarray(back[name]), array)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_one_output_to_npy_and_several_refused(tmp_path: Path) -> None:
    write_outputs(tmp_path / "y.npy", {"y": OUTPUTS["y"]})
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), OUTPUTS["y"])
    with pytest.raises(InputError, match=r"2 outputs; write them to \.npz or \.json"):
        write_outputs(tmp_path / "both.npy", OUTPUTS)
    assert not (tmp_path / "both.npy").exists()
    with pytest.raises(InputError, match=r"use a \.npy, \.npz or \.json output file"):
        write_outputs(tmp_path / "y.txt", OUTPUTS)


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.npy"
    path.write_bytes(b"the old outputs")
    with pytest.raises(ValueError, match="allow_pickle"):  # .npy never pickles: np.save fails
        write_outputs(path, {"y": np.array([object()], dtype=object)})
    assert path.read_bytes() == b"the old outputs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_one_array_stands_for_the_one_input_constants_leave(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps([[1, 2]]))
    feeds = read_inputs(path, IO, {"scale": np.ones(1, np.float32)})
    assert list(feeds) == ["x"] and feeds["x"].dtype == np.float32
    with pytest.raises(InputError, match=r"one array but the model takes 2 inputs \(x, scale\)"):
        read_inputs(path, IO, {})


def test_npz_inputs_by_name_and_unknown_names_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.npz"
    np.savez(path, x=np.zeros((1, 2)), scale=np.ones(1))
    feeds = read_inputs(path, IO, {})
    assert {k: v.dtype for k, v in feeds.items()} == {"x": np.float32, "scale": np.float32}
    np.savez(path, x=np.zeros((1, 2)), q=np.ones(1))
    with pytest.raises(InputError, match=r"unknown input\(s\) q; the model takes: x, scale"):
        read_inputs(path, IO, {})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.json", b"{not json", "cannot read"),
        ("x.npy", b"not npy", "cannot read"),
        ("x.csv", b"1,2", r"use a \.npy, \.npz or \.json file"),
    ],
)
def test_unreadable_files_are_one_clear_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_tensors(path)
