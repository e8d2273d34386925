"""Putting the TensorRT emulator (and the host-memory CUDA) in place, here and in children.

``tests/trt/site`` goes first on ``PYTHONPATH`` and ``sys.path``: ``import tensorrt`` then gets
the emulator of ``$EMULATED_TRT`` and ``cuda.bindings.runtime`` host memory, in this process and
in every child it starts (the build process, the daemon). :func:`purge` forgets the modules
imported before, so the next import takes the current environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from edgert.backends import registry

__all__ = ["REPO", "SITE", "emulate", "purge"]

REPO = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "site"
_EMULATED = ("tensorrt", "cuda")


def purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _EMULATED or name in (
            "edgert.backends.tensorrt",
            "edgert.backends.trt_compat",
        ):
            del sys.modules[name]
    import edgert.backends
    from edgert.backends import cuda

    for name in ("tensorrt", "trt_compat"):  # `from package import x` would reuse these
        if hasattr(edgert.backends, name):
            delattr(edgert.backends, name)
    cuda._rt.cache_clear()
    registry._cache.clear()


def emulate(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """The emulated TensorRT ``version`` (on an sm_87 GPU) from now on, children included."""
    monkeypatch.setenv("EMULATED_TRT", version)
    monkeypatch.setenv("EMULATOR_SM", "sm_87")
    path = [str(SITE), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.syspath_prepend(str(SITE))
    purge()
