"""The `edgert` command as a user runs it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.broker import Mosquitto
from tests.test_client import FakeNode, entry, reply_with

EDGERT = [sys.executable, "-m", "edgert"]


def edgert(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*EDGERT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [[], ["compile"], ["inspect"], ["list"], ["run"]])
def test_help_explains_each_command(command: list[str]) -> None:
    result = edgert(*command, "--help")
    assert result.returncode == 0
    assert "Usage: " in result.stdout
    assert len(result.stdout) > 300


def test_compile_then_run_prints_and_writes_outputs(
    corpus: Callable[[str], Path], tmp_path: Path
) -> None:
    source = corpus("dim_symbol")
    compiled = edgert("compile", source.parent)
    assert compiled.returncode == 0, compiled.stderr
    assert "parity    passed" in compiled.stdout
    assert "key       onnxruntime-fp32-" in compiled.stdout

    again = edgert("compile", source.parent)
    assert "up to date" in again.stdout

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (tmp_path / "x.json").write_text(json.dumps({"x": x.tolist()}))
    out = tmp_path / "y.npy"
    ran = edgert("run", source.parent, "--input", tmp_path / "x.json", "--output", out)
    assert ran.returncode == 0, ran.stderr
    want = ort.InferenceSession(str(source)).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6)

    as_json = edgert("run", source.parent, "--input", tmp_path / "x.json", "--json")
    assert as_json.returncode == 0, as_json.stderr
    np.testing.assert_allclose(json.loads(as_json.stdout)["y"], want, rtol=1e-5, atol=1e-6)


def test_run_by_name_in_a_repository_and_npy_input(
    corpus: Callable[[str], Path], tmp_path: Path
) -> None:
    source = corpus("fixed_mlp")
    assert edgert("compile", "fixed_mlp", "--repository", source.parent.parent).returncode == 0
    x = np.ones((1, 4), np.float64)  # float64 from numpy: converted to the model's float32
    np.save(tmp_path / "x.npy", x)
    ran = edgert("run", "fixed_mlp", "-r", source.parent.parent, "-i", tmp_path / "x.npy", "--json")
    assert ran.returncode == 0, ran.stderr
    want = ort.InferenceSession(str(source)).run(None, {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(json.loads(ran.stdout)["y"], want, rtol=1e-5)


def test_inspect_shows_io_dims_ops_and_artifacts(corpus: Callable[[str], Path]) -> None:
    source = corpus("dim_question")
    bare = edgert("inspect", source)
    assert bare.returncode == 0, bare.stderr
    assert "[x.0, 4]" in bare.stdout
    assert "no bounds" in bare.stdout  # a bare file: model.toml's bounds are not read
    assert "Gemm×2" in bare.stdout

    edgert("compile", source.parent)
    as_dir = edgert("inspect", source.parent)
    assert "min 1 opt 4 max 32" in as_dir.stdout
    assert "artifact onnxruntime-fp32-" in as_dir.stdout


def test_list_shows_models_artifacts_and_backends(corpus: Callable[[str], Path]) -> None:
    a = corpus("fixed_mlp")
    corpus("dim_symbol")
    edgert("compile", a.parent)
    listed = edgert("list", "--repository", a.parent.parent)
    assert listed.returncode == 0, listed.stderr
    assert "not compiled" in listed.stdout  # dim_symbol
    assert "onnxruntime-fp32-" in listed.stdout
    assert "backend onnxruntime: available" in listed.stdout


def test_bad_inputs_give_one_line_and_exit_1(corpus: Callable[[str], Path], tmp_path: Path) -> None:
    source = corpus("dim_symbol")
    truncated = tmp_path / "bad" / "model.onnx"
    truncated.parent.mkdir()
    truncated.write_bytes(source.read_bytes()[:100])
    assert "truncated or not ONNX" in one_line_error(edgert("compile", truncated.parent))
    assert not (truncated.parent / "build").exists() or not any(
        (truncated.parent / "build").iterdir()
    )

    (source.parent / "model.toml").unlink()
    line = one_line_error(edgert("compile", source.parent))
    assert "axis 0 ('batch') is dynamic and has no bounds" in line

    missing = edgert("run", "nope", "-i", "x.json", "-r", tmp_path)
    assert "no model 'nope'" in one_line_error(missing)
    assert "no such ONNX file" in one_line_error(edgert("inspect", tmp_path / "missing.onnx"))


def test_run_input_errors_are_one_line(corpus: Callable[[str], Path], tmp_path: Path) -> None:
    source = corpus("dim_symbol")
    edgert("compile", source.parent)
    cases = {
        "wrong.json": (json.dumps({"x": [[1, 2, 3]]}), "axis 1 must be 4"),
        "name.json": (json.dumps({"q": [[1, 2, 3, 4]]}), "unknown input(s) q"),
        "big.json": (json.dumps({"x": [[0, 0, 0, 0]] * 33}), "is 33, allowed 1..32"),
        "text.json": ("not json", "cannot read"),
        "strings.json": (json.dumps({"x": [["a", "b", "c", "d"]]}), "the model expects float32"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        line = one_line_error(edgert("run", source.parent, "--input", tmp_path / name))
        assert expected in line, (name, line)


def test_uncompiled_run_names_the_compile_command(corpus: Callable[[str], Path]) -> None:
    source = corpus("fixed_mlp")
    line = one_line_error(edgert("run", source.parent, "--input", "x.json"))
    assert f"run: edgert compile {source.parent}" in line


# -- edgert infer: a fake daemon (tests/test_client.py) on a real mosquitto --------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path).start()
    yield server
    server.kill()


def _wait_for_client(broker: Mosquitto, timeout: float = 60) -> None:
    """Until mosquitto logs an edgert client's connection (it logs each with its client id)."""
    end = time.monotonic() + timeout
    while "as edgert-client-" not in broker.log.read_text(errors="replace"):
        assert time.monotonic() < end, "edgert infer never connected"
        time.sleep(0.05)


def _infer(broker: Mosquitto, tmp_path: Path, *args: str) -> list[str]:
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    return [
        *map(str, EDGERT),
        "infer",
        "occupancy",
        "-i",
        str(tmp_path / "x.npy"),
        "--broker",
        broker.url,
        "--timeout",
        "5",
        *args,
    ]


def test_infer_waits_until_a_node_lists_the_model_ready(broker: Mosquitto, tmp_path: Path) -> None:
    node = FakeNode(broker)
    ready = threading.Event()

    def answer(request: Mapping[str, Any]) -> Mapping[str, Any]:
        if not ready.is_set():  # as the daemon's error once it stops holding a request
            return {"id": request["id"], "ok": False, "error": {"code": "loading", "message": ""}}
        return reply_with({"probs": [[0.25, 0.75]]})(request)

    node.answer = answer
    try:
        node.catalogue(entry(state="loading"))
        process = subprocess.Popen(
            _infer(broker, tmp_path, "--wait", "30"),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _wait_for_client(broker)
        time.sleep(0.5)  # connected and waiting: a request now would be answered `loading`
        ready.set()
        ready_at = node.catalogue(entry())
        stdout, stderr = process.communicate(timeout=60)
    finally:
        node.close()
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["outputs"] == {"probs": [[0.25, 0.75]]}
    assert node.requests and all(at >= ready_at - 0.05 for at, _ in node.requests)


def test_infer_gives_up_waiting_in_one_line(broker: Mosquitto, tmp_path: Path) -> None:
    node = FakeNode(broker, answer=reply_with({"probs": [[0.25, 0.75]]}))
    try:
        result = subprocess.run(
            _infer(broker, tmp_path, "--wait", "0.5"), capture_output=True, text=True, timeout=60
        )
    finally:
        node.close()
    assert one_line_error(result) == (
        "error: model 'occupancy' is not ready after 0.5 s: no catalogue seen: is edgert serve "
        "running on this broker?"
    )
    assert not node.requests


def test_infer_wait_0_sends_at_once(broker: Mosquitto, tmp_path: Path) -> None:
    node = FakeNode(broker, answer=reply_with({"probs": [[0.25, 0.75]]}))
    try:
        result = subprocess.run(
            _infer(broker, tmp_path, "--wait", "0"), capture_output=True, text=True, timeout=60
        )
    finally:
        node.close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs"] == {"probs": [[0.25, 0.75]]}
