"""Strict decoding of edgert's TOML files into msgspec structs, and its one-line errors.

edgert.toml and model.toml are decoded once, with ``msgspec.convert(data, Type, strict=True)``,
into frozen :class:`Table` structs whose annotations say every key's type and bounds. A refusal
is one line naming the file, the table and the key, what the annotation expects and what the file
gives (or, for an unknown key, the nearest known one, in any table)::

    edgert.toml: [serve] queue_size: expected an integer >= 1, got "big"
    edgert.toml: [[sources]][1] interval: expected a number >= 0, got -1
    edgert.toml: [node] queue_size: unknown key; did you mean [serve] queue_size?
    model.toml: [inputs.x] kind: expected one of "request", "constant", ..., got "streamed"
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import sys
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from edgert.errors import ConfigError, ConfigKeyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Table", "decode", "key_text", "load_toml", "located", "show"]

T = TypeVar("T", bound=Struct)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class Table(Struct, forbid_unknown_fields=True, frozen=True):
    """A TOML table: unknown keys refused, values read-only, numbers finite (TOML's ``inf``
    and ``nan`` pass every bound msgspec checks, and no interval or size means them)."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            for number in value if isinstance(value, tuple) else (value,):
                if isinstance(number, float) and not math.isfinite(number):
                    raise ConfigKeyError(name, f"expected a finite number, got {show(value)}")


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, mapping every failure to ConfigError naming the file."""
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def decode(data: Any, kind: type[T], file: str) -> T:
    """``data`` (a parsed TOML file, or a dict shaped like one) as a ``kind`` struct; a
    ConfigError of one line (``<file>: [table] key: ...``) for anything it refuses."""
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        # Only on a refusal: the explaining machinery is not needed to read a good file.
        from edgert.schema_errors import explain

        raise ConfigError(explain(exc, data, kind, file)) from exc


def located(file: str, section: str | None = None, key: str | None = None) -> str:
    """``<file>: [section] key``, the head of every config error line (``section`` as
    ``"preprocess"`` or ``"inputs.x"``, or already bracketed: ``"[[sources]][1]"``; a key
    without one is a top-level key)."""
    label = section if not section or section.startswith("[") else f"[{section}]"
    where = " ".join(p for p in (label, None if key is None else key_text(key)) if p)
    return f"{file}: {where}" if where else file


# ------------------------------------------------------------------------------- showing values


class _TomlRepr(reprlib.Repr):
    """Values as TOML writes them (double-quoted strings, true/false), cut short."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring, self.maxother, self.maxlist, self.maxtuple, self.maxdict = 40, 40, 6, 6, 4

    def repr_str(self, x: str, level: int) -> str:
        cut = x if len(x) <= self.maxstring else x[: self.maxstring] + "…"
        return json.dumps(cut, ensure_ascii=False)

    def repr_bool(self, x: bool, level: int) -> str:
        return "true" if x else "false"

    def repr_tuple(self, x: tuple[Any, ...], level: int) -> str:
        return self.repr_list(list(x), level)

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{key_text(str(k))} = {self.repr1(v, level - 1)}" for k, v in list(x.items())]
        more = ", ..." if len(items) > self.maxdict else ""
        return "{" + ", ".join(items[: self.maxdict]) + more + "}"


_repr = _TomlRepr()


def show(value: Any) -> str:
    """``value`` as a config file would hold it, for an error line."""
    return _repr.repr(value)


def key_text(key: str) -> str:
    """A key as TOML writes it: bare, or quoted."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)
