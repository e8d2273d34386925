"""Fixtures for the TensorRT conformance tests: the introspected API of each version."""

from __future__ import annotations

import pytest

from tests.trt.bindings import VERSIONS, TrtApi, api


@pytest.fixture(scope="session", params=VERSIONS)
def trt_api(request: pytest.FixtureRequest) -> TrtApi:
    """The real bindings' API of one TensorRT version (fetched and introspected once, cached in
    .cache/trt-api/); tests using it run once per version."""
    version: str = request.param
    return api(version)
