"""Fixtures for the TensorRT tests: the introspected API of each version, and the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.trt.bindings import VERSIONS, TrtApi, api
from tests.trt.emulation import emulate, purge


@pytest.fixture(scope="session", params=VERSIONS)
def trt_api(request: pytest.FixtureRequest) -> TrtApi:
    """The real bindings' API of one TensorRT version (fetched and introspected once, cached in
    .cache/trt-api/); tests using it run once per version."""
    version: str = request.param
    return api(version)


@pytest.fixture(params=VERSIONS)
def emulated(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The emulated TensorRT of one version, here and in every child process; tests using it
    run once per version."""
    version: str = request.param
    emulate(monkeypatch, version)
    yield version
    monkeypatch.undo()
    purge()
