"""Error codes and replies as pure values: what a device is told, and the retained catalogue.

:mod:`edgert.protocol` decodes requests and re-exports these.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from edgert.codec import PayloadError
from edgert.errors import EdgertError, InputError
from edgert.jsonout import dumps, to_jsonable

__all__ = [
    "MAX_ID_CHARS",
    "MAX_MESSAGE_CHARS",
    "MODEL_STATES",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "ProtocolError",
    "RequestId",
    "catalogue",
    "error_code",
    "error_reply",
]

PROTOCOL_VERSION = 1
MAX_ID_CHARS = 128
MAX_MESSAGE_CHARS = 400  # error messages stay well inside a microcontroller's 1 KiB buffer

RequestId = str | int  # exactly as the device sent it


class ErrorCode(str, enum.Enum):
    """The ``error.code`` of an error reply."""

    BAD_REQUEST = "bad_request"  # the envelope: not JSON, wrong field types, unknown format
    BAD_INPUT = "bad_input"  # an input tensor: names, dtype, shape, encoding
    TOO_LARGE = "too_large"
    NO_MODEL = "no_model"
    LOADING = "loading"  # in the repository, still building or loading; retry_after_ms says when
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
        request_id: RequestId | None = None,
        reply_to: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.reply_to = reply_to
        self.retry_after_ms = retry_after_ms


def error_code(exc: BaseException) -> ErrorCode:
    """The protocol code an exception is answered with: its own code where edgert gave it one
    (ProtocolError, codec and input errors), else ``internal``."""
    if isinstance(exc, ProtocolError):
        return exc.code
    if isinstance(exc, PayloadError | InputError):
        return ErrorCode(exc.code)
    return ErrorCode.INTERNAL


def error_reply(
    id: RequestId | None, code: ErrorCode, message: str, *, retry_after_ms: int | None = None
) -> bytes:
    """An error reply ``{"id", "ok": false, "error": {"code", "message"}}``; ``loading`` and the
    like add ``retry_after_ms``, when to try again."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    error: dict[str, Any] = {"code": code.value, "message": message}
    if retry_after_ms is not None:
        error["retry_after_ms"] = retry_after_ms
    return dumps({"id": id, "ok": False, "error": error})


MODEL_STATES = ("loading", "ready", "failed")


def catalogue(node: str, models: Sequence[Mapping[str, Any]]) -> bytes:
    """The retained catalogue: protocol version, node, and one entry per repository model, each
    with its ``state`` (``loading``, ``ready`` with its version, backend and IO, or ``failed``
    with the ``reason``), sorted by name."""
    entries = sorted(to_jsonable(list(models)), key=lambda entry: str(entry["name"]))
    return dumps({"v": PROTOCOL_VERSION, "node": node, "models": entries})
