"""Stand-in for ``cuda.bindings.utils``: the one function edgert uses."""

from __future__ import annotations

from typing import Any


def get_cuda_native_handle(obj: Any) -> int:
    return int(obj)
