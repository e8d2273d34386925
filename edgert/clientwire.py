"""The client's request and reply bodies: tensors in the protocol's exact binary JSON form.

:mod:`edgert.client` sends what :func:`request_payload` writes and reads replies' tensors with
:func:`decode_tensor`; nothing here touches MQTT.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgert.errors import EdgertError
from edgert.spec import DType

__all__ = ["decode_tensor", "encode_tensor", "request_payload"]


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """The protocol's exact binary form of a tensor inside JSON: dtype, shape, base64 bytes."""
    contiguous = np.ascontiguousarray(array)
    return {
        "dtype": contiguous.dtype.name,
        "shape": list(contiguous.shape),
        "b64": base64.b64encode(contiguous.tobytes()).decode(),
    }


def decode_tensor(obj: Mapping[str, Any]) -> np.ndarray:
    """A ``{"dtype", "shape", "b64"}`` tensor (little-endian, C order) as a native array."""
    try:
        wire = DType(obj["dtype"]).numpy.newbyteorder("<")
        flat = np.frombuffer(base64.b64decode(obj["b64"], validate=True), dtype=wire)
        return flat.reshape(tuple(obj["shape"])).astype(wire.newbyteorder("="))
    except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise EdgertError(f"unreadable base64 tensor in a reply: {exc}") from exc


def request_payload(
    request_id: str,
    inputs: Mapping[str, Any] | np.ndarray,
    *,
    deadline_ms: float | None,
    compact: bool,
    stream: str | None,
    reset: bool,
) -> bytes:
    """An infer request's JSON body: its id, its inputs (arrays in their exact form), options."""
    if isinstance(inputs, np.ndarray):
        # A one-input model takes "inputs": <list>; float32 survives the JSON round trip.
        encoded: Any = inputs.tolist()
    else:
        encoded = {
            name: encode_tensor(value) if isinstance(value, np.ndarray) else value
            for name, value in inputs.items()
        }
    body: dict[str, Any] = {"id": request_id, "inputs": encoded}
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    if compact:
        body["compact"] = True
    if stream is not None:
        body["stream"] = stream
    if reset:
        body["reset"] = True
    return json.dumps(body, separators=(",", ":")).encode()
