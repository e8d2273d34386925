"""The fuzzed models, compiled once per session."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from tests.fuzz.models import Target, build_repository, load_targets


@pytest.fixture(scope="session")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Target]:
    return load_targets(build_repository(tmp_path_factory.mktemp("fuzz-engines")))
