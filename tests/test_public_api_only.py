"""edgert uses its libraries through their public API only: no private name imported from a
library, read from a library module, or overridden in a subclass of a library's class (a
release may change any of them without notice)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgert"
# Standard-library names that are documented despite their underscore.
ALLOWED = {("sys", "_getframe"), ("os", "_exit"), ("collections", "_replace")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library(module: str) -> bool:
    top = module.split(".")[0]
    return top != "edgert" and top not in {"__future__"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(PACKAGE.parent)
    aliases: dict[str, str] = {}  # local name -> library module
    bases: dict[str, str] = {}  # local name -> "module:Class" of an imported library class
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for item in node.names:
                if _library(item.name):
                    aliases[(item.asname or item.name).split(".")[0]] = item.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and _library(node.module):
            for item in node.names:
                if _private(item.name):
                    problems.append(f"{where}:{node.lineno}: imports {node.module}.{item.name}")
                bases[item.asname or item.name] = f"{node.module}:{item.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and (aliases[node.value.id], node.attr) not in ALLOWED
        ):
            problems.append(f"{where}:{node.lineno}: reads {node.value.id}.{node.attr}")
        if isinstance(node, ast.ClassDef):
            problems += _overrides(node, bases, aliases, where)
    return problems


def _overrides(
    node: ast.ClassDef, bases: dict[str, str], aliases: dict[str, str], where: Path
) -> list[str]:
    """Private methods of a library base class that ``node`` defines again."""
    found = []
    for base in node.bases:
        target = None
        if isinstance(base, ast.Name) and base.id in bases:
            target = bases[base.id]
        elif (
            isinstance(base, ast.Attribute)
            and isinstance(base.value, ast.Name)
            and base.value.id in aliases
        ):
            target = f"{aliases[base.value.id]}:{base.attr}"
        if target is None:
            continue
        module, _, name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if not isinstance(cls, type):
            continue
        for item in node.body:
            defined = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            if not (defined and _private(item.name)):
                continue
            if any(item.name in vars(k) for k in cls.__mro__ if k is not object):
                found.append(f"{where}:{item.lineno}: overrides {target}.{item.name}")
    return found


def test_no_private_name_of_a_library_is_used() -> None:
    problems = [p for path in _modules() for p in _problems(path)]
    assert problems == []


def test_the_check_finds_a_planted_private_use(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import gmqtt\n"
        "from gmqtt.mqtt.handler import _empty_callback\n"
        "from gmqtt.storage import PersistentStorage\n"
        "x = gmqtt._private_thing\n"
        "class S(PersistentStorage):\n"
        "    def _notify_waiters(self, notify): ...\n"
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        problems = _problems(planted)
    finally:
        PACKAGE = saved
    assert len(problems) == 3, problems
    assert any("imports gmqtt.mqtt.handler._empty_callback" in p for p in problems)
    assert any("reads gmqtt._private_thing" in p for p in problems)
    assert any("overrides gmqtt.storage:PersistentStorage._notify_waiters" in p for p in problems)
