"""No payload is ever unpickled or evaluated: a static check over the package's source, and the
hostile ``.npy`` that would run code if it were unpickled."""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from edgert.codec import PayloadError, decode_npy
from edgert.protocol import ErrorCode, ProtocolError, parse_npy
from tests.fuzz.models import REPO
from tests.fuzz.payloads import npy_header

PACKAGE = REPO / "edgert"
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
LOADERS = {"load", "read_array"}  # numpy's loaders, which unpickle unless told not to


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _problems(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            bad = {n.split(".")[0] for n in names} & FORBIDDEN_MODULES
            if bad:
                found.append(f"{where}: imports {', '.join(sorted(bad))}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
            found.append(f"{where}: calls {func.id}()")
        if isinstance(func, ast.Attribute) and func.attr in LOADERS:
            owner = ast.unparse(func.value)
            if owner in ("np", "numpy", "npy_format", "numpy.lib.format", "np.lib.format"):
                keywords = {k.arg: k.value for k in node.keywords}
                value = keywords.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{where}: {owner}.{func.attr}() without allow_pickle=False")
    return found


def test_the_package_never_unpickles_or_evaluates() -> None:
    assert len(_sources()) > 20
    problems = [p for path in _sources() for p in _problems(path)]
    assert not problems, "\n".join(problems)


def test_the_static_check_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nnp.load(f)\nnp.load(f, allow_pickle=True)\n"
        "eval('1')\nnp.load(f, allow_pickle=False)\n"
    )
    problems = _problems(bad, tmp_path)
    assert len(problems) == 4, problems


ran = []


class _Payload:
    """What an attacker pickles: unpickling it calls ``ran.append``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return ran.append, ("unpickled",)


def _object_npy() -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([_Payload()], dtype=object), allow_pickle=True)
    return out.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        _object_npy(),
        npy_header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }")
        + pickle.dumps([_Payload()]),
        npy_header("{'descr': [('a', '|O')], 'fortran_order': False, 'shape': (1,), }")
        + pickle.dumps([_Payload()]),
    ],
    ids=["np.save", "hand-made", "structured"],
)
def test_an_object_npy_is_refused_unread(payload: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        decode_npy(payload)
    assert info.value.code == "bad_input"
    with pytest.raises(ProtocolError) as refused:
        parse_npy(payload)
    assert refused.value.code is ErrorCode.BAD_INPUT
    assert not ran, "the payload was unpickled"
