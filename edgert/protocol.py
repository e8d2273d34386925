"""The MQTT protocol as pure values: topics, request envelopes, replies and error codes. No paho.

Topics (prefix ``edgert``, see DESIGN.md "Protocol")::

    <prefix>/node/<node>/status | models | stats | events/<model>
    <prefix>/node/<node>/infer/<model>[/<key>]     requests pinned to one daemon
    <prefix>/infer/<model>[/<key>]                 pooled requests ($share/<group>/... when shared)
    <prefix>/reply/<key>/<model>                   default reply topic of a keyed request
    homeassistant/device/<node>/config             Home Assistant device discovery

A request is decoded into a :class:`Request`; anything wrong with it raises :class:`ProtocolError`,
whose ``code`` is one of :class:`ErrorCode` and which :func:`error_reply` turns into the reply the
device gets. JSON ``NaN``/``Infinity`` tokens are accepted for float inputs (sensors report NaN for
"no reading") and refused for integer and bool inputs, as any float is.
"""

from __future__ import annotations

import enum
import json
import math
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from edgert.codec import (
    DEFAULT_MAX_ELEMENTS,
    PayloadError,
    PayloadFormat,
    check_array,
    decode_inputs,
    decode_npy,
    dumps,
    ok_reply,
    sniff_format,
    to_jsonable,
)
from edgert.errors import ConfigError, EdgertError, InputError
from edgert.spec import TensorSpec

if TYPE_CHECKING:  # annotation only: this layer does not import the onnx layer at run time
    from edgert.onnx.model import ModelIO

__all__ = [
    "OFFLINE",
    "ONLINE",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "PayloadFormat",
    "ProtocolError",
    "Request",
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
    "sanitize_node_id",
    "tensor_request",
]

PROTOCOL_VERSION = 1
ONLINE = "online"
OFFLINE = "offline"
MAX_ID_CHARS = 128
MAX_TOPIC_BYTES = 65535  # MQTT's limit on a topic name's UTF-8 length
MAX_MESSAGE_CHARS = 400  # error messages stay well inside a microcontroller's 1 KiB buffer

_REQUEST_KEYS = {"v", "id", "reply_to", "deadline_ms", "stream", "reset", "compact", "inputs"}


class ErrorCode(str, enum.Enum):
    """The ``error.code`` of an error reply."""

    BAD_REQUEST = "bad_request"  # the envelope: not JSON, wrong field types, unknown format
    BAD_INPUT = "bad_input"  # an input tensor: names, dtype, shape, encoding
    TOO_LARGE = "too_large"
    NO_MODEL = "no_model"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    EXPIRED = "expired"
    INTERNAL = "internal"


class ProtocolError(EdgertError):
    """A request that cannot be served; becomes an error reply with ``code``.

    ``request_id`` and ``reply_to`` carry what was read of the request before it failed, so the
    daemon can still answer (a remote caller gets a structured reply, never silence).
    """

    code: ErrorCode

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: str | None = None,
        reply_to: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.reply_to = reply_to


def error_code(exc: BaseException) -> ErrorCode:
    """The protocol code an exception is answered with: its own code where edgert gave it one
    (ProtocolError, codec and input errors), else ``internal``."""
    if isinstance(exc, ProtocolError):
        return exc.code
    if isinstance(exc, PayloadError | InputError):
        return ErrorCode(exc.code)
    return ErrorCode.INTERNAL


# ---------------------------------------------------------------------------------------- topics


def sanitize_node_id(text: str) -> str:
    """``text`` reduced to ``[a-zA-Z0-9_-]`` (Home Assistant ids need it): other runs become one
    ``_``, leading/trailing ``_``/``-`` go; ``"edgert"`` if nothing is left."""
    node = re.sub(r"[^A-Za-z0-9_-]+", "_", text)
    node = re.sub(r"_+", "_", node).strip("_-")
    return node or "edgert"


def default_node_id() -> str:
    """The host name as a node id."""
    return sanitize_node_id(socket.gethostname())


def _level_ok(level: str) -> bool:
    # MQTT forbids NUL; '+'/'#' are wildcards; '.'/'..' are refused so no level can look like a
    # path step to a bridge, ACL pattern or log reader.
    return bool(level) and not any(c in level for c in "+#/\0") and level not in (".", "..")


def _check_topic_root(value: str, what: str) -> None:
    if not value or value.startswith("$") or not all(_level_ok(x) for x in value.split("/")):
        raise ConfigError(
            f"{what} {value!r} must be non-empty topic levels without wildcards, '$' or '..'"
        )


class RequestTopic(NamedTuple):
    """What a request topic says: the model, the optional ``<key>``, and whether node-pinned."""

    model: str
    key: str | None
    pinned: bool


@dataclass(frozen=True, kw_only=True)
class Topics:
    """Every topic one node uses, from its prefix and node id; validated when built.

    ``reply_prefix`` defaults to ``<prefix>/reply/`` (a trailing ``/`` is added); it may not
    overlap the request or node topics, or a device could make the daemon publish requests.
    ``share_group`` makes pooled subscriptions MQTT 5 shared ones.
    """

    node: str
    prefix: str = "edgert"
    reply_prefix: str | None = None
    share_group: str | None = None
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        _check_topic_root(self.prefix, "topic prefix")
        _check_topic_root(self.discovery_prefix, "discovery prefix")
        if self.node != sanitize_node_id(self.node):
            raise ConfigError(
                f"node id {self.node!r} must be [a-zA-Z0-9_-]; e.g. {sanitize_node_id(self.node)!r}"
            )
        if self.share_group is not None and not _level_ok(self.share_group):
            raise ConfigError(f"share group {self.share_group!r} must be one topic level")
        if self.reply_prefix is not None:
            # Frozen, so normalise through object.__setattr__; the value stays a str.
            object.__setattr__(self, "reply_prefix", self.reply_prefix.rstrip("/") + "/")
        reply = self.reply_root
        _check_topic_root(reply[:-1], "reply prefix")
        for other in (f"{self.prefix}/infer/", f"{self.prefix}/node/", f"{self.discovery_prefix}/"):
            if reply.startswith(other) or other.startswith(reply):
                raise ConfigError(f"reply prefix {reply!r} overlaps {other!r}")

    @property
    def reply_root(self) -> str:
        """The reply prefix, ending in ``/``."""
        return self.reply_prefix or f"{self.prefix}/reply/"

    @property
    def _node_root(self) -> str:
        return f"{self.prefix}/node/{self.node}"

    @property
    def status(self) -> str:
        return f"{self._node_root}/status"

    @property
    def models(self) -> str:
        """The retained catalogue."""
        return f"{self._node_root}/models"

    @property
    def stats(self) -> str:
        return f"{self._node_root}/stats"

    @property
    def discovery(self) -> str:
        """Home Assistant device discovery (retained)."""
        return f"{self.discovery_prefix}/device/{self.node}/config"

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces ``online`` (then discovery is re-sent)."""
        return f"{self.discovery_prefix}/status"

    def events(self, name: str) -> str:
        """Results of a model, or of a source, for Home Assistant."""
        return f"{self._node_root}/events/{_level(name, 'model or source name')}"

    def node_infer(self, model: str | None = None) -> str:
        """Subscription filter for requests pinned to this node: one model, or all (``None``;
        for answering ``no_model``)."""
        return f"{self._node_root}/infer/" + (f"{_level(model, 'model')}/#" if model else "#")

    def pooled_infer(self, model: str) -> str:
        """Subscription filter for pooled requests to ``model`` (``#`` also matches no key)."""
        filt = f"{self.prefix}/infer/{_level(model, 'model')}/#"
        return f"$share/{self.share_group}/{filt}" if self.share_group else filt

    def request_topic(self, model: str, key: str | None = None, *, pinned: bool = False) -> str:
        """The topic a requester publishes to."""
        root = f"{self._node_root}/infer" if pinned else f"{self.prefix}/infer"
        topic = f"{root}/{_level(model, 'model')}"
        return f"{topic}/{_level(key, 'key')}" if key is not None else topic

    def parse_request_topic(self, topic: str) -> RequestTopic | None:
        """The model, key and pinning of a request topic; ``None`` if it is not one for this node
        (another node's, too many levels, an empty or wildcard level)."""
        levels = topic.split("/")
        root = self.prefix.split("/")
        if levels[: len(root)] != root:
            return None
        rest = levels[len(root) :]
        pinned = rest[:3] == ["node", self.node, "infer"]
        if pinned:
            rest = rest[3:]
        elif rest[:1] == ["infer"]:
            rest = rest[1:]
        else:
            return None
        if not 1 <= len(rest) <= 2 or not all(_level_ok(x) for x in rest):
            return None
        return RequestTopic(rest[0], rest[1] if len(rest) == 2 else None, pinned)

    def default_reply_topic(self, key: str, model: str) -> str:
        """``<reply prefix><key>/<model>``: the reply topic of a keyed request naming none."""
        return f"{self.reply_root}{_level(key, 'key')}/{_level(model, 'model')}"

    def reply_allowed(self, topic: str) -> bool:
        """Whether the daemon may publish a reply to ``topic``: under the reply prefix, no
        wildcards, NULs, empty or ``.``/``..`` levels, at most 65535 UTF-8 bytes."""
        try:
            size = len(topic.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates from a JSON "\ud800" escape
            return False
        if size > MAX_TOPIC_BYTES or not topic.startswith(self.reply_root):
            return False
        rest = topic[len(self.reply_root) :]
        return bool(rest) and all(_level_ok(x) for x in rest.split("/"))

    def reply_topic(
        self, response_topic: str | None, reply_to: str | None, key: str | None, model: str
    ) -> str | None:
        """Where to answer: MQTT 5 Response Topic, else the envelope's ``reply_to``, else the
        default topic of the request's ``<key>``; ``None`` if nowhere. ProtocolError
        (bad_request) if the chosen topic is not allowed."""
        chosen = response_topic or reply_to
        if chosen is None:
            return self.default_reply_topic(key, model) if key is not None else None
        if not self.reply_allowed(chosen):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"reply topic {chosen[:200]!r} is not allowed; replies go under "
                f"{self.reply_root!r} (no wildcards or empty levels)",
            )
        return chosen


def _level(name: str, what: str) -> str:
    if not _level_ok(name):
        raise ConfigError(f"{what} {name!r} cannot be a topic level")
    return name


# -------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """A decoded request. ``deadline_ms`` counts from the daemon's receipt; ``correlation`` is
    MQTT 5 Correlation Data, echoed on the reply."""

    model: str
    id: str | None
    reply_to: str | None
    deadline_ms: float | None
    stream: str | None
    reset: bool
    compact: bool
    inputs: Mapping[str, np.ndarray]
    correlation: bytes | None = None


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


@contextmanager
def _answerable(request_id: str | None = None, reply_to: str | None = None) -> Iterator[None]:
    """Map codec errors to ProtocolError, and give every ProtocolError what is known of the
    request, so the daemon can still answer it."""
    try:
        yield
    except PayloadError as exc:
        raise ProtocolError(
            ErrorCode(exc.code), exc.message, request_id=request_id, reply_to=reply_to
        ) from exc
    except ProtocolError as exc:
        exc.request_id, exc.reply_to = request_id, reply_to
        raise


def _ident(value: Any, what: str) -> str | None:
    """An id or stream id: a string or integer (made a string) of 1..128 characters."""
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
        raise _bad(f"deadline_ms must be a positive number of milliseconds, got {value!r}")
    return float(value)


def parse_json_request(
    payload: bytes,
    io: ModelIO,
    *,
    model: str,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    request_specs: Sequence[TensorSpec] | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Request:
    """Decode a JSON request to ``model``, whose inputs are checked against ``io``.

    ``request_specs`` are the inputs a device sends (default: all of ``io.inputs``; the daemon
    leaves out constant and carried ones, and passes windowed ones with their request shape).
    ``response_topic`` (MQTT 5) takes precedence over the envelope's ``reply_to``.
    ``max_elements`` bounds the elements of all inputs together. Unknown keys are refused, so a
    typo (``deadline`` for ``deadline_ms``) does not silently do nothing.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise _bad(f"not a JSON request: {str(exc)[:200] or type(exc).__name__}") from exc
    if not isinstance(doc, dict):
        raise _bad(f"a JSON request is an object, got {type(doc).__name__}")
    raw_reply = doc.get("reply_to")
    reply_to = response_topic or (raw_reply if isinstance(raw_reply, str) and raw_reply else None)
    with _answerable(None, reply_to):
        request_id = _ident(doc.get("id"), "id")
    with _answerable(request_id, reply_to):
        if raw_reply is not None and not (isinstance(raw_reply, str) and raw_reply):
            raise _bad("reply_to must be a topic string")
        unknown = set(doc) - _REQUEST_KEYS
        if unknown:
            known = ", ".join(sorted(_REQUEST_KEYS))
            raise _bad(f"unknown key(s) {', '.join(sorted(unknown))}; known: {known}")
        version = doc.get("v", PROTOCOL_VERSION)
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise _bad(f"protocol version {version!r} is not supported; this daemon speaks 1")
        deadline_ms = _deadline(doc.get("deadline_ms"))
        stream = _ident(doc.get("stream"), "stream")
        reset, compact = _flag(doc, "reset"), _flag(doc, "compact")
        if reset and stream is None:
            raise _bad("reset needs a stream")
        if doc.get("inputs") is None:
            raise _bad("missing inputs")
        # The envelope is checked first: decoding tensors is the expensive part.
        specs = io.inputs if request_specs is None else request_specs
        inputs = decode_inputs(doc["inputs"], specs, io, max_elements)
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


def tensor_request(
    array: np.ndarray,
    io: ModelIO,
    *,
    model: str,
    id: str | None = None,
    stream: str | None = None,
    reset: bool = False,
    reply_to: str | None = None,
    correlation: bytes | None = None,
    request_specs: Sequence[TensorSpec] | None = None,
) -> Request:
    """A request from one binary-decoded tensor (``.npy``, or a pre-processed image or sound),
    for a model with exactly one request input. ``id``/``stream`` come from MQTT 5 user
    properties or the topic's ``<key>`` and are checked as in JSON."""
    specs = io.inputs if request_specs is None else request_specs
    with _answerable(None, reply_to):
        request_id = _ident(id, "id")
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
        compact=False,
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


# --------------------------------------------------------------------------------------- replies


def error_reply(id: str | None, code: ErrorCode, message: str) -> bytes:
    """An error reply ``{"id", "ok": false, "error": {"code", "message"}}``."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return dumps({"id": id, "ok": False, "error": {"code": code.value, "message": message}})


def catalogue(node: str, models: Sequence[Mapping[str, Any]]) -> bytes:
    """The retained catalogue: protocol version, node, and one entry per served model."""
    return dumps({"v": PROTOCOL_VERSION, "node": node, "models": to_jsonable(list(models))})
