"""edgert.spec: dtypes, dim bounds, and checking/coercing inputs against a TensorSpec."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgert.errors import ConfigError, InputError
from edgert.spec import DimRange, DType, TensorSpec, concrete_shape

BOUNDS = {"batch": DimRange(1, 2, 4)}
X = TensorSpec("x", DType.FLOAT32, ("batch", 3))


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("float32", DType.FLOAT32),
        (np.float16, DType.FLOAT16),
        (np.dtype("int8"), DType.INT8),
        (np.zeros(2, dtype=np.uint16), DType.UINT16),
        (np.int64(3), DType.INT64),
        (bool, DType.BOOL),
    ],
)
def test_dtype_of(value: Any, want: DType) -> None:
    assert DType.of(value) is want


@pytest.mark.parametrize("value", ["complex64", "nonsense", np.zeros(1, dtype="U3")])
def test_dtype_of_unsupported_lists_supported(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"unsupported dtype .*supported: float32, float16"):
        DType.of(value)


def test_dim_range_ordering_enforced() -> None:
    assert DimRange(0, 0, 0).as_list() == [0, 0, 0]
    for bad in [(2, 1, 3), (1, 4, 3), (-1, 0, 1)]:
        with pytest.raises(ConfigError, match="min <= opt <= max"):
            DimRange(*bad)


def test_dim_range_contains() -> None:
    rng = DimRange(1, 2, 4)
    assert 1 in rng and 4 in rng
    assert 0 not in rng and 5 not in rng and "2" not in rng


def test_concrete_shape() -> None:
    assert concrete_shape(X.shape, BOUNDS) == (2, 3)
    assert concrete_shape(X.shape, BOUNDS, "max") == (4, 3)


def test_check_accepts_fitting_array() -> None:
    X.check(np.zeros((4, 3), np.float32), BOUNDS)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((2, 3), np.float64), "dtype float64, the model expects float32"),
        (np.zeros((2, 3, 1), np.float32), r"shape \[2, 3, 1\], the model expects rank 2"),
        (np.zeros((2, 5), np.float32), r"axis 1 must be 3"),
        (np.zeros((5, 3), np.float32), r"axis 0 \('batch'\) is 5, allowed 1..4"),
        (np.zeros((0, 3), np.float32), r"axis 0 \('batch'\) is 0, allowed 1..4"),
    ],
)
def test_check_rejects(array: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        X.check(array, BOUNDS)


def test_check_same_dim_name_must_agree_within_a_tensor() -> None:
    square = TensorSpec("m", DType.FLOAT32, ("n", "n"))
    square.check(np.zeros((3, 3), np.float32), {})
    with pytest.raises(InputError, match="axes named 'n' differ: 2 and 3"):
        square.check(np.zeros((2, 3), np.float32), {})


def test_coerce_converts_lists_to_the_spec_dtype() -> None:
    out = X.coerce([[1, 2, 3]])
    assert out.dtype == np.float32 and out.shape == (1, 3)
    ints = TensorSpec("ids", DType.INT32, ("n",)).coerce(np.array([1, 2], np.int64))
    assert ints.dtype == np.int32 and ints.tolist() == [1, 2]


def test_coerce_signed_list_to_unsigned_within_range() -> None:
    # JSON lists arrive as int64; uint8 image inputs must still accept them.
    pixels = TensorSpec("img", DType.UINT8, ("n",)).coerce([0, 128, 255])
    assert pixels.dtype == np.uint8 and pixels.tolist() == [0, 128, 255]


def test_coerce_returns_matching_array_unchanged() -> None:
    array = np.zeros((1, 3), np.float32)
    assert X.coerce(array) is array


@pytest.mark.parametrize(
    ("dtype", "value", "match"),
    [
        (DType.INT64, [1.5, 2.0], "has float64 values, the model expects int64"),
        (DType.BOOL, [0, 1], "has int64 values, the model expects bool"),
        (DType.UINT8, [0, 256], "outside uint8's range"),
        (DType.UINT8, [-1], "outside uint8's range"),
        (DType.INT8, np.array([200], np.int64), "outside int8's range"),
        (DType.FLOAT32, ["1.0"], "has string values, the model expects float32"),
        (DType.FLOAT32, [1.0, None], "has null or mixed values, the model expects float32"),
        (DType.FLOAT32, [[1, 2], [3]], "not a rectangular array"),
    ],
)
def test_coerce_refuses(dtype: DType, value: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        TensorSpec("v", dtype, ("n",)).coerce(value)


def test_to_dict_from_dict_round_trip() -> None:
    spec = TensorSpec("ids", DType.INT64, ("batch", 7, "seq"))
    data = spec.to_dict()
    assert data == {"name": "ids", "dtype": "int64", "shape": ["batch", 7, "seq"]}
    assert TensorSpec.from_dict(data) == spec


@pytest.mark.parametrize(
    "data", [{"name": "x", "shape": [1]}, {"name": "x", "dtype": "complex64", "shape": [1]}]
)
def test_from_dict_invalid(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="invalid tensor spec"):
        TensorSpec.from_dict(data)
