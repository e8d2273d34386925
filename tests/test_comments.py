"""Comments and docstrings in edgert/ say why, not what a benchmark measured once: a figure goes
stale with the next machine or release, and the reason it stood for is what a reader needs."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A measured figure: a time per operation, a rate, a speed-up, or a pointer to a bench run.
MEASURED = re.compile(
    r"scripts/(?:bench|gpu-check)"
    r"|\d\s?(?:us|µs|ns)\b"
    r"|\d\s?ms (?:per|a|an|to)\b"
    r"|\breq/s\b|[GM]B/s\b"
    r"|\d\s?x (?:faster|slower|the)\b",
    re.IGNORECASE,
)


def _prose(source: str) -> Iterator[tuple[int, str]]:
    """Every comment and docstring of ``source``, with its line."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                yield node.body[0].lineno, doc


def test_the_pattern_finds_figures() -> None:
    for text in ("about 44 ms per request", "28.6 us to decode", "~10x the standard library"):
        assert MEASURED.search(text), text
    assert not MEASURED.search("max queue delay in µs; a 1 KiB buffer")


def test_comments_carry_no_benchmark_figures() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}"
        for path in sorted((ROOT / "edgert").rglob("*.py"))
        for line, text in _prose(path.read_text())
        if (match := MEASURED.search(text))
    ]
    assert found == []
