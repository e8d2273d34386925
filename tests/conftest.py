"""Shared fixtures. The ONNX corpus itself lives in tests/corpus.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.corpus import CASES


@pytest.fixture
def corpus(tmp_path: Path) -> Callable[[str], Path]:
    """``corpus(name)`` writes that corpus case into a fresh directory; returns its model.onnx."""

    def write(name: str) -> Path:
        return CASES[name](tmp_path / name)

    return write
