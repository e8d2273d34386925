"""How a served model's requests are decoded: format detection, then JSON, `.npy`, raw bytes or
a pre-processed image or audio payload (model.toml declares which)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgert.codec import InputsDecoder
from edgert.config import ModelConfig
from edgert.pipeline import Preprocess, Transform
from edgert.protocol import (
    ErrorCode,
    ProtocolError,
    Request,
    detect_format,
    parse_json_request,
    parse_npy,
    parse_raw,
    preprocessed,
    tensor_request,
)
from edgert.spec import ModelIO, TensorSpec
from edgert.transport import Message

__all__ = ["declared_format", "decode_request", "request_specs"]

_FLAGS = {"true": True, "1": True, "false": False, "0": False}


def request_specs(io: ModelIO, constants: Mapping[str, np.ndarray]) -> Sequence[TensorSpec]:
    """The inputs a device sends: all but those model.toml fills in (constants)."""
    return tuple(s for s in io.inputs if s.name not in constants)


def declared_format(config: ModelConfig, specs: Sequence[TensorSpec]) -> str | None:
    """The payload format model.toml declares for a model with one request input, if any."""
    if len(specs) != 1 or specs[0].name not in config.inputs:
        return None
    return config.inputs[specs[0].name].format


def _compact(value: str | None) -> bool:
    """A binary request's user property ``compact``: a camera's JPEG cannot say "compact": true
    in JSON, and a detector's raw outputs would not fit its buffer (or the reply limit)."""
    if value is None:
        return False
    flag = _FLAGS.get(value.strip().lower())
    if flag is None:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"user property compact must be true or false, got {value!r}"
        )
    return flag


def decode_request(
    message: Message,
    io: ModelIO,
    model: str,
    inputs: InputsDecoder,
    key: str | None,
    max_elements: int,
    declared: str | None = None,
    pre: Preprocess | None = None,
) -> tuple[Request, Transform | None]:
    """The request in ``message`` and, for an image, the transform that maps boxes back to it;
    ProtocolError (with its code) for anything wrong. ``inputs`` decodes (and names) the inputs a
    device sends."""
    specs = inputs.specs
    fmt = detect_format(message.payload, message.content_type, declared)
    if fmt == "json":
        request = parse_json_request(
            message.payload,
            io,
            model=model,
            response_topic=message.response_topic,
            correlation=message.correlation,
            max_elements=max_elements,
            decoder=inputs,
        )
        return request, None
    transform = None
    if pre is not None and fmt in ("jpeg", "png", "wav", "raw"):
        array, transform = preprocessed(message.payload, pre.decode)
    elif fmt == "npy":
        array = parse_npy(message.payload, max_elements)
    elif fmt == "raw":
        array = parse_raw(message.payload, specs[0], io, max_elements)
    else:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"{model} takes JSON or .npy; {fmt} payloads need a [preprocess] section in its "
            "model.toml",
        )
    request = tensor_request(
        array,
        io,
        model=model,
        id=message.user.get("id") or key,
        stream=message.user.get("stream"),
        compact=_compact(message.user.get("compact")),
        reply_to=message.response_topic,
        correlation=message.correlation,
        request_specs=specs,
    )
    return request, transform
