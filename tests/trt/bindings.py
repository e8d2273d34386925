"""The real TensorRT Python bindings of each supported version, introspected without TensorRT.

NVIDIA publishes the bindings alone as wheels (`tensorrt-bindings`, `tensorrt-cu12-bindings`,
`tensorrt-cu13-bindings`): a pybind11 module, `tensorrt_bindings/tensorrt.so`, that links against
libnvinfer / libnvonnxparser / libnvinfer_plugin (and libnvparsers on 8.x). Those libraries are
gigabytes and need a GPU, but the module only needs their *symbols* to load: every TensorRT
object is reached through virtual calls on pointers the `create*_INTERNAL` entry points return.
So this module

1. downloads the wheel for this interpreter with pip into `.cache/trt-bindings/`,
2. builds stub libraries with gcc whose every entry point returns 0 (the sonames and symbols
   are read from the wheel's ELF: `readelf -d`, `nm -D --undefined-only`, `readelf -V`),
3. imports the bindings in a subprocess (one TensorRT version per process) with
   `LD_LIBRARY_PATH` pointing at the stubs, and dumps every class, base, member, enum member and
   pybind11 signature as JSON into `.cache/trt-api/<version>.json`,
4. serves that JSON through `TrtApi`.

Nothing here is a hand-written list of TensorRT names: what `api(v)` says exists is what the
real bindings of version v define. The JSON is keyed by this file's hash, the wheel's file name
and the Python version, so a changed extractor regenerates it.

Run as a script (`python tests/trt/bindings.py --introspect OUT`) only by `api()` itself, inside
the subprocess that has the bindings importable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "VERSIONS",
    "BindingsError",
    "Member",
    "Overload",
    "Param",
    "TrtApi",
    "api",
    "cache_dir",
]

VERSIONS = ("8.6.1", "10.3.0", "11.4.0.106")

# Which PyPI project carries the bindings of each version.
_DISTRIBUTIONS = {
    "8.6.1": "tensorrt-bindings",
    "10.3.0": "tensorrt-cu12-bindings",
    "11.4.0.106": "tensorrt-cu13-bindings",
}

_REPO = Path(__file__).resolve().parents[2]
_PACKAGE = "tensorrt_bindings"


class BindingsError(RuntimeError):
    """The bindings of a version could not be fetched, stubbed or imported."""


def cache_dir() -> Path:
    """Root of the caches (`<repo>/.cache`, git-ignored); `EDGERT_CACHE_DIR` overrides it."""
    return Path(os.environ.get("EDGERT_CACHE_DIR", _REPO / ".cache"))


# --------------------------------------------------------------------------------------------
# The API description


@dataclass(frozen=True)
class Param:
    """One parameter of one overload (`self` removed).

    kind is "positional" (positional or keyword), "positional_only", "keyword_only",
    "var_positional" (*args) or "var_keyword" (**kwargs).
    """

    name: str
    has_default: bool
    kind: str = "positional"
    annotation: str = ""


@dataclass(frozen=True)
class Overload:
    """One pybind11 overload: its parameters and, when it parses cleanly as a TensorRT class,
    the class it returns (`-> tensorrt.INetworkDefinition` gives "INetworkDefinition")."""

    params: tuple[Param, ...]
    returns: str | None
    text: str

    def binds(self, n_positional: int, keywords: list[str]) -> bool:
        """Whether a call with n_positional arguments and these keyword names fits."""
        positional = [p for p in self.params if p.kind in ("positional", "positional_only")]
        var_pos = any(p.kind == "var_positional" for p in self.params)
        var_kw = any(p.kind == "var_keyword" for p in self.params)
        if n_positional > len(positional) and not var_pos:
            return False
        filled = {p.name for p in positional[:n_positional]}
        by_keyword = {p.name for p in self.params if p.kind in ("positional", "keyword_only")}
        for name in keywords:
            if name in filled or (name not in by_keyword and not var_kw):
                return False
            filled.add(name)
        return all(
            p.has_default or p.name in filled
            for p in self.params
            if p.kind not in ("var_positional", "var_keyword")
        )


@dataclass(frozen=True)
class Member:
    """An attribute of a class (or of the module, for owner "").

    kind: "method", "static", "property", "static_property", "enum" (a member of the enum
    class that owns it), "class" (a nested or aliased class; type is its qualified name),
    "constant" (a value; type is its class when that is a TensorRT class), "function" and
    "module" (module level only).
    """

    owner: str
    name: str
    kind: str
    type: str | None = None
    writable: bool = False
    overloads: tuple[Overload, ...] = ()
    annotation: str = ""  # a property's type as pybind11 writes it ("int", "bool", ...)

    @property
    def returns(self) -> set[str]:
        """TensorRT classes a call returns (only clean annotations; empty when unknown)."""
        return {o.returns for o in self.overloads if o.returns}


@dataclass(frozen=True)
class TrtApi:
    """What the real bindings of one TensorRT version define.

    Names are the ones Python code writes after `trt.`: classes by their qualified name
    ("Builder", "ILogger.Severity"), module-level functions and constants by their name.

    - `has(name)`: does `trt.<name>` exist (class, function, constant or submodule)?
    - `has(cls, member)`: does `trt.<cls>.<member>` exist, following the pybind11 bases?
      Enum members are members of their enum class: `has("BuilderFlag", "FP16")`.
    """

    version: str
    data: dict[str, Any] = field(repr=False, compare=False)

    # -- classes
    def classes(self) -> set[str]:
        """Qualified names of every class (nested ones dotted: "ILogger.Severity")."""
        return set(self.data["classes"])

    def resolve(self, name: str) -> str | None:
        """The qualified name of the class `trt.<name>` is, following aliases and nested
        classes: "Logger.Severity" is "ILogger.Severity"; None when it is no class."""
        if name in self.data["classes"]:
            return name
        owner, _, last = name.rpartition(".")
        found = self.member(owner, last) if owner else self.member("", name)
        return found.type if found is not None and found.kind == "class" else None

    def is_class(self, name: str) -> bool:
        return self.resolve(name) is not None

    def bases(self, cls: str) -> list[str]:
        """Direct TensorRT bases of a class (pybind11's own base class left out)."""
        return list(self._class(cls)["bases"])

    def mro(self, cls: str) -> list[str]:
        """The class and its TensorRT bases, nearest first ([] when it is no class)."""
        order: list[str] = []
        resolved = self.resolve(cls)
        todo = [resolved] if resolved else []
        while todo:
            name = todo.pop(0)
            if name not in order and name in self.data["classes"]:
                order.append(name)
                todo.extend(self.data["classes"][name]["bases"])
        return order

    def is_enum(self, cls: str) -> bool:
        return bool(self._class(cls)["enum"])

    def enum_members(self, cls: str) -> list[str]:
        """Members of an enum class in definition order ([] for a class that is no enum)."""
        return list(self._class(cls)["enum"] or [])

    def members(self, cls: str) -> set[str]:
        """Public attribute names of a class, inherited ones included ("" for the module)."""
        if cls == "":
            return set(self.data["module"])
        names: set[str] = set()
        for name in self.mro(cls):
            names |= {m for m in self.data["classes"][name]["members"] if not m.startswith("_")}
        return names

    def member(self, cls: str, member: str) -> Member | None:
        """One attribute of a class, found along the bases; cls "" means the module."""
        if cls == "":
            entry = self.data["module"].get(member)
            return _member("", member, entry) if entry is not None else None
        for name in self.mro(cls):
            entry = self.data["classes"][name]["members"].get(member)
            if entry is not None:
                return _member(name, member, entry)
        return None

    def has(self, cls: str, member: str | None = None) -> bool:
        """`has(name)`: `trt.<name>` exists; `has(cls, member)`: `trt.<cls>.<member>` exists."""
        if member is None:
            if cls in self.data["classes"] or cls in self.data["module"]:
                return True
            owner, _, last = cls.rpartition(".")
            return bool(owner) and self.has(owner, last)
        return self.member(cls, member) is not None

    def signatures(self, cls: str, member: str | None = None) -> list[list[Param]]:
        """Parameters of each overload of `trt.<cls>.<member>(...)`, `self` removed.

        `signatures(cls)` is calling `trt.<cls>(...)`: a class's constructor or a module-level
        function. A class without a pybind11 constructor has no overloads ([]).
        """
        return [list(o.params) for o in self.overloads(cls, member)]

    def overloads(self, cls: str, member: str | None = None) -> list[Overload]:
        if member is None:
            if self.resolve(cls) is not None:
                found = self.member(cls, "__init__")
                return list(found.overloads) if found else []
            found = self.member("", cls)
        else:
            found = self.member(cls, member)
        if found is None:
            raise KeyError(f"TensorRT {self.version} has no {cls}.{member}")
        return list(found.overloads)

    def _class(self, cls: str) -> dict[str, Any]:
        resolved = self.resolve(cls)
        if resolved is None:
            raise KeyError(f"TensorRT {self.version} has no class {cls}")
        return self.data["classes"][resolved]  # type: ignore[no-any-return]


def _member(owner: str, name: str, entry: dict[str, Any]) -> Member:
    overloads = tuple(
        Overload(
            params=tuple(Param(**p) for p in o["params"]),
            returns=o["returns"],
            text=o["text"],
        )
        for o in entry.get("overloads", ())
    )
    return Member(
        owner=owner,
        name=name,
        kind=entry["kind"],
        type=entry.get("type"),
        writable=entry.get("writable", False),
        overloads=overloads,
        annotation=entry.get("annotation", ""),
    )


@cache
def api(version: str) -> TrtApi:
    """The API of one TensorRT version: fetched, stubbed and introspected once, then cached on
    disk in `.cache/trt-api/<version>.json` (and in memory for the process)."""
    if version not in _DISTRIBUTIONS:
        raise BindingsError(f"unknown TensorRT version {version!r}; known: {', '.join(VERSIONS)}")
    out = cache_dir() / "trt-api" / f"{version}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.with_suffix(".lock")):
        wheel = _wheel(version)
        key = _cache_key(wheel)
        if out.exists():
            with contextlib.suppress(ValueError, KeyError):
                data = json.loads(out.read_text())
                if data["key"] == key:
                    return TrtApi(version, data)
        data = _introspect(version, wheel)
        data["key"] = key
        _write_atomic(out, json.dumps(data, indent=1, sort_keys=True))
    return TrtApi(version, data)


# --------------------------------------------------------------------------------------------
# Fetch, unpack, stub, import


def _cache_key(wheel: Path) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{digest}:{wheel.name}:{sys.version_info[0]}.{sys.version_info[1]}"


def _wheel(version: str) -> Path:
    """The cached wheel of this version for this interpreter, downloaded with pip if absent."""
    dist = _DISTRIBUTIONS[version]
    wheels = cache_dir() / "trt-bindings"
    wheels.mkdir(parents=True, exist_ok=True)
    found = _compatible_wheel(wheels, dist, version)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", f"{dist}=={version}", "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = _compatible_wheel(wheels, dist, version)
    if proc.returncode != 0 or found is None:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise BindingsError(
            f"could not download the TensorRT {version} bindings ({dist}=={version}, a wheel "
            f"for {_python_tag()} on {platform.machine()}) with `{' '.join(cmd)}`; these tests "
            f"need PyPI once, then use the cache in {wheels}.\npip said:\n{tail}"
        )
    return found


def _python_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def _compatible_wheel(directory: Path, dist: str, version: str) -> Path | None:
    stem = dist.replace("-", "_")
    machine = platform.machine()
    for path in sorted(directory.glob(f"{stem}-{version}-*.whl")):
        tags = path.name[: -len(".whl")].split("-")[2:]
        if tags and tags[0] == _python_tag() and "linux" in tags[-1] and machine in tags[-1]:
            return path
    return None


def _unpacked(wheel: Path) -> Path:
    target = wheel.parent / wheel.name[: -len(".whl")]
    if not (target / _PACKAGE / "__init__.py").exists():
        tmp = Path(tempfile.mkdtemp(dir=wheel.parent, prefix=".unpack-"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        tmp.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def _bindings_so(root: Path) -> Path:
    found = sorted((root / _PACKAGE).glob("tensorrt*.so"))
    if not found:
        raise BindingsError(f"no {_PACKAGE}/tensorrt*.so in {root}")
    return found[0]


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BindingsError(f"{cmd[0]} is needed to stub the TensorRT libraries: {exc}") from exc
    if proc.returncode != 0:
        raise BindingsError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()}")
    return proc.stdout


@dataclass
class _StubLib:
    soname: str
    symbols: dict[str, str | None] = field(default_factory=dict)  # symbol -> symbol version


def _stub_plan(so: Path) -> list[_StubLib]:
    """Which missing libraries the bindings need and which symbols each must define."""
    missing: list[str] = []
    present: list[str] = []
    for line in _run(["ldd", str(so)]).splitlines():
        m = re.match(r"\s*(\S+) => (.*)$", line)
        if m and m.group(2).strip() == "not found":
            missing.append(m.group(1))
        elif m:
            present.append(m.group(2).split(" (")[0].strip())
    libs = {name: _StubLib(name) for name in missing}
    # Symbol versions the bindings want from the missing libraries (readelf -V, .gnu.version_r).
    version_owner: dict[str, str] = {}
    current = None
    for line in _run(["readelf", "-V", "-W", str(so)]).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current in libs:
            version_owner[m.group(1)] = current
    provided: set[str] = set()
    for lib in present:
        out = _run(["nm", "-D", "--defined-only", lib])
        provided |= {ln.split()[-1].split("@")[0] for ln in out.splitlines() if ln.strip()}
    undefined = _run(["nm", "-D", "--undefined-only", "--with-symbol-versions", str(so)])
    for line in undefined.splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U":  # weak ("w") references may stay unresolved
            continue
        name, _, ver = parts[1].partition("@")
        ver = ver.lstrip("@")
        if ver:
            if ver in version_owner:
                libs[version_owner[ver]].symbols[name] = ver
            continue  # versioned against a library that is present
        if name.startswith(("Py", "_Py")) or name in provided:
            continue  # the interpreter and the system libraries define these
        libs[_owner_of(name, missing)].symbols[name] = None
    return list(libs.values())


def _owner_of(symbol: str, missing: list[str]) -> str:
    """Which of the missing libraries a TensorRT entry point belongs to (any would load; this
    keeps the stubs readable)."""
    wanted = "libnvinfer.so"
    if "OnnxParser" in symbol:
        wanted = "libnvonnxparser.so"
    elif symbol.startswith("initLibNvInferPlugins"):
        wanted = "libnvinfer_plugin.so"
    elif "nvuffparser" in symbol or "nvcaffeparser" in symbol:
        wanted = "libnvparsers.so"
    for name in missing:
        if name.startswith(wanted + "."):
            return name
    return next((n for n in missing if n.startswith("libnvinfer.so.")), missing[0])


def _encoded_version(version: str, symbol: str) -> int:
    major, minor, patch = (int(x) for x in version.split(".")[:3])
    # NV_TENSORRT_VERSION was MAJOR*1000+... before TensorRT 10; the parser always used 10000.
    scale = 1000 if major < 10 and "Onnx" not in symbol else 10000
    return major * scale + minor * 100 + patch


def _stub_source(version: str, lib: _StubLib) -> str:
    lines = [
        f"/* Stub {lib.soname} for the TensorRT {version} bindings: generated by {__name__}. */"
    ]
    for name in sorted(lib.symbols):
        body = "return 0;"
        if "Version" in name:  # get*Version() is the one whose value a caller may check
            body = f"return {_encoded_version(version, name)};"
        lines.append(f"long {name}(void) {{ {body} }}")
    return "\n".join(lines) + "\n"


def _version_script(lib: _StubLib) -> str | None:
    by_version: dict[str, list[str]] = {}
    for name, ver in lib.symbols.items():
        if ver:
            by_version.setdefault(ver, []).append(name)
    if not by_version:
        return None
    nodes = []
    for ver, names in sorted(by_version.items()):
        nodes.append(f"{ver} {{ global: {'; '.join(sorted(names))}; }};")
    unversioned = sorted(n for n, v in lib.symbols.items() if not v)
    if unversioned:  # symbols asked for without a version go into an extra default node
        nodes.append(f"STUB_DEFAULT {{ global: {'; '.join(unversioned)}; local: *; }};")
    return "\n".join(nodes) + "\n"


def _stubs(version: str, so: Path) -> Path:
    """Build (or reuse) the stub libraries of one version; returns their directory."""
    target = cache_dir() / "trt-bindings" / "stubs" / version
    target.mkdir(parents=True, exist_ok=True)
    if shutil.which("gcc") is None:
        raise BindingsError("gcc is needed to build the TensorRT stub libraries; install it")
    for lib in _stub_plan(so):
        source = _stub_source(version, lib)
        c_file = target / f"{lib.soname}.c"
        out = target / lib.soname
        if out.exists() and c_file.exists() and c_file.read_text() == source:
            continue
        c_file.write_text(source)
        cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), f"-Wl,-soname,{lib.soname}"]
        script = _version_script(lib)
        if script:
            (target / f"{lib.soname}.map").write_text(script)
            cmd.append(f"-Wl,--version-script={target / f'{lib.soname}.map'}")
        _run([*cmd, str(c_file)])
    return target


def _introspect(version: str, wheel: Path) -> dict[str, Any]:
    root = _unpacked(wheel)
    stubs = _stubs(version, _bindings_so(root))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(stubs), env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PYTHONPATH"] = str(root)
    env["PYTHONWARNINGS"] = "ignore"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--introspect", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            raise BindingsError(
                f"importing the TensorRT {version} bindings ({wheel.name}) against the stub "
                f"libraries in {stubs} failed:\n{proc.stderr.strip()[-3000:]}"
            )
        data: dict[str, Any] = json.loads(out.read_text())
    if data["version"] != version:
        raise BindingsError(f"{wheel.name} reports version {data['version']}, not {version}")
    data["wheel"] = wheel.name
    return data


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# pybind11 signature parsing (used inside the subprocess, and pure: tested directly)

_OPEN, _CLOSE = "([{<", ")]}>"
_TRT_TYPE = re.compile(r"^tensorrt\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def normalize(text: str) -> str:
    """Write types as an installed TensorRT names them: the wheel's module is
    `tensorrt_bindings.tensorrt`, what `import tensorrt` gives is `tensorrt`."""
    return re.sub(r"\btensorrt_bindings\.(?:tensorrt\.)?", "tensorrt.", text)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on sep outside brackets and quotes (`<DataType.FLOAT: 0>` and `List[int]` stay
    whole)."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE and not (ch == ">" and text[i - 1] == "-"):
            depth = max(depth - 1, 0)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _matching_paren(text: str, start: int) -> int:
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE and not (ch == ">" and text[i - 1] == "-"):
            depth -= 1
            if depth == 0:
                return i
    return -1


def trt_class_of(annotation: str) -> str | None:
    """ "tensorrt.INetworkDefinition" -> "INetworkDefinition"; None for anything that is not
    plainly one TensorRT class (C++ names such as `nvonnxparser::IParserError`, unions, lists)."""
    m = _TRT_TYPE.match(normalize(annotation.strip()))
    return m.group(1) if m else None


def parse_signature(line: str, name: str, drop_self: bool) -> dict[str, Any] | None:
    """Parse one pybind11 signature line `name(a: T, b: U = x) -> R`."""
    line = line.strip()
    if not line.startswith(name + "("):
        return None
    close = _matching_paren(line, len(name))
    if close < 0:
        return None
    inner = line[len(name) + 1 : close]
    rest = line[close + 1 :].strip()
    ret = rest[2:].strip() if rest.startswith("->") else ""
    params: list[dict[str, Any]] = []
    kind = "positional"
    for i, part in enumerate(split_top_level(inner)):
        if part == "/":
            for p in params:
                p["kind"] = "positional_only"
            continue
        if part == "*":
            kind = "keyword_only"
            continue
        if part.startswith("**"):
            params.append(_param(part[2:], "var_keyword"))
            continue
        if part.startswith("*"):
            params.append(_param(part[1:], "var_positional"))
            kind = "keyword_only"
            continue
        param = _param(part, kind)
        if i == 0 and drop_self and param["name"] in ("self", "arg0"):
            continue
        params.append(param)
    return {"params": params, "returns": trt_class_of(ret), "text": line}


def _param(text: str, kind: str) -> dict[str, Any]:
    pieces = split_top_level(text, "=")
    has_default = len(pieces) > 1
    head = pieces[0]
    pname, _, annotation = head.partition(":")
    return {
        "name": pname.strip(),
        "has_default": has_default,
        "kind": kind,
        "annotation": annotation.strip(),
    }


def parse_doc(doc: str | None, name: str, drop_self: bool) -> list[dict[str, Any]]:
    """All overloads in a pybind11 docstring ("Overloaded function." lists them as `1. ...`)."""
    if not doc:
        return []
    lines = normalize(doc).strip().splitlines()
    if len(lines) > 1 and lines[1].strip() == "Overloaded function.":
        found = []
        for line in lines[2:]:
            m = re.match(r"^\d+\. (.*)$", line)
            if m:
                sig = parse_signature(m.group(1), name, drop_self)
                if sig:
                    found.append(sig)
        return found
    sig = parse_signature(lines[0], name, drop_self)
    return [sig] if sig else []


# --------------------------------------------------------------------------------------------
# The extractor: runs in the subprocess, with the bindings importable.


def _python_signature(func: Any, drop_self: bool) -> list[dict[str, Any]]:
    import inspect

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "positional_only",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
        inspect.Parameter.KEYWORD_ONLY: "keyword_only",
        inspect.Parameter.VAR_POSITIONAL: "var_positional",
        inspect.Parameter.VAR_KEYWORD: "var_keyword",
    }
    params = [
        {
            "name": p.name,
            "has_default": p.default is not inspect.Parameter.empty,
            "kind": kinds[p.kind],
            "annotation": ""
            if p.annotation is inspect.Parameter.empty
            else normalize(inspect.formatannotation(p.annotation)),
        }
        for p in sig.parameters.values()
    ]
    if drop_self and params and params[0]["kind"] in ("positional", "positional_only"):
        params = params[1:]
    return [{"params": params, "returns": None, "text": normalize(f"{func.__name__}{sig}")}]


class _Extractor:
    def __init__(self, package: Any) -> None:
        self.package = package
        self.native = package.tensorrt  # the pybind11 module
        self.binary = Path(self.native.__file__).read_bytes()
        self.classes: dict[str, Any] = {}

    def is_trt_class(self, obj: Any) -> bool:
        return isinstance(obj, type) and (obj.__module__ or "").startswith(_PACKAGE)

    def qualname(self, cls: type) -> str:
        """ "ILogger.Severity" for the native module's classes; classes of the wheel's Python
        submodules get the submodule's name in front ("plugin.TensorDesc")."""
        parts = cls.__module__.split(".")
        if len(parts) > 1 and parts[1] != "tensorrt":
            return f"{parts[1]}.{cls.__qualname__}"
        return cls.__qualname__

    def callable_entry(self, obj: Any, name: str, kind: str, drop_self: bool) -> dict[str, Any]:
        doc = getattr(obj, "__doc__", None)
        if type(obj).__name__ in ("builtin_function_or_method", "instancemethod"):
            overloads = parse_doc(doc, name, drop_self)
        else:
            overloads = _python_signature(obj, drop_self)
        return {"kind": kind, "overloads": overloads}

    def member_entry(self, owner: type, name: str, value: Any) -> dict[str, Any] | None:
        kind = type(value).__name__
        if self.is_trt_class(value):
            self.add_class(value)
            return {"kind": "class", "type": self.qualname(value)}
        if kind == "instancemethod" or (callable(value) and kind == "function"):
            target = getattr(value, "__func__", value)
            return self.callable_entry(target, name, "method", drop_self=True)
        if isinstance(value, staticmethod):
            return self.callable_entry(value.__func__, name, "static", drop_self=False)
        if isinstance(value, classmethod):
            return self.callable_entry(value.__func__, name, "static", drop_self=True)
        if isinstance(value, property):
            overloads = parse_doc(getattr(value.fget, "__doc__", None), "", drop_self=True)
            returns = overloads[0]["returns"] if overloads else None
            text = overloads[0]["text"] if overloads else ""
            return {
                "kind": "property",
                "type": returns,
                "writable": value.fset is not None,
                "annotation": text.rpartition("->")[2].strip() if "->" in text else "",
            }
        if kind == "pybind11_static_property":
            return {"kind": "static_property", "writable": value.fset is not None}
        if isinstance(value, owner):
            return {"kind": "enum", "type": self.qualname(owner)}
        if self.is_trt_class(type(value)):
            return {"kind": "constant", "type": self.qualname(type(value))}
        if kind in ("wrapper_descriptor", "PyCapsule", "method_descriptor"):
            return None
        return {"kind": "constant", "type": None, "python_type": kind}

    def add_class(self, cls: type) -> None:
        qual = self.qualname(cls)
        if qual in self.classes:
            return
        info: dict[str, Any] = {
            "bases": [self.qualname(b) for b in cls.__bases__ if self.is_trt_class(b)],
            "enum": None,
            "members": {},
        }
        self.classes[qual] = info
        entries = vars(cls).get("__members__")
        if entries is not None and "__entries" in vars(cls):
            info["enum"] = list(cls.__members__)  # type: ignore[attr-defined]
        for name, value in vars(cls).items():
            if name.startswith("_") and name != "__init__":
                continue
            if name == "__init__":
                if type(value).__name__ == "instancemethod":
                    info["members"][name] = self.callable_entry(value, name, "method", True)
                continue
            entry = self.member_entry(cls, name, value)
            if entry is not None:
                info["members"][name] = entry
        if info["enum"]:
            for name in info["enum"]:  # pybind11 keeps members in a static property
                info["members"].setdefault(name, {"kind": "enum", "type": qual})
        for name, entry in self.hooks(cls).items():
            info["members"].setdefault(name, entry)

    def hooks(self, cls: type) -> dict[str, Any]:
        """Methods TensorRT calls on a Python subclass, as the class's docstring example shows
        them (`class MyOutputAllocator(trt.IOutputAllocator): def reallocate_output_async(self,
        ...)`). From TensorRT 10 the bindings of IOutputAllocator define none of them as
        attributes: pybind11's trampoline looks the override up by name, so the docstring is
        where the wheel states those names. `confirmed` says the name is also a string in the
        compiled module (the trampoline's lookup key)."""
        found: dict[str, Any] = {}
        current = None
        doc = cls.__doc__ if isinstance(cls.__doc__, str) else ""
        for line in doc.splitlines():
            m = re.match(r"\s*class \w+\(trt\.([\w.]+)\):", line)
            if m:
                current = m.group(1)
                continue
            m = re.match(r"\s*def (\w+)\((.*)\):", line)
            if m and current == cls.__qualname__ and not m.group(1).startswith("_"):
                name = m.group(1)
                sig = parse_signature(f"{name}({m.group(2)})", name, drop_self=True)
                found[name] = {
                    "kind": "hook",
                    "overloads": [sig] if sig else [],
                    "confirmed": b"\0" + name.encode() + b"\0" in self.binary,
                }
        return found

    def module_entry(self, name: str, value: Any) -> dict[str, Any] | None:
        import types

        if isinstance(value, types.ModuleType):
            return None
        if self.is_trt_class(value):
            self.add_class(value)
            return {"kind": "class", "type": self.qualname(value)}
        if isinstance(value, (types.BuiltinFunctionType, types.FunctionType)):
            return self.callable_entry(value, name, "function", drop_self=False)
        if self.is_trt_class(type(value)):
            return {"kind": "constant", "type": self.qualname(type(value))}
        return {"kind": "constant", "type": None, "python_type": type(value).__name__}

    def namespace(self, module: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in sorted(vars(module).items()):
            if name.startswith("_") and name != "__version__":
                continue
            entry = self.module_entry(name, value)
            if entry is not None:
                out[name] = entry
        return out

    def drop_unknown_returns(self) -> None:
        """A return annotation counts only when it names a class the bindings define."""
        for info in self.classes.values():
            for entry in info["members"].values():
                for overload in entry.get("overloads", ()):
                    if overload["returns"] not in self.classes:
                        overload["returns"] = None
                if entry["kind"] == "property" and entry.get("type") not in self.classes:
                    entry["type"] = None

    def run(self) -> dict[str, Any]:
        import importlib
        import pkgutil

        module = self.namespace(self.package)
        submodules: dict[str, Any] = {}
        for sub in pkgutil.iter_modules(self.package.__path__):
            if sub.name.startswith("_") or sub.name == "tensorrt":
                continue
            try:
                mod = importlib.import_module(f"{_PACKAGE}.{sub.name}")
            except Exception as exc:  # recorded: a submodule that needs a GPU to import
                submodules[sub.name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            members = self.namespace(mod)
            submodules[sub.name] = {"members": sorted(members)}
            module[sub.name] = {"kind": "module"}
            self.classes[sub.name] = {"bases": [], "enum": None, "members": members, "module": 1}
        self.drop_unknown_returns()
        return {
            "version": self.package.__version__,
            "python": platform.python_version(),
            "module": module,
            "classes": dict(sorted(self.classes.items())),
            "submodules": submodules,
        }


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "--introspect":
        print("usage: bindings.py --introspect OUT.json (run by api(), not by hand)")
        return 2
    import importlib

    package = importlib.import_module(_PACKAGE)
    # Code shipped inside the wheel (tensorrt.plugin) imports the bindings as `tensorrt`, as
    # installed TensorRT provides them.
    sys.modules.setdefault("tensorrt", package)
    data = _Extractor(package).run()
    Path(argv[1]).write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
