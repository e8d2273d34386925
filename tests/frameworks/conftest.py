"""One repository holding a model from every framework, compiled, and one daemon serving it.

Session-scoped: training and exporting six models and starting the daemon once keeps the matrix
fast. A recipe that fails is kept as its exception, so only that framework's tests fail.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest

from edgert import CompileResult, ModelDir, compile_model
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon
from tests.frameworks.exports import RECIPES, Export


@dataclass(frozen=True)
class Built:
    """A framework's export and its compile result, or the exception that stopped either."""

    export: Export | None = None
    compiled: CompileResult | None = None
    error: BaseException | None = None

    def get(self) -> tuple[Export, CompileResult]:
        if self.error is not None:
            raise self.error
        assert self.export is not None and self.compiled is not None
        return self.export, self.compiled


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Built]:
    """Every recipe exported into one repository and compiled with edgert's own compile path."""
    repository = tmp_path_factory.mktemp("engines")
    result = {}
    for framework, recipe in RECIPES.items():
        try:
            export = recipe(repository)
            result[framework] = Built(export, compile_model(ModelDir(export.directory)))
        except Exception as exc:  # reported by that framework's own tests
            result[framework] = Built(error=exc)
    return result


@pytest.fixture(scope="session")
def served(
    built: Mapping[str, Built], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """`edgert serve` over the repository of ``built``, on a broker of its own."""
    exports = [b.export for b in built.values() if b.export is not None]
    if not exports:
        pytest.fail("no framework exported a model")
    repository = exports[0].directory.parent
    broker = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    daemon = Daemon(broker, repository, tmp_path_factory.mktemp("daemon"))
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        broker.kill()
