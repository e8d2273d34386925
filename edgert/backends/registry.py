"""Backend registry: name → lazily imported backend kind.

A backend whose import fails (no TensorRT, no CUDA) stays listed as unavailable, with the
reason, so ``edgert list`` and ``--backend`` errors can say why.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgert.backends.base import BackendKind
from edgert.errors import BackendUnavailable, ConfigError

__all__ = ["BACKENDS", "BackendStatus", "choose", "get", "status"]

# Preference order for `auto`: the first available wins.
BACKENDS: dict[str, str] = {
    "tensorrt": "edgert.backends.tensorrt",
    "onnxruntime": "edgert.backends.onnxrt",
}


@dataclass(frozen=True)
class BackendStatus:
    name: str
    kind: BackendKind | None
    reason: str | None  # why it is unavailable, else None

    @property
    def available(self) -> bool:
        return self.kind is not None


_cache: dict[str, BackendStatus] = {}


def _load(name: str) -> BackendStatus:
    if name not in _cache:
        try:
            module = importlib.import_module(BACKENDS[name])
            _cache[name] = BackendStatus(name, module.KIND, None)
        except BackendUnavailable as exc:
            _cache[name] = BackendStatus(name, None, exc.message)
        except ImportError as exc:
            _cache[name] = BackendStatus(name, None, f"cannot import {exc.name or exc}: {exc}")
    return _cache[name]


def status() -> list[BackendStatus]:
    """Every known backend, available or not (with the reason)."""
    return [_load(name) for name in BACKENDS]


def get(name: str) -> BackendKind:
    """The named backend; ConfigError if unknown, BackendUnavailable (with why) if not here."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; known: {', '.join(BACKENDS)}, auto")
    entry = _load(name)
    if entry.kind is None:
        raise BackendUnavailable(f"backend '{name}' is unavailable here: {entry.reason}")
    return entry.kind


def choose(name: str) -> BackendKind:
    """``auto`` → the first available backend in preference order; else :func:`get`."""
    if name != "auto":
        return get(name)
    for entry in status():
        if entry.kind is not None:
            return entry.kind
    reasons = "; ".join(f"{e.name}: {e.reason}" for e in status())
    raise BackendUnavailable(f"no backend is available here ({reasons})")
