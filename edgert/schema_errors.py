"""Why msgspec refused a config file, as one line: the table and key, what the annotation expects
and what the file gives, or for an unknown key the nearest known one in any table (see
:mod:`edgert.schema`, which calls :func:`explain` only when a file is refused)."""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Meta, Struct

from edgert.errors import ConfigKeyError
from edgert.schema import key_text, located, show

__all__ = ["describe", "explain"]

_ANY_KEY = "[...]"  # msgspec's name for "some key of this dict"
_MISSING: Any = object()


# ------------------------------------------------------------------------- describing types


def _strip(annotation: Any) -> tuple[Any, list[Meta]]:
    metas: list[Meta] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metas += [m for m in extra if isinstance(m, Meta)]
    return annotation, metas


def _options(annotation: Any) -> list[Any]:
    """A union's members (None left out: TOML has no null), or ``[annotation]``."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _bounds(metas: list[Meta], whole: bool) -> str:
    def num(v: float) -> str:
        return str(int(v)) if whole else f"{v:g}"

    def bound(name: str) -> Any:
        return next((getattr(m, name) for m in metas if getattr(m, name) is not None), None)

    ge, gt, le, lt = bound("ge"), bound("gt"), bound("le"), bound("lt")
    if ge is not None and le is not None:
        return f" in {num(ge)}..{num(le)}" if whole else f" in [{num(ge)}, {num(le)}]"
    signs = ((">=", ge), (">", gt), ("<=", le), ("<", lt))
    text = [f"{sign} {num(v)}" for sign, v in signs if v is not None]
    return " " + " and ".join(text) if text else ""


def describe(annotation: Any, plural: bool = False) -> str:
    """What an annotation accepts, in words: ``an integer >= 1``, ``one of "rgb", "bgr"``; a
    ``Meta(description=...)`` on it says it instead."""
    inner, metas = _strip(annotation)
    said = next((m.description for m in metas if m.description), None)
    if said:
        return said
    options = _options(inner)
    if len(options) > 1:  # a tagged union's tables are all "a table"
        return " or ".join(dict.fromkeys(describe(o, plural) for o in options))
    if options[0] is not inner:  # X | None: TOML has no null, so X
        return describe(options[0], plural)
    origin, args = get_origin(inner), get_args(inner)
    nonempty = "non-empty " if any(m.min_length for m in metas) else ""
    if inner is bool:
        return "true or false"
    if inner is int:
        return ("integers" if plural else "an integer") + _bounds(metas, whole=True)
    if inner is float:
        return ("numbers" if plural else "a number") + _bounds(metas, whole=False)
    if inner is str:
        return f"{nonempty}strings" if plural else f"a {nonempty}string"
    if origin is Literal:
        return "one of " + ", ".join(map(show, args)) if len(args) > 1 else show(args[0])
    if origin in (tuple, list) and args:
        if origin is list or args[-1] is Ellipsis:
            return f"a {nonempty}list of {describe(args[0], plural=True)}"
        if all(a == args[0] for a in args):
            return f"a list of {len(args)} {describe(args[0], plural=True)}"
        return "a list [" + ", ".join(map(describe, args)) + "]"
    if _is_struct(inner) or origin is dict:
        return "tables" if plural else "a table"
    return "values" if plural else "a value"


# ---------------------------------------------------------------------------- walking a path


def _is_struct(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Struct)


def _tag(cls: type[Struct]) -> tuple[str | None, Any]:
    config = cls.__struct_config__
    return config.tag_field, config.tag


@functools.cache
def _fields(cls: type[Struct]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {name: hints[name] for name in cls.__struct_fields__}


def _tables(annotation: Any) -> list[type[Struct]]:
    """The struct(s) an annotation is a table of (a tagged union gives several), else []."""
    options = _options(_strip(annotation)[0])
    return options if options and all(_is_struct(o) for o in options) else []


def _dict_values(annotation: Any) -> Any:
    inner = _strip(annotation)[0]
    return get_args(inner)[1] if get_origin(inner) is dict else None


def _array_items(annotation: Any) -> Any:
    inner = _strip(annotation)[0]
    args = get_args(inner)
    if get_origin(inner) in (tuple, list) and args and _tables(args[0]):
        return args[0]
    return None


def _is_section(annotation: Any) -> bool:
    return (
        bool(_tables(annotation))
        or _dict_values(annotation) is not None
        or bool(_array_items(annotation))
    )


def _variant(options: list[type[Struct]], value: Any) -> type[Struct]:
    """The member of a tagged union that ``value`` (a dict) names, else the first."""
    for cls in options:
        field, tag = _tag(cls)
        if field is not None and isinstance(value, dict) and value.get(field) == tag:
            return cls
    return options[0]


def _child(value: Any, key: str | int) -> Any:
    if isinstance(value, dict) and isinstance(key, str):
        return value.get(key, _MISSING)
    if isinstance(value, list | tuple) and isinstance(key, int) and 0 <= key < len(value):
        return value[key]
    return getattr(value, key, _MISSING) if isinstance(key, str) else _MISSING


@dataclass
class _Spot:
    """Where a path lands: the table (``parts``, ``index`` into an array of tables), the key in
    it, the key's annotation (None: no such key) and value; ``deeper``: the problem is inside
    the key's value (an item of a list, a key of an inline table)."""

    parts: list[str]
    array: bool
    index: int | None
    owner: type[Struct] | None
    key: str | None = None
    annotation: Any = None
    value: Any = _MISSING
    deeper: bool = False
    prefix: str = ""  # a table inside an array's table: "motion." in [[sources]][0]

    def where(self, file: str, key: str | None) -> str:
        """``<file>: <label> <key>``, the key after its prefix."""
        if not self.prefix:
            return located(file, self.label, key)
        tail = self.prefix.rstrip(".") if key is None else self.prefix + key_text(key)
        return f"{located(file, self.label)} {tail}"

    @property
    def label(self) -> str:
        if not self.parts:
            return ""
        inner = ".".join(self.parts)
        if self.array:
            return f"[[{inner}]]" + (f"[{self.index}]" if self.index is not None else "")
        return f"[{inner}]"


def _walk(root: type[Struct], data: Any, path: Sequence[str | int]) -> _Spot:
    spot = _Spot([], False, None, root)
    annotation: Any = root
    value = data
    for i, step in enumerate(path):
        deeper = i < len(path) - 1
        tables = _tables(annotation)
        if tables:
            cls = _variant(tables, value)
            spot.owner = cls
            fields = _fields(cls)
            if isinstance(step, str) and step in fields:
                if _is_section(fields[step]) and spot.index is not None:
                    spot.prefix += f"{key_text(step)}."  # [[sources]][0] motion.threshold
                    annotation, value = fields[step], _child(value, step)
                    continue
                if _is_section(fields[step]):
                    spot.parts.append(step)
                    spot.array = bool(_array_items(fields[step]))
                    annotation, value = fields[step], _child(value, step)
                    continue
                return _at(spot, step, fields[step], _child(value, step), deeper)
            field, _ = _tag(cls)
            if step == field and len(tables) > 1:
                tags = tuple(_tag(t)[1] for t in tables)
                choices = typing.cast(Any, Literal).__getitem__(tags)
                return _at(spot, step, choices, _child(value, step), deeper)
            return _at(spot, str(step), None, _child(value, step), deeper)
        values = _dict_values(annotation)
        if values is not None:
            if step == _ANY_KEY:
                step = _failingkey_text(value, values)
            if _tables(values):
                spot.parts[-1] += "." + key_text(str(step))
                annotation, value = values, _child(value, step)
                spot.owner = None
                continue
            return _at(spot, str(step), values, _child(value, step), deeper)
        items = _array_items(annotation)
        if items is not None and isinstance(step, int):
            spot.index = step
            annotation, value = items, _child(value, step)
            continue
        break
    spot.annotation, spot.value = annotation, value
    return spot


def _at(spot: _Spot, key: str, annotation: Any, value: Any, deeper: bool) -> _Spot:
    spot.key, spot.annotation, spot.value, spot.deeper = key, annotation, value, deeper
    return spot


def _failingkey_text(table: Any, values: Any) -> str:
    """The first key of ``table`` whose value ``values`` refuses (msgspec names none)."""
    for key, value in table.items() if isinstance(table, dict) else ():
        try:
            msgspec.convert(value, values, strict=True)
        except msgspec.ValidationError:
            return str(key)
    return _ANY_KEY


# ------------------------------------------------------------------------------- the message

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|(\[\.\.\.\])")
_UNKNOWN = re.compile(r"^Object contains unknown field `(.+)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(.+)`$")


def _parse(exc: msgspec.ValidationError) -> tuple[str, list[str | int]]:
    text, _, where = str(exc).partition(" - at `")
    path: list[str | int] = []
    for name, index, anykey in _STEP.findall(where.rstrip("`").removeprefix("$")):
        path.append(name or (int(index) if index else anykey))
    return text, path


def explain(exc: msgspec.ValidationError, data: Any, root: type[Struct], file: str) -> str:
    text, path = _parse(exc)
    cause = exc.__cause__
    unknown, missing = _UNKNOWN.match(text), _MISSING_FIELD.match(text)
    if isinstance(cause, ConfigKeyError):
        path += cause.key
    elif unknown or missing:
        path.append((unknown or missing).group(1))  # type: ignore[union-attr]
    spot = _walk(root, data, path)
    if isinstance(cause, ConfigKeyError):
        said = cause.message
    elif unknown and not spot.deeper and spot.annotation is None:
        return _unknown(file, spot, root)
    elif missing and not spot.deeper:
        said = f"missing; expected {describe(spot.annotation)}"
    else:
        got = "nothing" if spot.value is _MISSING else show(spot.value)
        said = f"expected {describe(spot.annotation)}, got {got}"
    return f"{spot.where(file, spot.key)}: {said}"


# ----------------------------------------------------------------------------- did you mean


@dataclass(frozen=True)
class _Known:
    label: str  # "[serve]", "[[sources]]", "[inputs.*]", "" for a top-level key
    key: str
    owner: type[Struct]
    note: str = ""  # which kind of a tagged table: 'kind = "audio"'


@functools.cache
def _catalog(root: type[Struct]) -> tuple[_Known, ...]:
    """Every key a file of ``root`` may hold, with its table."""
    known = []
    for name, annotation in _fields(root).items():
        if not _is_section(annotation):
            known.append(_Known("", name, root))
            continue
        values, items = _dict_values(annotation), _array_items(annotation)
        if items is not None:
            label, structs = f"[[{name}]]", _tables(items)
        elif values is not None:  # [inputs.<name>]; or a table of free keys, as [dims]
            label, structs = f"[{name}.*]", _tables(values)
        else:
            label, structs = f"[{name}]", _tables(annotation)
        for struct in structs:
            field, tag = _tag(struct)
            note = f"{field} = {show(tag)}" if field and len(structs) > 1 else ""
            known += [_Known(label, key, struct, note) for key in _fields(struct)]
            if field:
                known.append(_Known(label, field, struct))
    return tuple(known)


def _sections(root: type[Struct]) -> list[str]:
    return [name for name, annotation in _fields(root).items() if _is_section(annotation)]


def _render(known: _Known, spot: _Spot) -> str:
    # [inputs.*]: the name the file used, when it is in such a table ([outputs.y] from_output
    # means [inputs.y] from_output).
    here = spot.parts[0].split(".", 1)[1] if spot.parts and "." in spot.parts[0] else "<name>"
    label = known.label.replace("*", here)
    head = (
        f"{label}{'' if label.endswith('.') else ' '}{key_text(known.key)}"
        if label
        else f"{key_text(known.key)} (at the top of the file)"
    )
    return f"{head} ({known.note})" if known.note and known.owner is not spot.owner else head


def _alike(key: str, known: Sequence[_Known]) -> list[_Known]:
    close = difflib.get_close_matches(key, [k.key for k in known], n=1)
    return [next(k for k in known if k.key == close[0])] if close else []


def _unknown(file: str, spot: _Spot, root: type[Struct]) -> str:
    key = spot.key or ""
    if not spot.parts and isinstance(spot.value, dict):  # a table nobody reads
        names = _sections(root)
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean [{close[0]}]?" if close else f"the tables are {', '.join(names)}"
        return f"{located(file, f'[{key_text(key)}]')}: unknown table; {hint}"
    catalog = _catalog(root)
    here = [k for k in catalog if k.owner is spot.owner]
    if not here and spot.owner is not None:  # a table inside an array's table
        label = f"{spot.label} {spot.prefix}"
        here = [_Known(label, name, spot.owner) for name in _fields(spot.owner)]
    elsewhere = [k for k in catalog if k.key == key and k.owner is not spot.owner]
    # Nearest: spelled alike here, then anywhere; then a key holding it ("hold" for
    # hold_while_loading: too short to be spelled alike).
    near = [
        *elsewhere,
        *_alike(key, here),
        *_alike(key, catalog),
        *(k for k in (*here, *catalog) if len(key) >= 3 and key in k.key),
    ]
    if near:
        hint = f"did you mean {_render(near[0], spot)}?"
    else:
        hint = f"known: {', '.join(k.key for k in here)}" if here else "this table takes no keys"
    return f"{spot.where(file, key)}: unknown key; {hint}"
