"""Shared fixtures. The ONNX corpus itself lives in tests/corpus.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.corpus import CASES


@pytest.fixture
def corpus(tmp_path: Path) -> Callable[[str], Path]:
    """``corpus(name)`` writes that corpus case into a fresh directory; returns its model.onnx."""

    def write(name: str) -> Path:
        return CASES[name](tmp_path / name)

    return write


_PIL_OPEN = Image.open  # read when the tests are collected, before anything imports Ultralytics


@pytest.fixture(autouse=True)
def pil_open_as_it_was() -> None:
    """Importing Ultralytics (tests/frameworks) replaces ``PIL.Image.open`` for the whole process
    with a wrapper that, on any picture PIL cannot read, imports ``pi_heif`` (not installed):
    a later test in the same process would see ModuleNotFoundError where the daemon, which never
    imports Ultralytics, sees PIL's own error. Every test starts with PIL as it was."""
    Image.open = _PIL_OPEN  # type: ignore[method-assign]
