"""Which TensorRT names does a module use, and does each TensorRT version have them?

A static check of `edgert/backends/trt_compat.py` (or any source following its convention)
against the real bindings of each version (`tests/trt/bindings.py`), without TensorRT or a GPU.

The convention it enforces:
- `import tensorrt as trt` (any alias; `from tensorrt import X` is checked too).
- Version branches are module-level classes carrying `TRT_VERSION = "<version>"`, the
  introspected version they are checked against: `class Trt8` ("8.6.1"), `class Trt10(Trt8)`
  ("10.3.0"), `class Trt11(Trt10)` ("11.4.0.106"). A version class's effective methods are its
  own plus the inherited ones it does not override, so a Trt8 method that Trt10 inherits is
  checked against 10.3.0 too. A subclass without its own TRT_VERSION inherits it.
- Everything else runs on every version and is checked against all of them: module-level
  functions, methods of other classes, and all code that runs at import (module statements,
  class bodies, decorators, default values, and annotations unless the module has
  `from __future__ import annotations`).
- Annotate every TensorRT object with its `trt` type. Only typed names are checked:
  parameters, variables and `self.<attr>` annotated `trt.X` (also `trt.X | None`,
  `Optional[trt.X]`, strings), names assigned from `trt.X(...)`, from a method whose pybind11
  signature returns a TensorRT class (`builder.create_network()` is an INetworkDefinition), from
  a property whose type is one, or from `self.method()` whose return annotation is `trt.X`.
  Anything else is not checked. Deliberate probing goes through `getattr(obj, "name", None)`,
  which the checker does not see.

What is checked:
(a) chains on the module: `trt.Builder`, `trt.BuilderFlag.FP16`, `trt.ILogger.Severity.ERROR`;
(b) attributes of typed objects (following the pybind11 bases), stores into read-only
    properties, and calls: keyword names must be parameters of an overload and the positional
    count must fit one (calls with `*args`/`**kwargs` are not checked);
(c) classes that subclass a TensorRT class (also nested in functions): every public method
    they define must exist on the base, so a misspelled override (`reallocate_output_asnyc`)
    that TensorRT would silently never call is caught. An override counts when the base has it
    in any version the code runs on (TensorRT just never calls it where it does not exist), and
    helper methods of such subclasses are kept private (`_name`).
Names starting with `_` (dunders, pybind11 internals) are not checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.trt.bindings import VERSIONS, Member, Overload, TrtApi, api

__all__ = ["Violation", "check", "check_file", "version_classes"]

_CALLABLE = ("method", "static", "hook", "function")
_FuncDef = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True, order=True)
class Violation:
    """One use of a TensorRT name that the bindings of `version` do not have."""

    filename: str
    line: int
    version: str
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.version}: {self.message}"


def check_file(path: str | Path, versions: Sequence[str] = VERSIONS) -> list[Violation]:
    """Check one source file; see `check`."""
    path = Path(path)
    return check(path.read_text(), str(path), versions)


def check(
    source: str, filename: str = "<source>", versions: Sequence[str] = VERSIONS
) -> list[Violation]:
    """Every use of a TensorRT name in `source` that a version lacks, for each of `versions`."""
    module = _Module(ast.parse(source, filename))
    found: set[Violation] = set()
    for name, version in module.declared_versions.items():
        if version not in VERSIONS:
            line = module.classes[name].lineno
            message = f"{name}.TRT_VERSION {version!r} is none of the introspected {VERSIONS}"
            found.add(Violation(filename, line, version, message))
    for version in versions:
        found |= _Walker(module, filename, version).run()
    return sorted(found, key=lambda v: (v.line, _order(v.version), v.message))


def _order(version: str) -> int:
    return VERSIONS.index(version) if version in VERSIONS else len(VERSIONS)


def version_classes(source: str) -> dict[str, str]:
    """Module-level version classes of a source and the TensorRT version each is checked against."""
    return dict(_Module(ast.parse(source)).version_of)


# --------------------------------------------------------------------------------------------
# The module's shape: aliases, classes, version classes


class _Module:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "tensorrt":
                        self.aliases.add(alias.asname or alias.name)
        self.future_annotations = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "__future__"
            and any(a.name == "annotations" for a in node.names)
            for node in tree.body
        )
        self.classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        self.declared_versions: dict[str, str] = {}
        for name, cls in self.classes.items():
            declared = _declared_version(cls)
            if declared is not None:
                self.declared_versions[name] = declared
        self.version_of: dict[str, str] = {}
        for name in self.classes:
            for base in self.mro(name):
                if base in self.declared_versions:
                    self.version_of[name] = self.declared_versions[base]
                    break

    def mro(self, name: str) -> list[str]:
        """The module-level classes a class inherits from, itself first (depth-first)."""
        order: list[str] = []

        def visit(cls: str) -> None:
            if cls in order or cls not in self.classes:
                return
            order.append(cls)
            for base in self.classes[cls].bases:
                if isinstance(base, ast.Name):
                    visit(base.id)

        visit(name)
        return order

    def effective_methods(self, name: str) -> dict[str, _FuncDef]:
        """Methods a class has: its own plus the inherited ones it does not override."""
        methods: dict[str, _FuncDef] = {}
        for cls in self.mro(name):
            for node in self.classes[cls].body:
                if isinstance(node, _FuncDef) and node.name not in methods:
                    methods[node.name] = node
        return methods

    def method_versions(self, func: _FuncDef) -> tuple[str, ...]:
        """Versions whose version class runs this method."""
        return tuple(
            sorted(
                {
                    version
                    for cls, version in self.version_of.items()
                    if self.effective_methods(cls).get(func.name) is func
                },
                key=VERSIONS.index,
            )
        )


def _declared_version(cls: ast.ClassDef) -> str | None:
    for node in cls.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        for target in targets:
            if (
                isinstance(target, ast.Name)
                and target.id == "TRT_VERSION"
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                return value.value
    return None


# --------------------------------------------------------------------------------------------
# The walk, one TensorRT version at a time


@dataclass
class _Ctx:
    scope: tuple[str, ...]  # versions this code runs on (for the override rule)
    owner: str | None  # module-level class whose self.<attr> / self.<method>() resolve
    env: dict[str, str] = field(default_factory=dict)  # name -> TensorRT class
    import_time: bool = False

    def child(self, **changes: object) -> _Ctx:
        return replace(self, env=dict(self.env), **changes)  # type: ignore[arg-type]


class _Walker:
    def __init__(self, module: _Module, filename: str, version: str) -> None:
        self.m = module
        self.filename = filename
        self.version = version
        self.api: TrtApi = api(version)
        self.found: set[Violation] = set()
        self._self_types: dict[str, dict[str, str]] = {}

    # -- driver
    def run(self) -> set[Violation]:
        if not self.m.aliases:
            return self.found
        everywhere = VERSIONS
        top = _Ctx(scope=everywhere, owner=None, import_time=True)
        top.env = self.module_env()
        self.stmts(self.m.tree.body, top)
        for node in self.m.tree.body:
            if isinstance(node, _FuncDef):
                self.body(node, _Ctx(scope=everywhere, owner=None, env=dict(top.env)))
            elif isinstance(node, ast.ClassDef) and node.name not in self.m.version_of:
                for func in self.m.effective_methods(node.name).values():
                    if func in node.body:
                        self.body(func, _Ctx(everywhere, node.name, dict(top.env)))
                self.nested_class_methods(node, _Ctx(everywhere, None, dict(top.env)))
        for cls, version in self.m.version_of.items():
            if version != self.version:
                continue
            for func in self.m.effective_methods(cls).values():
                scope = self.m.method_versions(func)
                self.body(func, _Ctx(scope, cls, dict(top.env)))
            for base in self.m.mro(cls):
                self.nested_class_methods(self.m.classes[base], _Ctx(everywhere, None, {}))
        return self.found

    def nested_class_methods(self, cls: ast.ClassDef, ctx: _Ctx) -> None:
        for node in cls.body:
            if isinstance(node, ast.ClassDef):
                for func in node.body:
                    if isinstance(func, _FuncDef):
                        self.body(func, ctx.child())
                self.nested_class_methods(node, ctx)

    def module_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        ctx = _Ctx(scope=VERSIONS, owner=None, env=env)
        for node in self.m.tree.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.bind(env, node.target.id, self.annotation_class(node.annotation))
            elif isinstance(node, ast.Assign):
                typed = self.infer(node.value, ctx)
                for target in node.targets:
                    self.bind_target(env, target, typed)
        return env

    def report(self, node: ast.AST, message: str) -> None:
        line = getattr(node, "lineno", 0)
        self.found.add(Violation(self.filename, line, self.version, message))

    # -- statements
    def stmts(self, body: Sequence[ast.stmt], ctx: _Ctx) -> None:
        for stmt in body:
            self.stmt(stmt, ctx)

    def stmt(self, node: ast.stmt, ctx: _Ctx) -> None:
        if isinstance(node, _FuncDef):
            self.definition(node, ctx)
            if not ctx.import_time:
                self.body(node, ctx.child())
            ctx.env.pop(node.name, None)
        elif isinstance(node, ast.ClassDef):
            self.class_statement(node, ctx)
        elif isinstance(node, ast.Assign):
            self.expr(node.value, ctx)
            typed = self.infer(node.value, ctx)
            for target in node.targets:
                self.store(target, ctx)
                self.bind_target(ctx.env, target, typed)
        elif isinstance(node, ast.AnnAssign):
            self.annotation(node.annotation, ctx)
            if node.value is not None:
                self.expr(node.value, ctx)
            self.store(node.target, ctx)
            if isinstance(node.target, ast.Name):
                # The annotation decides: `x: int = engine.num_io_tensors` is no TRT object.
                self.bind(ctx.env, node.target.id, self.annotation_class(node.annotation))
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value, ctx)
            self.store(node.target, ctx)
            self.bind_target(ctx.env, node.target, None)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter, ctx)
            self.bind_target(ctx.env, node.target, None)
            self.stmts(node.body, ctx)
            self.stmts(node.orelse, ctx)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr, ctx)
                if item.optional_vars is not None:
                    typed = self.infer(item.context_expr, ctx)
                    self.bind_target(ctx.env, item.optional_vars, typed)
            self.stmts(node.body, ctx)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self.stmts(node.body, ctx)  # type: ignore[attr-defined]
            for handler in node.handlers:  # type: ignore[attr-defined]
                if handler.type is not None:
                    self.expr(handler.type, ctx)
                if handler.name:
                    ctx.env.pop(handler.name, None)
                self.stmts(handler.body, ctx)
            self.stmts(node.orelse, ctx)  # type: ignore[attr-defined]
            self.stmts(node.finalbody, ctx)  # type: ignore[attr-defined]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "tensorrt":
                for alias in node.names:
                    if alias.name != "*" and not self.api.has(alias.name):
                        self.report(node, f"trt has no member {alias.name}")
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.stmt(child, ctx)
                elif isinstance(child, ast.expr):
                    self.expr(child, ctx)
                elif isinstance(child, ast.match_case):
                    if child.guard is not None:
                        self.expr(child.guard, ctx)
                    self.stmts(child.body, ctx)

    def definition(self, node: _FuncDef, ctx: _Ctx) -> None:
        """What runs when a `def` executes: decorators, defaults, maybe annotations."""
        for dec in node.decorator_list:
            self.expr(dec, ctx)
        for default in [*node.args.defaults, *node.args.kw_defaults]:
            if default is not None:
                self.expr(default, ctx)
        if not self.m.future_annotations:
            for ann in self.annotations_of(node):
                self.annotation(ann, ctx)

    @staticmethod
    def annotations_of(node: _FuncDef) -> Iterator[ast.expr]:
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None and arg.annotation is not None:
                yield arg.annotation
        if node.returns is not None:
            yield node.returns

    def body(self, node: _FuncDef, ctx: _Ctx) -> None:
        """A function's body, run on the versions of ctx."""
        ctx = ctx.child(import_time=False)
        if self.m.future_annotations:  # never evaluated; still must name real classes
            for ann in self.annotations_of(node):
                self.annotation(ann, ctx)
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is None:
                continue
            typed = self.annotation_class(arg.annotation) if arg.annotation else None
            self.bind(ctx.env, arg.arg, typed)
        self.stmts(node.body, ctx)

    def class_statement(self, node: ast.ClassDef, ctx: _Ctx) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.expr(expr, ctx)
        self.overrides(node, ctx)
        body_ctx = ctx.child()
        for stmt in node.body:
            if isinstance(stmt, _FuncDef):
                self.definition(stmt, body_ctx)
                if not ctx.import_time:  # a class defined inside a function
                    self.body(stmt, ctx.child(owner=None))
            else:
                self.stmt(stmt, body_ctx)
        ctx.env.pop(node.name, None)

    def overrides(self, node: ast.ClassDef, ctx: _Ctx) -> None:
        bases = [b for b in (self.chain_class(base) for base in node.bases) if b is not None]
        if not bases:
            return
        for func in node.body:
            if not isinstance(func, _FuncDef) or func.name.startswith("_"):
                continue
            if any(self.api.member(base, func.name) for base in bases):
                continue
            # An override TensorRT calls in another version this code runs on is fine here.
            elsewhere = [v for v in ctx.scope if v != self.version]
            if any(
                api(v).is_class(base) and api(v).member(base, func.name)
                for v in elsewhere
                for base in bases
            ):
                continue
            names = " / ".join(f"trt.{b}" for b in bases)
            self.report(
                func,
                f"{names} has no member {func.name} to override "
                f"({node.name}.{func.name} would never be called)",
            )

    # -- expressions
    def expr(self, node: ast.expr, ctx: _Ctx) -> None:
        if isinstance(node, ast.Attribute):
            self.attribute(node, ctx)
        elif isinstance(node, ast.Call):
            self.call(node, ctx)
        elif isinstance(node, ast.Lambda):
            inner = ctx.child()
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    self.expr(default, ctx)
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                inner.env.pop(arg.arg, None)
            self.expr(node.body, inner)
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = ctx.child()
            for gen in node.generators:
                self.expr(gen.iter, inner)
                self.bind_target(inner.env, gen.target, None)
                for cond in gen.ifs:
                    self.expr(cond, inner)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            for part in parts:
                self.expr(part, inner)
        elif isinstance(node, ast.NamedExpr):
            self.expr(node.value, ctx)
            self.bind(ctx.env, node.target.id, self.infer(node.value, ctx))
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, ctx)

    def annotation(self, node: ast.expr, ctx: _Ctx) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                parsed = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return
            for sub in ast.walk(parsed):  # report at the annotation's line
                ast.copy_location(sub, node)
            self.expr(parsed, ctx)
        else:
            self.expr(node, ctx)

    def store(self, target: ast.expr, ctx: _Ctx) -> None:
        """Assignment targets: `config.progress_monitor = m` needs a writable property."""
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.store(elt, ctx)
        elif isinstance(target, ast.Starred):
            self.store(target.value, ctx)
        elif isinstance(target, ast.Subscript):
            self.expr(target.value, ctx)
            self.expr(target.slice, ctx)
        elif isinstance(target, ast.Attribute):
            if self.trt_chain(target) is not None:
                return  # monkeypatching the module is not a use of its API
            self.expr(target.value, ctx)
            owner = self.infer(target.value, ctx)
            if owner is None or target.attr.startswith("_"):
                return
            member = self.api.member(owner, target.attr)
            if member is None:
                self.report(
                    target, f"trt.{owner} has no member {target.attr} (set on {_src(target.value)})"
                )
            elif member.kind == "property" and not member.writable:
                self.report(target, f"trt.{owner}.{target.attr} is a read-only property")

    def attribute(self, node: ast.Attribute, ctx: _Ctx) -> None:
        chain = self.trt_chain(node)
        if chain is not None:
            self.resolve_chain(chain, node, report=True)
            return
        self.expr(node.value, ctx)
        owner = self.infer(node.value, ctx)
        if owner is None or node.attr.startswith("_"):
            return
        if self.api.member(owner, node.attr) is None:
            self.report(node, f"trt.{owner} has no member {node.attr} (on {_src(node.value)})")

    def call(self, node: ast.Call, ctx: _Ctx) -> None:
        self.expr(node.func, ctx)
        for arg in node.args:
            self.expr(arg, ctx)
        for kw in node.keywords:
            self.expr(kw.value, ctx)
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            kw.arg is None for kw in node.keywords
        ):
            return
        target = self.callee(node.func, ctx)
        if target is None:
            return
        label, overloads = target
        if not overloads:
            self.report(node, f"{label} cannot be constructed: the bindings define no __init__")
            return
        keywords = [kw.arg for kw in node.keywords if kw.arg is not None]
        if any(o.binds(len(node.args), keywords) for o in overloads):
            return
        known = {p.name for o in overloads for p in o.params}
        shown = " | ".join(_show(o) for o in overloads) or "none"
        unknown = [k for k in keywords if k not in known]
        if unknown:
            message = f"{label}() has no parameter {', '.join(unknown)}"
        else:
            kws = f" and keywords {', '.join(keywords)}" if keywords else ""
            message = f"{label}() accepts no call with {len(node.args)} positional argument(s){kws}"
        self.report(node, f"{message}; signatures: {shown}")

    def callee(self, func: ast.expr, ctx: _Ctx) -> tuple[str, list[Overload]] | None:
        """What a call calls, when it is a TensorRT callable: its label and overloads."""
        chain = self.trt_chain(func)
        if chain is not None:
            resolved = self.resolve_chain(chain, func, report=False)
            if resolved is None or any(part.startswith("_") for part in chain):
                return None
            kind, name, member = resolved
            label = "trt." + ".".join(chain)
            if kind == "class":
                if self.api.member(name, "__init__") is None:
                    return label, []
                return label, self.api.overloads(name)
            if member is not None and member.kind in ("function", "static"):
                return label, list(member.overloads)
            return None
        if isinstance(func, ast.Attribute) and not func.attr.startswith("_"):
            owner = self.infer(func.value, ctx)
            if owner is None:
                return None
            member = self.api.member(owner, func.attr)
            if member is not None and member.kind in _CALLABLE and member.overloads:
                return f"trt.{owner}.{func.attr}", list(member.overloads)
        return None

    # -- chains on the module
    def trt_chain(self, node: ast.expr) -> list[str] | None:
        """`trt.A.B` -> ["A", "B"] when the root is the tensorrt module."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.m.aliases and parts:
            return parts[::-1]
        return None

    def resolve_chain(
        self, chain: list[str], node: ast.AST, report: bool
    ) -> tuple[str, str, Member | None] | None:
        """Walk `trt.A.B.C`; returns (kind, class-or-type, member) of the last link, or None
        when a link is missing (reported) or cannot be followed."""
        owner: str | None = ""  # "" is the module itself
        kind, typed, member = "module", "", None
        for i, part in enumerate(chain):
            if part.startswith("_"):
                return None
            if owner is None:
                return None  # a method, property or untyped value: no further knowledge
            member = self.api.member(owner, part)
            if member is None:
                if report:
                    where = "trt" + "".join("." + p for p in chain[:i])
                    self.report(node, f"{where} has no member {part}")
                return None
            kind = member.kind
            if kind == "class":
                typed = member.type or ""
                owner = typed
            elif kind == "module":
                typed = part if owner == "" else f"{owner}.{part}"
                owner = typed
            elif kind in ("enum", "constant") and member.type:
                typed = member.type
                owner = typed
            else:
                typed, owner = "", None
        return kind, typed, member

    def chain_class(self, node: ast.expr) -> str | None:
        chain = self.trt_chain(node)
        if chain is None:
            return None
        resolved = self.resolve_chain(chain, node, report=False)
        if resolved is not None and resolved[0] == "class":
            return resolved[1]
        return None

    # -- types
    def annotation_class(self, node: ast.expr | None) -> str | None:
        """The TensorRT class an annotation names: `trt.X`, `trt.X | None`, `Optional[trt.X]`,
        and the same as strings."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                return self.annotation_class(ast.parse(node.value, mode="eval").body)
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            sides = [node.left, node.right]
            others = [s for s in sides if not (isinstance(s, ast.Constant) and s.value is None)]
            return self.annotation_class(others[0]) if len(others) == 1 else None
        if isinstance(node, ast.Subscript):
            head = node.value
            name = head.attr if isinstance(head, ast.Attribute) else getattr(head, "id", "")
            if name == "Optional":
                return self.annotation_class(node.slice)
            return None
        return self.chain_class(node)

    def infer(self, node: ast.expr, ctx: _Ctx) -> str | None:
        """The TensorRT class of an expression's value, when the convention makes it known."""
        if isinstance(node, ast.Name):
            return ctx.env.get(node.id)
        if isinstance(node, ast.Attribute):
            chain = self.trt_chain(node)
            if chain is not None:
                resolved = self.resolve_chain(chain, node, report=False)
                if resolved and resolved[0] in ("enum", "constant") and resolved[1]:
                    return resolved[1]
                return None
            if _is_self(node.value) and ctx.owner is not None:
                return self.self_types(ctx.owner).get(node.attr)
            owner = self.infer(node.value, ctx)
            member = self.api.member(owner, node.attr) if owner else None
            if member is not None and member.kind in ("property", "enum", "constant"):
                return member.type
            return None
        if isinstance(node, ast.Call):
            func = node.func
            class_name = self.chain_class(func)
            if class_name is not None:
                return class_name
            chain = self.trt_chain(func)
            if chain is not None:
                resolved = self.resolve_chain(chain, func, report=False)
                if resolved and resolved[2] is not None:
                    return _unique_return(resolved[2])
                return None
            if isinstance(func, ast.Attribute):
                if _is_self(func.value) and ctx.owner is not None:
                    method = self.m.effective_methods(ctx.owner).get(func.attr)
                    return self.annotation_class(method.returns) if method else None
                owner = self.infer(func.value, ctx)
                member = self.api.member(owner, func.attr) if owner else None
                if member is not None and member.kind in _CALLABLE:
                    return _unique_return(member)
        return None

    def self_types(self, owner: str) -> dict[str, str]:
        """`self.<attr>` annotated with a TensorRT class anywhere in the class or its
        module-level bases (an attribute annotated two ways is left untyped)."""
        if owner in self._self_types:
            return self._self_types[owner]
        seen: dict[str, str | None] = {}
        for cls in self.m.mro(owner):
            for node in self.m.classes[cls].body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    _merge(seen, node.target.id, self.annotation_class(node.annotation))
                if isinstance(node, _FuncDef):
                    for sub in ast.walk(node):
                        if (
                            isinstance(sub, ast.AnnAssign)
                            and isinstance(sub.target, ast.Attribute)
                            and _is_self(sub.target.value)
                        ):
                            typed = self.annotation_class(sub.annotation)
                            _merge(seen, sub.target.attr, typed)
        result = {k: v for k, v in seen.items() if v is not None}
        self._self_types[owner] = result
        return result

    @staticmethod
    def bind(env: dict[str, str], name: str, typed: str | None) -> None:
        if typed is None:
            env.pop(name, None)
        else:
            env[name] = typed

    def bind_target(self, env: dict[str, str], target: ast.expr, typed: str | None) -> None:
        if isinstance(target, ast.Name):
            self.bind(env, target.id, typed)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind_target(env, elt, None)
        elif isinstance(target, ast.Starred):
            self.bind_target(env, target.value, None)


def _merge(seen: dict[str, str | None], name: str, typed: str | None) -> None:
    if name in seen and seen[name] != typed:
        seen[name] = None
    else:
        seen[name] = typed


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _unique_return(member: Member) -> str | None:
    returns = [o.returns for o in member.overloads]
    if returns and all(r is not None and r == returns[0] for r in returns):
        return returns[0]
    return None


def _show(overload: Overload) -> str:
    params = []
    for p in overload.params:
        prefix = {"var_positional": "*", "var_keyword": "**"}.get(p.kind, "")
        params.append(prefix + p.name + ("=…" if p.has_default else ""))
    return f"({', '.join(params)})"


def _src(node: ast.expr) -> str:
    text = ast.unparse(node)
    return f"`{text if len(text) <= 40 else text[:37] + '...'}`"
