"""edgert.parity: sample inputs (random and from files) and comparing outputs with a reference."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from edgert.config import ModelConfig, Tolerance
from edgert.errors import ConfigError, ParityError
from edgert.onnx import ModelIO
from edgert.parity import ParityReport, compare, load_samples, random_samples
from edgert.spec import DimRange, DType, TensorSpec

FP32 = Tolerance.for_precision("fp32")
INT8 = Tolerance.for_precision("int8")

IO = ModelIO(
    inputs=(
        TensorSpec("x", DType.FLOAT32, ("batch", 3)),
        TensorSpec("ids", DType.INT64, ("batch",)),
        TensorSpec("sr", DType.INT64, ()),
        TensorSpec("state", DType.FLOAT32, (2,)),
    ),
    outputs=(TensorSpec("y", DType.FLOAT32, ("batch", 3)),),
    dims={"batch": DimRange(1, 2, 5)},
)
CONFIG = ModelConfig.from_dict(
    {
        "dims": {"batch": [1, 2, 5]},
        "inputs": {
            "x": {"range": [10, 20]},
            "ids": {"range": [3, 5]},
            "sr": {"kind": "constant", "value": 16000},
            "state": {"kind": "carried", "from_output": "y", "initial": 0.25},
        },
    },
    default_name="m",
)
STATIC_IO = ModelIO((TensorSpec("x", DType.FLOAT32, (2, 2)),), (), {})


def test_random_samples_cover_opt_min_max() -> None:
    samples = random_samples(IO, CONFIG)
    assert [s["x"].shape for s in samples] == [(2, 3), (1, 3), (5, 3)]
    assert [s["ids"].shape for s in samples] == [(2,), (1,), (5,)]


def test_random_samples_respect_ranges_constants_and_carried_initial() -> None:
    for s in random_samples(IO, CONFIG):
        assert s["x"].dtype == np.float32 and s["x"].min() >= 10 and s["x"].max() < 20
        assert s["ids"].dtype == np.int64 and set(s["ids"].tolist()) <= {3, 4, 5}
        assert s["sr"].dtype == np.int64 and s["sr"].shape == () and s["sr"] == 16000
        assert s["state"].dtype == np.float32 and (s["state"] == 0.25).all()


def test_random_samples_are_seeded() -> None:
    first, again = random_samples(IO, CONFIG), random_samples(IO, CONFIG)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(first, again, strict=True))
    other = random_samples(IO, CONFIG, seed=1)
    assert not np.array_equal(first[0]["x"], other[0]["x"])


def test_random_samples_of_a_static_model_differ() -> None:
    samples = random_samples(STATIC_IO, ModelConfig.from_dict({}, default_name="m"))
    assert len(samples) == 2
    assert not np.array_equal(samples[0]["x"], samples[1]["x"])


@pytest.mark.parametrize("rng", [[0.2, 0.8], [-5, -1]])
def test_random_samples_integer_range_without_values(rng: list[float]) -> None:
    io = ModelIO((TensorSpec("k", DType.UINT8, (2,)),), (), {})
    config = ModelConfig.from_dict({"inputs": {"k": {"range": rng}}}, default_name="m")
    with pytest.raises(ConfigError, match=r"inputs\.k\.range .* holds no uint8 value"):
        random_samples(io, config)


def _sample_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "samples"
    directory.mkdir()
    return directory


def test_load_samples_from_json_and_npz_fills_constants(tmp_path: Path) -> None:
    directory = _sample_dir(tmp_path)
    (directory / "a.json").write_text(
        json.dumps({"x": [[1, 2, 3]], "ids": [4], "state": [0.5, 0.5]})
    )
    x = np.ones((2, 3), np.float64)  # float64 in the file is cast to the input's float32
    np.savez(directory / "b.npz", x=x, ids=np.array([1, 2]), state=np.zeros(2, np.float32))
    (directory / "notes.txt").write_text("ignored")
    first, second = load_samples(directory, IO, CONFIG)
    assert first["x"].dtype == np.float32 and first["x"].tolist() == [[1, 2, 3]]
    assert first["sr"] == 16000 and first["sr"].dtype == np.int64
    assert second["x"].dtype == np.float32 and second["x"].shape == (2, 3)
    assert second["ids"].tolist() == [1, 2] and second["sr"] == 16000


def test_load_samples_missing_input(tmp_path: Path) -> None:
    directory = _sample_dir(tmp_path)
    (directory / "a.json").write_text(json.dumps({"x": [[1, 2, 3]], "state": [0, 0]}))
    with pytest.raises(ConfigError, match=r"a\.json: no value for input 'ids'"):
        load_samples(directory, IO, CONFIG)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([1.7], "has float64 values, the model expects int64"),
        ([2**70], "not a rectangular array|has null or mixed values"),
        (["one"], "has string values"),
    ],
)
def test_load_samples_refuses_values_that_do_not_fit(
    tmp_path: Path, ids: list[object], match: str
) -> None:
    directory = _sample_dir(tmp_path)
    (directory / "a.json").write_text(json.dumps({"x": [[1, 2, 3]], "ids": ids, "state": [0, 0]}))
    with pytest.raises(ConfigError, match=match):
        load_samples(directory, IO, CONFIG)


def test_load_samples_int_overflow_is_a_config_error(tmp_path: Path) -> None:
    io = ModelIO((TensorSpec("px", DType.UINT8, (2,)),), (), {})
    directory = _sample_dir(tmp_path)
    (directory / "a.json").write_text(json.dumps({"px": [0, 300]}))
    with pytest.raises(ConfigError, match=r"a\.json: input 'px' has values outside uint8's range"):
        load_samples(directory, io, ModelConfig.from_dict({}, default_name="m"))


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("a.json", b"{not json", "not readable JSON"),
        ("a.json", b"[1, 2]", "must be a JSON object"),
        ("a.npz", b"PK\x03\x04truncated", r"a\.npz: not a readable \.npz"),
        ("a.npz", b"", r"a\.npz: not a readable \.npz"),
    ],
)
def test_load_samples_unreadable_file(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    directory = _sample_dir(tmp_path)
    (directory / name).write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_samples(directory, IO, CONFIG)


Outputs = Mapping[str, np.ndarray]


def _compare(got: list[Outputs], want: list[Outputs], tol: Tolerance = FP32) -> ParityReport:
    """compare() where sample i makes the artifact return got[i] and the reference want[i]."""
    samples = [{"i": np.array(i)} for i in range(len(want))]
    return compare(
        lambda feeds: got[int(feeds["i"])],
        lambda feeds: want[int(feeds["i"])],
        samples,
        tol,
        "test",
    )


def _one(got: list[float], want: list[float], tol: Tolerance = FP32) -> ParityReport:
    return _compare([{"y": np.array(got, np.float32)}], [{"y": np.array(want, np.float32)}], tol)


def test_compare_passes_within_tolerance() -> None:
    report = _one([1.00005, -2.0001, 0.0], [1.0, -2.0, 0.0])
    assert report.passed and report.samples == 1
    report.raise_if_failed()
    assert report.to_dict()["outputs"]["y"]["passed"] is True
    assert report.summary().startswith("passed on 1 sample(s): y")


def test_compare_fails_naming_output_and_worst_element() -> None:
    want = np.zeros((2, 3), np.float32)
    near, far = want.copy(), want.copy()
    near[0, 0] = 0.01
    far[1, 2] = 1.0
    report = _compare([{"y": near}, {"y": far}], [{"y": want}, {"y": want}])
    (y,) = report.outputs
    assert not report.passed and not y.passed
    assert y.worst_index == (1, 2) and y.max_abs == pytest.approx(1.0)
    with pytest.raises(ParityError, match=r"output 'y' differs .* by 1 .*at index \[1, 2\]"):
        report.raise_if_failed()


def test_compare_worst_index_is_a_failing_element() -> None:
    # A large absolute error that rtol allows must not hide a smaller one that fails.
    report = _one([1000.5, 0.1], [1000.0, 0.0], Tolerance(atol=1e-3, rtol=1e-3))
    assert not report.passed and report.outputs[0].worst_index == (1,)


def test_compare_integer_outputs_must_match_exactly() -> None:
    big = np.array([1_000_000_000, 7], np.int64)
    report = _compare([{"ids": big + np.array([1, 0])}], [{"ids": big}], INT8)
    assert not report.passed
    assert report.outputs[0].max_abs == 1.0 and report.outputs[0].worst_index == (0,)
    assert _compare([{"ids": big.copy()}], [{"ids": big}], INT8).passed


def test_compare_nan_and_inf() -> None:
    nan, inf = float("nan"), float("inf")
    assert _one([nan, 1.0], [nan, 1.0]).passed
    assert _one([-inf, inf], [-inf, inf]).passed
    assert not _one([nan, 1.0], [0.0, 1.0]).passed
    nan_in_reference = _one([0.0], [nan]).outputs[0]
    assert not nan_in_reference.passed and nan_in_reference.max_rel == inf
    assert not _one([inf], [-inf]).passed
    assert not _one([inf], [1.0]).passed


def test_compare_shape_mismatch_raises() -> None:
    with pytest.raises(ParityError, match=r"output 'y' has shape \[3\], the reference \[1, 3\]"):
        _compare([{"y": np.zeros(3)}], [{"y": np.zeros((1, 3))}])


def test_compare_missing_output_raises() -> None:
    with pytest.raises(ParityError, match="the artifact has no output 'y'"):
        _compare([{"z": np.zeros(3)}], [{"y": np.zeros(3)}])
