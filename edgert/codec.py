"""Tensor payload codecs: nested lists, base64 tensors and ``.npy`` in (JSON out: ``jsonout``).

Pure functions, no I/O. Every decoding failure is a :class:`PayloadError` whose ``code`` names the
protocol error it becomes (``bad_request``, ``bad_input`` or ``too_large``); ``edgert.protocol``
maps it to a ``ProtocolError`` at its boundary. The ``.npy`` and raw decoders, and the checks all
codecs share, live in ``bytecodec`` and are re-exported here. Wire conventions:

- base64 tensors (``{"dtype", "shape", "b64"}``) are little-endian, C order, standard alphabet
  with padding; ``bool`` elements are bytes 0 or 1.
- ``.npy`` payloads are versions 1.0 and 2.0 of numpy's format; object (pickled) and structured
  dtypes are refused, Fortran order and big-endian data are accepted and made C-order native.
"""

from __future__ import annotations

import base64
import binascii
import math
import reprlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgert.bytecodec import (
    DEFAULT_MAX_ELEMENTS,
    MAX_RANK,
    NPY_MAGIC,
    PayloadError,
    check_array,
    decode_npy,
    decode_raw,
    element_count,
    from_bytes,
    too_large,
)
from edgert.errors import ConfigError, InputError
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
    "without_bom",
]

MAX_NESTING = 64

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
    count = element_count(shape, what, max_elements)
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
    return from_bytes(data, wire, tuple(shape), False, what)


# RFC 8259 lets a JSON parser ignore a UTF-8 byte order mark; Windows tools write one.
_BOM = b"\xef\xbb\xbf"


def without_bom(payload: bytes) -> bytes:
    """``payload`` without a leading UTF-8 byte order mark."""
    return payload[3:] if payload.startswith(_BOM) else payload


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
    if without_bom(payload).lstrip(b" \t\r\n")[:1] == b"{":
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
            raise too_large(f"input '{spec.name}'", array.size, max_elements)
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
