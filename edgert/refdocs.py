"""The reference docs of model.toml and edgert.toml (docs/model-toml.md, docs/edgert-toml.md),
generated from the structs the files are decoded into, so they cannot drift from them.

:func:`keys` walks a file's struct with msgspec's public introspection (``msgspec.inspect``):
each table is a section (a struct field, a ``dict[str, Struct]`` as ``[inputs.<name>]``, a
``tuple[Struct, ...]`` as ``[[sources]]``, a tagged union as one section per tag), each other
field a key with its TOML type, default and allowed values (literals, bounds, the type's
``Meta(description=...)``); its meaning comes from :mod:`edgert.keydocs`. :func:`render` writes
the Markdown; :func:`documented` reads the keys back out of it. ``scripts/gen-docs`` writes the
files; ``tests/test_refdocs.py`` holds them equal to what the structs give now.
"""

from __future__ import annotations

import inspect as pyinspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import inspect as mi

from edgert.config import ModelFile
from edgert.keydocs import EDGERT_TOML, MODEL_TOML
from edgert.schema import show
from edgert.settings import EdgertFile

__all__ = [
    "FILES",
    "Key",
    "RefFile",
    "Section",
    "documented",
    "keys",
    "meaning_paths",
    "render",
    "sections",
]

NAME = "<name>"  # a key the user names: an input, a dim


@dataclass(frozen=True)
class RefFile:
    """A config file documented: its name, struct, meanings and docs file."""

    name: str
    struct: type[msgspec.Struct]
    meanings: Mapping[str, str]
    doc: str  # path from the repository root
    intro: str


@dataclass(frozen=True)
class Key:
    """One key of a section: ``path`` is its dotted id in :mod:`edgert.keydocs`."""

    path: str
    name: str
    type: str
    default: str
    allowed: str


@dataclass(frozen=True)
class Section:
    """A table: ``table`` as TOML heads it (``""`` for the top level), its ``tag`` (a tagged
    union's ``kind = "..."``) and what its struct's docstring says."""

    table: str
    array: bool
    tag: str
    about: str
    keys: tuple[Key, ...]

    @property
    def heading(self) -> str:
        if not self.table:
            return "Top-level keys"
        head = f"`[[{self.table}]]`" if self.array else f"`[{self.table}]`"
        return f"{head} with `{self.tag}`" if self.tag else head


def sections(struct: type[msgspec.Struct]) -> list[Section]:
    """Every table of ``struct`` (a file's top-level struct), the top level first."""
    found: list[Section] = []
    _walk(mi.type_info(struct), "", False, "", found)
    return found


def keys(struct: type[msgspec.Struct]) -> set[tuple[str, str]]:
    """Every (table, key) the struct's file may hold."""
    return {(s.table, k.name) for s in sections(struct) for k in s.keys}


def _walk(info: Any, table: str, array: bool, tag: str, found: list[Section]) -> None:
    here: list[Key] = []
    if info.tag_field is not None:
        tagged = f'`"{info.tag}"`'
        here.append(Key(_path(table, info.tag_field), info.tag_field, "string", "required", tagged))
    nested: list[tuple[Any, str, bool, str]] = []
    named: list[Section] = []  # tables of keys the user names: [dims]
    for field in info.fields:
        ftype = _unwrap(field.type)
        child = _path(table, field.name)
        if structs := _structs(ftype):
            for struct in structs:
                label = f'{struct.tag_field} = "{struct.tag}"' if struct.tag_field else ""
                nested.append((struct, child, False, label))
        elif isinstance(ftype, mi.DictType) and isinstance(
            value := _unwrap(ftype.value_type), mi.StructType
        ):
            nested.append((value, f"{child}.{NAME}", False, ""))
        elif isinstance(ftype, mi.VarTupleType) and isinstance(
            item := _unwrap(ftype.item_type), mi.StructType
        ):
            nested.append((item, child, True, ""))
        elif isinstance(ftype, mi.DictType):
            kind, allowed = _describe(ftype.value_type)
            key = Key(_path(child, NAME), NAME, kind, " ", allowed)
            named.append(Section(child, False, "", "", (key,)))
        else:
            kind, allowed = _describe(field.type)
            here.append(Key(child, field.name, kind, _default(field), allowed))
    found.append(Section(table, array, tag, _about(info.cls), tuple(here)))
    found.extend(named)
    for item in nested:
        _walk(*item, found)


def _path(table: str, name: str) -> str:
    return f"{table}.{name}" if table else name


def _unwrap(t: Any) -> Any:
    """The type under a Metadata and an Optional."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        rest = [u for u in t.types if not isinstance(u, mi.NoneType)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    return t


def _structs(t: Any) -> list[Any]:
    """The structs a table field holds: one, or a tagged union's."""
    if isinstance(t, mi.StructType):
        return [t]
    if isinstance(t, mi.UnionType) and all(
        isinstance(u, mi.StructType | mi.NoneType) for u in t.types
    ):
        return [u for u in t.types if isinstance(u, mi.StructType)]
    return []


def _about(cls: type) -> str:
    """The struct's docstring, first paragraph, as Markdown (``x`` becomes `x`)."""
    doc = pyinspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


def _default(field: Any) -> str:
    if field.required:
        return "required"
    value = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    if value is None:
        return "unset"
    if isinstance(value, dict) and not value:
        return "{}"
    return f"`{show(value)}`"


def _describe(t: Any) -> tuple[str, str]:
    """``t`` as (TOML type, allowed values)."""
    said = None
    if isinstance(t, mi.Metadata):
        said = (t.extra_json_schema or {}).get("description")
        t = t.type
    if isinstance(t, mi.UnionType):
        parts = [_describe(u) for u in t.types if not isinstance(u, mi.NoneType)]
        kind = " or ".join(dict.fromkeys(p[0] for p in parts))
        allowed = "; ".join(p[1] for p in parts if p[1])
    else:
        kind, allowed = _describe_one(t)
    return kind, said or allowed


def _describe_one(t: Any) -> tuple[str, str]:
    if isinstance(t, mi.Metadata):
        return _describe(t)
    if isinstance(t, mi.LiteralType):
        literal = sorted({"string" if isinstance(v, str) else "integer" for v in t.values})
        return " or ".join(literal), ", ".join(f"`{show(v)}`" for v in t.values)
    if isinstance(t, mi.IntType | mi.FloatType):
        return ("integer" if isinstance(t, mi.IntType) else "number"), _bounds(t)
    if isinstance(t, mi.StrType):
        if t.pattern:
            return "string", f"matches `{t.pattern}`"
        return "string", "non-empty" if t.min_length else ""
    if isinstance(t, mi.BoolType):
        return "boolean", ""
    if isinstance(t, mi.TupleType):
        parts = [_describe(u) for u in t.item_types]
        kinds = " or ".join(dict.fromkeys(p[0] for p in parts))
        allowed = "; ".join(dict.fromkeys(p[1] for p in parts if p[1]))
        return f"array of {len(parts)} {_plural(kinds)}", f"each {allowed}" if allowed else ""
    if isinstance(t, mi.VarTupleType):
        kind, allowed = _describe(t.item_type)
        many = "a non-empty array" if t.min_length else "array"
        return f"{many} of {_plural(kind)}", f"each {allowed}" if allowed else ""
    if isinstance(t, mi.StructType | mi.DictType):
        return "table", ""
    return "any", ""


def _plural(kinds: str) -> str:
    """``integer or string`` as ``integers or strings``."""
    return " or ".join(f"{k}s" for k in kinds.split(" or "))


def _bounds(t: Any) -> str:
    if t.ge is not None and t.le is not None:
        return f"{t.ge} to {t.le}"
    low = f">= {t.ge}" if t.ge is not None else (f"> {t.gt}" if t.gt is not None else "")
    high = f"<= {t.le}" if t.le is not None else (f"< {t.lt}" if t.lt is not None else "")
    return " and ".join(p for p in (low, high) if p)


# ---------------------------------------------------------------------------------- Markdown

MODEL_INTRO = """\
`engines/<model>/model.toml` says what the ONNX file cannot: bounds for dynamic axes, how inputs
are filled, pre- and post-processing, batching, state, Home Assistant and TensorRT options.
Every key is optional; a fixed-shape `model.onnx` needs no model.toml at all. `edgert init
<model.onnx>` writes a starter file, and `edgert inspect` shows what the model and the file say.
A typo, a wrong type or a value out of range is refused in one line naming the file, table and
key, e.g. `model.toml: [inputs.x] kind: expected one of "carried", "constant", ..., got "streamed"`.
`<name>` stands for a name of yours: an input's, an output's, a dim's."""

EDGERT_INTRO = """\
`edgert serve --config edgert.toml` reads the daemon's settings (installed as
`/etc/edgert/edgert.toml`; `device/edgert.toml` is the commented default). Every key is
optional; `--broker`, `--repository` and `--node` override the file. A typo, a wrong type or a
value out of range is refused in one line naming the file, table and key, e.g.
`edgert.toml: [serve] queue_size: expected an integer >= 1, got "big"`, and the daemon exits 1."""

FILES = (
    RefFile("model.toml", ModelFile, MODEL_TOML, "docs/model-toml.md", MODEL_INTRO),
    RefFile("edgert.toml", EdgertFile, EDGERT_TOML, "docs/edgert-toml.md", EDGERT_INTRO),
)
UNDOCUMENTED = "(no meaning yet: add one to edgert/keydocs.py)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or " "


def render(ref: RefFile) -> str:
    """The Markdown reference of ``ref``'s file: a table of keys per section."""
    lines = [
        f"# {ref.name} reference",
        "",
        "<!-- Generated by scripts/gen-docs from the config structs and edgert/keydocs.py;",
        "     edit those, then run scripts/gen-docs. tests/test_refdocs.py checks it. -->",
        "",
        ref.intro,
    ]
    for section in sections(ref.struct):
        if not section.keys:
            continue
        lines += ["", f"## {section.heading}", ""]
        if section.about and section.table:
            lines += [section.about, ""]
        lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for key in section.keys:
            meaning = ref.meanings.get(key.path, UNDOCUMENTED)
            cells = (f"`{key.name}`", key.type, key.default, key.allowed, meaning)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


_HEADING = re.compile(r"^## (?:Top-level keys|`\[\[?(?P<table>[^\]`]+)\]\]?`.*)$")
_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \|")


def documented(markdown: str) -> set[tuple[str, str]]:
    """The (table, key) pairs a reference document lists."""
    found: set[tuple[str, str]] = set()
    table: str | None = None
    for line in markdown.splitlines():
        heading = _HEADING.match(line)
        if heading:
            table = heading.group("table") or ""
        elif table is not None and (row := _ROW.match(line)):
            found.add((table, row.group("key")))
    return found


def meaning_paths(struct: type[msgspec.Struct]) -> Iterator[str]:
    """The keydocs paths of every key of ``struct``'s file."""
    for section in sections(struct):
        for key in section.keys:
            yield key.path
