"""Tensor payload codecs: nested lists, base64 tensors and ``.npy`` in (JSON out: ``jsonout``).

Pure functions, no I/O. Every decoding failure is a :class:`PayloadError` whose ``code`` names the
protocol error it becomes (``bad_request``, ``bad_input`` or ``too_large``); ``edgert.protocol``
maps it to a ``ProtocolError`` at its boundary. Wire conventions:

- base64 tensors (``{"dtype", "shape", "b64"}``) are little-endian, C order, standard alphabet
  with padding; ``bool`` elements are bytes 0 or 1.
- ``.npy`` payloads are versions 1.0 and 2.0 of numpy's format; object (pickled) and structured
  dtypes are refused, Fortran order and big-endian data are accepted and made C-order native.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import reprlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.lib.format as npy_format

from edgert.errors import ConfigError, EdgertError, InputError, first_line
from edgert.spec import DimRange, DType, TensorSpec, check_shared_dims

if TYPE_CHECKING:  # annotation only: pure codecs do not import the onnx layer at run time
    from edgert.spec import ModelIO

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "MAX_NESTING",
    "MAX_RANK",
    "NPY_MAGIC",
    "InputsDecoder",
    "PayloadError",
    "PayloadFormat",
    "check_array",
    "decode_b64",
    "decode_input",
    "decode_inputs",
    "decode_npy",
    "decode_raw",
    "sniff_format",
]

DEFAULT_MAX_ELEMENTS = 1 << 24  # 16M elements: 64 MiB of float32, far beyond any sane request
MAX_NESTING = 64
MAX_RANK = 32  # numpy 1.x's limit; no model input comes near it
NPY_MAGIC = b"\x93NUMPY"

PayloadCode = Literal["bad_request", "bad_input", "too_large"]
PayloadFormat = Literal["json", "npy", "raw", "jpeg", "png", "wav"]
_DECLARABLE: dict[str, PayloadFormat] = {f: f for f in ("raw", "jpeg", "png", "wav", "npy")}
_CONTENT_TYPES: dict[str, PayloadFormat] = {
    "application/json": "json",
    "application/x-npy": "npy",
    "application/octet-stream": "raw",
    "image/jpeg": "jpeg",
    "image/png": "png",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
}


class PayloadError(EdgertError):
    """A payload or tensor cannot be decoded; ``code`` is the protocol error code it maps to."""

    def __init__(self, code: PayloadCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _too_large(what: str, count: int, max_elements: int) -> PayloadError:
    return PayloadError("too_large", f"{what} has {count} elements; the limit is {max_elements}")


def _element_count(shape: Sequence[int], what: str, max_elements: int) -> int:
    """The elements of a declared ``shape``, refused (too_large) beyond ``max_elements``. A
    zero-size shape's other dims are bounded too: numpy cannot even make ``[0, 2**64]``."""
    count = math.prod(shape)
    if count > max_elements:
        raise _too_large(what, count, max_elements)
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


def _from_bytes(
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


def decode_b64(
    obj: Mapping[str, Any], name: str, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> np.ndarray:
    """Decode a ``{"dtype", "shape", "b64"}`` tensor for input ``name``."""
    what = f"input '{name}'"
    if set(obj) != {"dtype", "shape", "b64"}:
        raise PayloadError(
            "bad_input",
            f"{what}: a base64 tensor has exactly the keys b64, dtype, shape; got "
            f"{', '.join(sorted(map(str, obj))) or 'none'}",
        )
    dtype_name, shape, text = obj["dtype"], obj["shape"], obj["b64"]
    if not isinstance(dtype_name, str) or dtype_name not in {d.value for d in DType}:
        supported = ", ".join(d.value for d in DType)
        shown = reprlib.repr(dtype_name)  # any JSON value, of any depth
        raise PayloadError("bad_input", f"{what}: dtype {shown}; supported: {supported}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise PayloadError(
            "bad_input",
            f"{what}: shape must be a list of at most {MAX_RANK} sizes >= 0, got "
            f"{reprlib.repr(shape)}",
        )
    count = _element_count(shape, what, max_elements)
    if not isinstance(text, str):
        raise PayloadError("bad_input", f"{what}: b64 must be a string")
    wire = np.dtype(dtype_name).newbyteorder("<")
    expected = count * wire.itemsize
    # Refuse before decoding when the text cannot possibly hold the declared bytes.
    if len(text) != 4 * math.ceil(expected / 3):
        raise PayloadError(
            "bad_input",
            f"{what}: b64 holds about {len(text) * 3 // 4} bytes; dtype {dtype_name} and shape "
            f"{shape} need {expected}",
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError("bad_input", f"{what}: invalid base64: {exc}") from exc
    if len(data) != expected:
        raise PayloadError(
            "bad_input",
            f"{what}: b64 holds {len(data)} bytes; dtype {dtype_name} and shape {shape} need "
            f"{expected}",
        )
    return _from_bytes(data, wire, tuple(shape), False, what)


def sniff_format(
    payload: bytes, content_type: str | None, declared: str | None = None
) -> PayloadFormat:
    """Decide a request payload's format, in DESIGN's order: the MQTT 5 Content Type (parameters
    such as ``; charset=`` ignored); else the format the model declares (raw, jpeg, png, wav,
    npy); else JSON if it starts like an object; else ``.npy`` by its magic; else bad_request.

    Raw bytes are accepted only where the model declares ``raw`` (a raw payload may start with
    ``{``); whether the model takes jpeg, png or wav is its pipeline's call. ConfigError for a
    declared format that does not exist.
    """
    if declared is not None and declared not in (*_DECLARABLE, "json"):
        raise ConfigError(f"input format {declared!r}; one of json, {', '.join(_DECLARABLE)}")
    if content_type:
        fmt = _CONTENT_TYPES.get(content_type.split(";", 1)[0].strip().lower())
        if fmt is None:
            raise PayloadError(
                "bad_request",
                f"content type {content_type[:100]!r} is not served; use one of "
                f"{', '.join(_CONTENT_TYPES)}",
            )
        if fmt == "raw" and declared != "raw":
            raise PayloadError(
                "bad_request", "raw bytes are accepted only by models that declare a raw input"
            )
        return fmt
    if declared in _DECLARABLE:
        return _DECLARABLE[declared]
    if payload.lstrip(b" \t\r\n")[:1] == b"{":
        return "json"
    if payload.startswith(NPY_MAGIC):
        return "npy"
    raise PayloadError(
        "bad_request", "payload is neither a JSON object nor .npy, and the model declares no format"
    )


def _check_nesting(value: Any, name: str) -> None:
    # A rectangular tensor's depth is that of its first-element chain; anything deeper elsewhere
    # is ragged and numpy refuses it, so following one chain is enough (and O(depth)).
    depth = 0
    while isinstance(value, list):
        depth += 1
        if depth > MAX_NESTING:
            raise PayloadError(
                "bad_request", f"input '{name}' is nested deeper than {MAX_NESTING} levels"
            )
        if not value:
            return
        value = value[0]


def decode_input(
    value: Any,
    spec: TensorSpec,
    bounds: Mapping[str, DimRange],
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> np.ndarray:
    """Decode a JSON input value (nested list, number, or base64 tensor object) for ``spec``,
    cast to its dtype where that keeps the kind of value, and check it against the spec."""
    if isinstance(value, list | int | float):  # bool is an int
        _check_nesting(value, spec.name)
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            what = f"input '{spec.name}'"
            raise PayloadError("bad_input", f"{what} is not a rectangular array: {exc}") from exc
        if array.size > max_elements:
            raise _too_large(f"input '{spec.name}'", array.size, max_elements)
        if array.size == 0 and array.dtype.kind in "biuf":
            array = array.astype(spec.dtype.numpy)  # [] parses as float64; empty fits any dtype
    elif isinstance(value, Mapping):
        array = decode_b64(value, spec.name, max_elements)
    else:
        what = f"input '{spec.name}'"
        raise PayloadError(
            "bad_input",
            f"{what} must be a nested list of numbers or {{dtype, shape, b64}}, got "
            f"{type(value).__name__}",
        )
    return check_array(array, spec, bounds)


def decode_inputs(
    raw: Any, specs: Sequence[TensorSpec], io: ModelIO, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> dict[str, np.ndarray]:
    """Decode a JSON request's ``inputs``: an object of name: tensor, or (when ``specs``, the
    inputs a device sends, are one) the tensor itself. ``io`` gives the dim bounds and tells
    inputs the daemon supplies from unknown ones; ``max_elements`` bounds all inputs together.
    """
    if isinstance(raw, list):
        if len(specs) != 1:
            raise PayloadError(
                "bad_input",
                f"the model takes {len(specs)} inputs ({', '.join(s.name for s in specs)}); "
                "send inputs as an object of name: tensor",
            )
        raw = {specs[0].name: raw}
    if not isinstance(raw, dict):
        raise PayloadError(
            "bad_request", "inputs must be an object of name: tensor (or a list, for one input)"
        )
    by_name = {s.name: s for s in specs}
    if raw.keys() != by_name.keys():
        wanted = ", ".join(by_name) or "none"
        for name in raw:
            if name not in by_name:
                why = "is supplied by the daemon" if any(s.name == name for s in io.inputs) else ""
                raise PayloadError(
                    "bad_input",
                    f"input '{name}' {why or 'does not exist'}; the model takes: {wanted}",
                )
        missing = [n for n in by_name if n not in raw]
        raise PayloadError(
            "bad_input", f"missing input(s) {', '.join(missing)}; the model takes: {wanted}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        arrays[name] = decode_input(value, by_name[name], io.dims, max_elements)
        max_elements -= arrays[name].size
    try:
        check_shared_dims(specs, arrays)
    except InputError as exc:
        raise PayloadError("bad_input", exc.message) from exc
    return arrays


class InputsDecoder:
    """:func:`decode_inputs` for one model's request inputs, set up once (the daemon keeps one per
    model). The usual request to a model of one float input, a nested list of numbers within
    its bounds, takes a short path; anything else, every error included, takes the general one.
    Both give the same arrays and the same errors (tests/test_protocol.py and tests/fuzz check
    it)."""

    def __init__(self, specs: Sequence[TensorSpec], io: ModelIO) -> None:
        self.specs = tuple(specs)
        self.io = io
        self._name: str | None = None  # the one input's name, where the short path applies
        spec = self.specs[0] if len(self.specs) == 1 else None
        if (
            spec is None
            or spec.dtype.numpy.kind != "f"
            or len(set(spec.dynamic_dims)) != len(spec.dynamic_dims)
        ):
            return  # several inputs, an integer one, or a dim named twice: the general path
        self._name = spec.name
        self._dtype = spec.dtype.numpy
        self._limits = tuple(
            (d, d) if isinstance(d, int) else _dim_limits(io.dims.get(d)) for d in spec.shape
        )
        # No value of a float64 array whose sum of squares is below this overflows the cast.
        top = float(np.finfo(self._dtype).max)
        self._max_square = top * top if self._dtype.itemsize < 8 else math.inf
        # Every int64 fits float32 and float64; float16 stops at 65504, so its ints go the
        # general way (which refuses what would overflow).
        self._ints = self._dtype.itemsize >= 4

    def __call__(self, raw: Any, max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict[str, np.ndarray]:
        """The request's ``inputs`` decoded, as :func:`decode_inputs` gives them."""
        if self._name is not None and type(raw) is list:
            array = self._short(raw, max_elements)
            if array is not None:
                return {self._name: array}
        return decode_inputs(raw, self.specs, self.io, max_elements)

    def _short(self, raw: list[Any], max_elements: int) -> np.ndarray | None:
        """``raw`` as the one input, or None where the general path must look at it."""
        try:
            array = np.asarray(raw)
        except (ValueError, TypeError):
            return None
        kind = array.dtype
        if kind != np.float64 and not (kind == np.int64 and self._ints):
            return None  # bools, strings, nulls, mixed: the general path's checks and errors
        limits = self._limits
        if array.ndim != len(limits) or array.size > max_elements:
            return None
        for size, (low, high) in zip(array.shape, limits, strict=True):
            if not low <= size <= high:
                return None
        if kind == self._dtype:
            return array
        # A float64 beyond the target's range would become inf: the general path refuses it.
        # (NaN fails the test too, and the general path takes it.)
        if kind == np.float64 and not np.vdot(array, array) <= self._max_square:
            return None
        return array.astype(self._dtype)


def _dim_limits(bound: DimRange | None) -> tuple[int, float]:
    return (bound.min, bound.max) if bound is not None else (0, math.inf)


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
    wire: np.dtype[Any] = dtype  # read in the file's byte order; _from_bytes makes it native
    if any(d < 0 for d in shape) or len(shape) > MAX_RANK:
        raise PayloadError("bad_request", f".npy shape {list(shape)} is invalid")
    count = _element_count(shape, ".npy payload", max_elements)
    data = payload[fp.tell() :]
    expected = count * wire.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise PayloadError(
            "bad_request",
            f".npy payload {state}: shape {list(shape)} of {wire.name} needs {expected} bytes of "
            f"data, got {len(data)}",
        )
    return _from_bytes(data, wire, tuple(shape), bool(fortran), ".npy payload")


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
        raise _too_large("raw payload", count, max_elements)
    shape = tuple(d if isinstance(d, int) else len(payload) // max(fixed, 1) for d in spec.shape)
    array = _from_bytes(payload, dtype, shape, False, "raw payload")
    return check_array(array, spec, bounds)
