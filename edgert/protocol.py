"""The MQTT protocol as pure values (no MQTT library): topics, requests, replies, error codes.

The topic tree is :mod:`edgert.topics`'s (see DESIGN.md "Protocol"), re-exported here.

A request is decoded into a :class:`Request`; anything wrong with it raises :class:`ProtocolError`,
whose ``code`` is one of :class:`ErrorCode` and which :func:`error_reply` turns into the reply the
device gets. JSON ``NaN``/``Infinity`` tokens are accepted for float inputs (sensors report NaN for
"no reading") and refused for integer and bool inputs, as any float is; a leading UTF-8 byte order
mark is ignored. Requests are read by orjson (the standard library where orjson refuses: NaN
tokens, lone surrogates), which reads an integer beyond 64 bits as the nearest float: a float
input takes it, an id or an integer input refuses it.

An ``id`` comes back exactly as it was sent: a JSON string as that string, an integer (up to 64
bits) as that integer; any other type is ``bad_request``. ``1`` and ``"1"`` are two ids.
"""

from __future__ import annotations

import contextlib
import json
import math
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import orjson

from edgert.codec import (
    DEFAULT_MAX_ELEMENTS,
    InputsDecoder,
    PayloadError,
    PayloadFormat,
    check_array,
    decode_inputs,
    decode_npy,
    decode_raw,
    sniff_format,
    without_bom,
)
from edgert.jsonout import ok_reply
from edgert.replies import (
    MAX_ID_CHARS,
    MODEL_STATES,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    RequestId,
    catalogue,
    error_code,
    error_reply,
)
from edgert.spec import TensorSpec
from edgert.topics import RequestTopic, Topics, default_node_id, sanitize_node_id

if TYPE_CHECKING:  # annotation only: this layer does not import the onnx layer at run time
    from edgert.spec import ModelIO

__all__ = [
    "MAX_ID_CHARS",
    "MODEL_STATES",
    "OFFLINE",
    "ONLINE",
    "PROTOCOL_VERSION",
    "Envelope",
    "ErrorCode",
    "PayloadFormat",
    "ProtocolError",
    "Request",
    "RequestId",
    "RequestTopic",
    "Topics",
    "catalogue",
    "default_node_id",
    "detect_format",
    "error_code",
    "error_reply",
    "ok_reply",
    "parse_json_request",
    "parse_npy",
    "parse_raw",
    "peek_envelope",
    "preprocessed",
    "sanitize_node_id",
    "tensor_request",
]

ONLINE = "online"
OFFLINE = "offline"
# An integer id as orjson reads it: 64 bits, signed or unsigned (a larger one reads as a float).
_ID_RANGE = (-(1 << 63), (1 << 64) - 1)


_REQUEST_KEYS = {"v", "id", "reply_to", "deadline_ms", "stream", "reset", "compact", "inputs"}
_PLAIN_KEYS = {"id", "reply_to", "inputs"}  # most requests: the other keys need no checks


# -------------------------------------------------------------------------------------- requests


class Request(msgspec.Struct, frozen=True):
    """A decoded request. ``deadline_ms`` counts from the daemon's receipt; ``correlation`` is
    MQTT 5 Correlation Data, echoed on the reply."""

    model: str
    id: RequestId | None
    reply_to: str | None
    deadline_ms: float | None
    stream: str | None
    reset: bool
    compact: bool
    inputs: Mapping[str, np.ndarray]
    correlation: bytes | None = None


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


class _answerable:
    """Map codec errors to ProtocolError, and give every ProtocolError what is known of the
    request, so the daemon can still answer it. (A class: it is entered twice per request, and a
    generator-based context manager costs several times as much.)"""

    __slots__ = ("reply_to", "request_id")

    def __init__(self, request_id: RequestId | None = None, reply_to: str | None = None) -> None:
        self.request_id, self.reply_to = request_id, reply_to

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, PayloadError | ProtocolError):
            error = _known(exc, self.request_id, self.reply_to)
            if error is not exc:
                raise error from exc


def _known(
    exc: PayloadError | ProtocolError, request_id: RequestId | None, reply_to: str | None
) -> ProtocolError:
    """``exc`` as a ProtocolError that carries what is known of the request."""
    if isinstance(exc, PayloadError):
        return ProtocolError(error_code(exc), exc.message, request_id=request_id, reply_to=reply_to)
    exc.request_id, exc.reply_to = request_id, reply_to
    return exc


_ABSENT: Any = object()


def _request_id(value: Any) -> RequestId | None:
    """A request's id as sent: a string of 1..128 characters or a 64-bit integer; ``_ABSENT``
    (no id key) is None. Anything else (float, bool, null, object, array) is bad_request."""
    if value is _ABSENT:
        return None
    kind = type(value)
    if kind is str and 0 < len(value) <= MAX_ID_CHARS:
        return value  # type: ignore[no-any-return]
    if kind is int and _ID_RANGE[0] <= value <= _ID_RANGE[1]:
        return value  # type: ignore[no-any-return]
    got = "null" if value is None else reprlib.repr(value)
    if kind is float and value.is_integer() and not _ID_RANGE[0] <= value <= _ID_RANGE[1]:
        got += ", a number beyond 64 bits"  # the JSON reader makes such an integer a float
    raise _bad(
        f"id must be a string of 1 to {MAX_ID_CHARS} characters or a 64-bit integer, got {got}"
    )


def _ident(value: Any, what: str) -> str | None:
    """A stream id: a string or integer (made a string) of 1..128 characters."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS):
        raise _bad(f"{what} must be a string or integer of 1 to {MAX_ID_CHARS} characters")
    return value


def _flag(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key) or False  # absent and null mean false
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false, got {type(value).__name__}")
    return value


def _deadline(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise _bad(
            f"deadline_ms must be a positive number of milliseconds, got {reprlib.repr(value)}"
        )
    return float(value)


def _json_object(payload: bytes) -> dict[str, Any]:
    """The request's JSON object; bad_request for anything else."""
    payload = without_bom(payload)
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # orjson refuses NaN and Infinity tokens (sensors send them) and lone surrogates; the
        # standard library reads them, and words the errors of what is not JSON at all.
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise _bad(f"not a JSON request: {str(exc)[:200] or type(exc).__name__}") from exc
    if not isinstance(doc, dict):
        raise _bad(f"a JSON request is an object, got {type(doc).__name__}")
    return doc


def _options(doc: dict[str, Any]) -> tuple[float | None, str | None, bool, bool]:
    """The envelope's optional keys, checked: deadline_ms, stream, reset and compact."""
    if not doc.keys() <= _REQUEST_KEYS:
        unknown = ", ".join(sorted(set(doc) - _REQUEST_KEYS))
        raise _bad(f"unknown key(s) {unknown}; known: {', '.join(sorted(_REQUEST_KEYS))}")
    version = doc.get("v", PROTOCOL_VERSION)
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = reprlib.repr(version)  # a value of any depth: repr() could recurse too deep
        raise _bad(f"protocol version {shown} is not supported; this daemon speaks 1")
    deadline_ms = _deadline(doc.get("deadline_ms"))
    stream = _ident(doc.get("stream"), "stream")
    reset, compact = _flag(doc, "reset"), _flag(doc, "compact")
    if reset and stream is None:
        raise _bad("reset needs a stream")
    return deadline_ms, stream, reset, compact


def parse_json_request(
    payload: bytes,
    io: ModelIO,
    *,
    model: str,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    request_specs: Sequence[TensorSpec] | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    decoder: InputsDecoder | None = None,
) -> Request:
    """Decode a JSON request to ``model``, whose inputs are checked against ``io``.

    ``request_specs`` are the inputs a device sends (default: all of ``io.inputs``; the daemon
    leaves out the constant ones, which model.toml fills in; carried and windowed inputs are
    still sent by the device until the daemon keeps stream state). ``decoder``, set up once for
    them, saves the daemon redoing that on every request (it replaces ``request_specs``).
    ``response_topic`` (MQTT 5) takes precedence over the envelope's ``reply_to``.
    ``max_elements`` bounds the elements of all inputs together. Unknown keys are refused, so a
    typo (``deadline`` for ``deadline_ms``) does not silently do nothing.
    """
    doc = _json_object(payload)
    raw_reply = doc.get("reply_to")
    reply_to = response_topic or (raw_reply if isinstance(raw_reply, str) and raw_reply else None)
    request_id: RequestId | None = None
    try:  # errors get what is known of the request (see _answerable), without a context manager
        request_id = _request_id(doc.get("id", _ABSENT))  # on every request: a try costs nothing
        deadline_ms = stream = None
        reset = compact = False
        if raw_reply is not None and not (isinstance(raw_reply, str) and raw_reply):
            raise _bad("reply_to must be a topic string")
        if not doc.keys() <= _PLAIN_KEYS:  # more than the usual keys: check the rest
            deadline_ms, stream, reset, compact = _options(doc)
        if doc.get("inputs") is None:
            raise _bad("missing inputs")
        # The envelope is checked first: decoding tensors is the expensive part.
        if decoder is not None:
            inputs = decoder(doc["inputs"], max_elements)
        else:
            specs = io.inputs if request_specs is None else request_specs
            inputs = decode_inputs(doc["inputs"], specs, io, max_elements)
    except (PayloadError, ProtocolError) as exc:
        error = _known(exc, request_id, reply_to)
        if error is exc:
            raise
        raise error from exc
    return Request(
        model=model,
        id=request_id,
        reply_to=reply_to,
        deadline_ms=deadline_ms,
        stream=stream,
        reset=reset,
        compact=compact,
        inputs=MappingProxyType(inputs),
        correlation=correlation,
    )


def parse_npy(payload: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
    """A ``.npy`` payload as a C-order native array; never unpickles (object dtypes refused)."""
    with _answerable():
        array = decode_npy(payload, max_elements)
    return array


def parse_raw(
    payload: bytes,
    spec: TensorSpec,
    io: ModelIO,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> np.ndarray:
    """Raw bytes as the one request input ``spec`` of a model that declares ``format = "raw"``."""
    with _answerable():
        array = decode_raw(payload, spec, io.dims, max_elements)
    return array


def preprocessed(payload: bytes, decode: Callable[[bytes], tuple[np.ndarray, Any]]) -> Any:
    """``decode(payload)`` (a model.toml pre-processing pipeline), its payload errors answered
    as structured errors."""
    with _answerable():
        return decode(payload)


def tensor_request(
    array: np.ndarray,
    io: ModelIO,
    *,
    model: str,
    id: RequestId | None = None,
    stream: str | None = None,
    reset: bool = False,
    compact: bool = False,
    reply_to: str | None = None,
    correlation: bytes | None = None,
    request_specs: Sequence[TensorSpec] | None = None,
) -> Request:
    """A request from one binary-decoded tensor (``.npy``, or a pre-processed image or sound),
    for a model with exactly one request input. ``id``/``stream``/``compact`` come from MQTT 5
    user properties or the topic's ``<key>`` and are checked as in JSON."""
    specs = io.inputs if request_specs is None else request_specs
    with _answerable(None, reply_to):
        request_id = _request_id(_ABSENT if id is None else id)
    with _answerable(request_id, reply_to):
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise ProtocolError(
                ErrorCode.BAD_INPUT,
                f"a binary payload is one tensor; the model takes {len(specs)} ({names}): use JSON",
            )
        if reset and stream is None:
            raise _bad("reset needs a stream")
        inputs = {specs[0].name: check_array(array, specs[0], io.dims)}
        stream = _ident(stream, "stream")
    return Request(
        model=model,
        id=request_id,
        reply_to=reply_to,
        deadline_ms=None,
        stream=stream,
        reset=reset,
        compact=compact,
        inputs=MappingProxyType(inputs),
        correlation=correlation,
    )


def detect_format(
    payload: bytes, content_type: str | None, declared: str | None = None
) -> PayloadFormat:
    """A request payload's format (see :func:`edgert.codec.sniff_format`); ProtocolError
    (bad_request) when it cannot be told or is raw bytes for a model that declares no raw."""
    with _answerable():
        fmt = sniff_format(payload, content_type, declared)
    return fmt


@dataclass(frozen=True)
class Envelope:
    """What can be read of a request before its model is loaded (see :func:`peek_envelope`)."""

    id: RequestId | None = None
    reply_to: str | None = None
    deadline_ms: float | None = None


def peek_envelope(payload: bytes) -> Envelope:
    """The id, reply_to and deadline_ms of a JSON request, as far as they can be read: a request
    held while its model loads is answered with them if it waits too long. Anything unreadable
    is left out; the request is checked whole once its model is ready."""
    if without_bom(payload).lstrip(b" \t\r\n")[:1] != b"{":
        return Envelope()  # a picture, a sound: not worth reading as JSON
    try:
        doc = _json_object(payload)  # as parse_json_request reads it
    except ProtocolError:
        return Envelope()
    found: dict[str, Any] = {}
    with contextlib.suppress(ProtocolError):
        found["id"] = _request_id(doc.get("id", _ABSENT))
    reply_to = doc.get("reply_to")
    if isinstance(reply_to, str) and reply_to:
        found["reply_to"] = reply_to
    with contextlib.suppress(ProtocolError):
        found["deadline_ms"] = _deadline(doc.get("deadline_ms"))
    return Envelope(**found)
