"""Tensor payloads from bytes: ``.npy`` and raw little-endian tensors, and the checks and errors
every payload codec shares (``codec`` adds JSON and base64 on top, and re-exports these names).

Pure functions, no I/O. Every decoding failure is a :class:`PayloadError` whose ``code`` names the
protocol error it becomes (``bad_request``, ``bad_input`` or ``too_large``). ``.npy`` payloads are
versions 1.0 and 2.0 of numpy's format; object (pickled) and structured dtypes are refused,
Fortran order and big-endian data are accepted and made C-order native.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.lib.format as npy_format

from edgert.errors import ConfigError, EdgertError, InputError, first_line
from edgert.spec import DimRange, DType, TensorSpec

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "MAX_RANK",
    "NPY_MAGIC",
    "PayloadCode",
    "PayloadError",
    "check_array",
    "decode_npy",
    "decode_raw",
    "element_count",
    "from_bytes",
    "too_large",
]

DEFAULT_MAX_ELEMENTS = 1 << 24  # 16M elements: 64 MiB of float32, far beyond any sane request
MAX_RANK = 32  # numpy 1.x's limit; no model input comes near it
NPY_MAGIC = b"\x93NUMPY"

PayloadCode = Literal["bad_request", "bad_input", "too_large"]


class PayloadError(EdgertError):
    """A payload or tensor cannot be decoded; ``code`` is the protocol error code it maps to."""

    def __init__(self, code: PayloadCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def too_large(what: str, count: int, max_elements: int) -> PayloadError:
    return PayloadError("too_large", f"{what} has {count} elements; the limit is {max_elements}")


def element_count(shape: Sequence[int], what: str, max_elements: int) -> int:
    """The elements of a declared ``shape``, refused (too_large) beyond ``max_elements``. A
    zero-size shape's other dims are bounded too: numpy cannot even make ``[0, 2**64]``."""
    count = math.prod(shape)
    if count > max_elements:
        raise too_large(what, count, max_elements)
    if math.prod(d or 1 for d in shape) > max_elements:
        raise PayloadError(
            "too_large", f"{what} has shape {list(shape)}, beyond the limit of {max_elements}"
        )
    return count


def _check_dtype(dtype: np.dtype[Any], what: str) -> None:
    """A bad_input PayloadError unless edgert carries ``dtype`` (any byte order)."""
    if dtype.hasobject:
        raise PayloadError("bad_input", f"{what} is an object array (pickled data); refused")
    try:
        if dtype.names is not None or dtype.subdtype is not None:
            raise ConfigError(f"unsupported dtype {dtype}")
        DType.of(dtype)
    except ConfigError as exc:
        supported = ", ".join(d.value for d in DType)
        raise PayloadError(
            "bad_input", f"{what} has dtype {dtype.str}; supported: {supported}"
        ) from exc


def from_bytes(
    data: bytes, wire: np.dtype[Any], shape: tuple[int, ...], fortran: bool, what: str
) -> np.ndarray:
    """A C-order, native-endian copy of ``data`` read as ``wire`` elements of ``shape``."""
    native = wire.newbyteorder("=")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=native)
    flat = np.frombuffer(data, dtype=wire)
    if native.kind == "b" and flat.view(np.uint8).max() > 1:
        # Any non-zero byte would read as True but compare oddly; demand canonical bools.
        raise PayloadError("bad_input", f"{what} has bool bytes other than 0 and 1")
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return np.array(array, dtype=native, order="C", copy=True)


def check_array(array: np.ndarray, spec: TensorSpec, bounds: Mapping[str, DimRange]) -> np.ndarray:
    """``array`` cast to ``spec``'s dtype (same kind only) and checked against its shape."""
    try:
        # Overflow in a narrowing cast (1e300 → float32) would silently give inf: refuse it.
        with np.errstate(over="raise"):
            array = spec.coerce(array)
        spec.check(array, bounds)
    except FloatingPointError as exc:
        raise PayloadError(
            "bad_input", f"input '{spec.name}' has values outside {spec.dtype.value}'s range"
        ) from exc
    except InputError as exc:
        raise PayloadError("bad_input", exc.message) from exc
    return array


def _bad_header(exc: BaseException) -> PayloadError:
    return PayloadError("bad_request", f"invalid .npy header: {first_line(exc)}")


def _npy_header(fp: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    # numpy's header parser raises ValueError, SyntaxError, tokenize errors, RecursionError, ...
    # on hostile headers; whatever it raises, the payload is not a usable .npy.
    try:
        version = npy_format.read_magic(fp)
    except Exception as exc:
        raise _bad_header(exc) from exc
    if version not in ((1, 0), (2, 0)):
        # 3.0 exists only for structured dtypes with non-latin-1 names, which edgert refuses.
        raise PayloadError("bad_request", f".npy format {version} is not supported; use 1.0 or 2.0")
    read = (
        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    )
    try:
        shape, fortran, dtype = read(fp)
    except Exception as exc:
        raise _bad_header(exc) from exc
    return tuple(shape), bool(fortran), dtype


def decode_npy(payload: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    """Decode a ``.npy`` payload (format 1.0 or 2.0) without ever unpickling."""
    if not payload.startswith(NPY_MAGIC):
        raise PayloadError("bad_request", "not a .npy payload (no \\x93NUMPY magic)")
    fp = io.BytesIO(payload)
    shape, fortran, dtype = _npy_header(fp)
    _check_dtype(dtype, ".npy payload")
    wire: np.dtype[Any] = dtype  # read in the file's byte order; from_bytes makes it native
    if any(d < 0 for d in shape) or len(shape) > MAX_RANK:
        raise PayloadError("bad_request", f".npy shape {list(shape)} is invalid")
    count = element_count(shape, ".npy payload", max_elements)
    data = payload[fp.tell() :]
    expected = count * wire.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise PayloadError(
            "bad_request",
            f".npy payload {state}: shape {list(shape)} of {wire.name} needs {expected} bytes of "
            f"data, got {len(data)}",
        )
    return from_bytes(data, wire, tuple(shape), bool(fortran), ".npy payload")


def decode_raw(
    payload: bytes,
    spec: TensorSpec,
    bounds: Mapping[str, DimRange],
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> np.ndarray:
    """Raw little-endian bytes as ``spec``'s tensor: its shape when fixed, or with its one dynamic
    dim told by the payload's length (e.g. a stream of uint8 samples)."""
    dtype = spec.dtype.numpy.newbyteorder("<")
    dynamic = [i for i, d in enumerate(spec.shape) if not isinstance(d, int)]
    fixed = math.prod(d for d in spec.shape if isinstance(d, int)) * dtype.itemsize
    described = f"input '{spec.name}' {spec.dtype.value}{list(spec.shape)}"
    if len(dynamic) > 1:
        raise PayloadError(
            "bad_request", f"raw bytes cannot tell the shape of {described}: send .npy or JSON"
        )
    if not dynamic and len(payload) != fixed:
        raise PayloadError(
            "bad_input", f"raw payload is {len(payload)} bytes; {described} takes {fixed}"
        )
    if dynamic and (fixed == 0 or len(payload) % fixed):
        raise PayloadError(
            "bad_input",
            f"raw payload is {len(payload)} bytes; {described} takes a multiple of {fixed}",
        )
    count = len(payload) // dtype.itemsize
    if count > max_elements:
        raise too_large("raw payload", count, max_elements)
    shape = tuple(d if isinstance(d, int) else len(payload) // max(fixed, 1) for d in spec.shape)
    array = from_bytes(payload, dtype, shape, False, "raw payload")
    return check_array(array, spec, bounds)
