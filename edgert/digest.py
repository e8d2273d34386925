"""The sha256 of an ONNX source: its file and its external data files, in order.

Pure file hashing, below the onnx layer: compile computes it from the parsed model, and serving
recomputes it from the file names the manifest recorded, without loading the onnx package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["source_digest"]


def source_digest(path: Path, extras: Sequence[Path] = ()) -> str:
    """sha256 over ``path`` and then each external data file (its name, then its bytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    for extra in extras:
        digest.update(extra.name.encode())
        with extra.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
