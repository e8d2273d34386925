"""JSON out: replies, compact floats, and the one encoder edgert's MQTT payloads go through.

Pure functions, no I/O. Float16/float32 values are written with the fewest digits that read back
to the same value (``0.1``, not ``0.10000000149011612``); NaN and infinities become ``null``.
JSON is orjson's (UTF-8, numpy arrays written in C, far faster than the standard library); what
orjson refuses (a lone surrogate, an integer beyond 64 bits) goes out through the standard
library's ASCII encoder instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

__all__ = ["dumps", "ok_reply", "tensor_to_json", "to_jsonable"]

_SMALL = 48  # up to this many floats, per-element repr beats the vectorised passes


def _short_floats(array: np.ndarray) -> np.ndarray:
    """float64 values whose ``repr`` is the shortest decimal that reads back, in ``array``'s own
    (narrower) float type, as the same value; vectorised, since numpy's per-element shortest
    formatting is far slower than ``tolist()``."""
    narrow = array.dtype
    target = array.ravel()
    x = target.astype(np.float64)
    out = x.copy()
    todo = np.isfinite(x) & (x != 0)
    max_digits = 9 if narrow.itemsize == 4 else 5  # enough to round-trip float32 / float16
    with np.errstate(all="ignore"):
        exp = np.floor(np.log10(np.abs(np.where(todo, x, 1.0)))).astype(np.int64)
        for digits in range(1, max_digits + 1):
            if not todo.any():
                break
            p = digits - 1 - exp
            # 10**|p| is exact for |p| <= 22, so n / 10**p is the double nearest the decimal,
            # and its repr is that decimal; rarer exponents keep the exact (longer) value.
            usable = todo & (np.abs(p) <= 22)
            scale = 10.0 ** np.abs(np.clip(p, -22, 22))
            n = np.where(p >= 0, np.rint(x * scale), np.rint(x / scale))
            y = np.where(p >= 0, n / scale, n * scale)
            hit = usable & (y.astype(narrow) == target)
            out[hit] = y[hit]
            todo &= ~hit
    shaped: np.ndarray = out.reshape(array.shape)
    return shaped


def _nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    """``flat`` (C order) as nested lists of ``shape``."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def tensor_to_json(array: np.ndarray) -> Any:
    """``array`` as nested lists of Python values; floats compact, NaN/inf as ``None``."""
    if array.dtype.kind != "f":
        return array.tolist()
    if array.size <= _SMALL and array.dtype.itemsize < 8:
        # numpy's own shortest repr per element, in plain Python: cheaper than the vectorised
        # passes' fixed cost on the small outputs most sensor models have.
        flat = [float(str(v)) for v in array.ravel()]
        return _nest([v if math.isfinite(v) else None for v in flat], array.shape)
    values = _short_floats(array) if array.dtype.itemsize < 8 else array.astype(np.float64)
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    boxed = values.astype(object)
    boxed[~finite] = None
    return boxed.tolist()


def to_jsonable(value: Any) -> Any:
    """``value`` (post-processed results, catalogue entries) with numpy values made plain, tuples
    made lists and non-finite floats made ``None``; TypeError for anything JSON cannot hold."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return tensor_to_json(value)
    if isinstance(value, np.generic):
        if value.dtype.kind in "biuf":  # numbers get tensor_to_json's compact floats
            return tensor_to_json(np.asarray(value))
        item: Any = value.item()
        return to_jsonable(item)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def ok_reply(
    id: str | int | None,
    model: str,
    version: str,
    outputs: Mapping[str, np.ndarray],
    result: Any = None,
    latency_ms: Mapping[str, float] | None = None,
    *,
    compact: bool = False,
    backend: str | None = None,
) -> bytes:
    """A success reply ``{"id", "ok": true, "model", "version", "backend", "outputs", "result",
    "latency_ms"}``. ``compact`` drops ``outputs`` and ``latency_ms`` so the reply fits a
    microcontroller's buffer; ``result`` (post-processed) is always there, ``null`` if none.
    ``backend`` (the runtime that answered: ``tensorrt``, ``onnxruntime``) is left out when
    None."""
    reply: dict[str, Any] = {"id": id, "ok": True, "model": model, "version": version}
    if backend is not None:
        reply["backend"] = backend
    if not compact:
        # orjson writes arrays itself, float16 excepted: it would give float32's digits.
        reply["outputs"] = {
            name: tensor_to_json(a) if a.dtype.char == "e" else a for name, a in outputs.items()
        }
    reply["result"] = result  # post-processing's plain values: dumps writes them as they are
    if latency_ms is not None and not compact:
        reply["latency_ms"] = {k: round(float(v), 3) for k, v in latency_ms.items()}
    return dumps(reply)


# One encoder: json.dumps() with any non-default option builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _orjson_default(value: Any) -> Any:
    """What orjson does not write itself: arrays that are not C-contiguous, 0-d or of a dtype
    it lacks, and mappings that are not dicts."""
    if isinstance(value, np.ndarray | np.generic):
        return tensor_to_json(np.asarray(value))
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (orjson: UTF-8, numpy values written in C, non-finite floats as
    ``null``); what orjson refuses goes through :func:`to_jsonable` and the standard library's
    ASCII encoder, so an odd string (a lone surrogate) cannot break encoding."""
    try:
        encoded = orjson.dumps(obj, default=_orjson_default, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(to_jsonable(obj)).encode("ascii")
    # orjson's bytes keep its whole output buffer, many times a short reply's size: copied to
    # their own size, the replies the ledger caches hold only themselves, for a cheap copy.
    return memoryview(encoded).tobytes()
