"""The progress file a build leaves beside its artifacts while it runs (`edgert list` reads it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgert.buildprogress import ProgressFile, builds_in_progress


def test_a_build_is_shown_while_it_runs_and_gone_after(tmp_path: Path) -> None:
    build = tmp_path / "build"
    seen: list[tuple[str, float]] = []
    with ProgressFile(build, "tensorrt", interval=0) as shown:
        relay = shown.relay(lambda stage, fraction: seen.append((stage, fraction)))
        relay("parsing the ONNX", 0.02)
        (running,) = builds_in_progress(build)
        assert (running.backend, running.stage, running.fraction) == (
            "tensorrt",
            "parsing the ONNX",
            0.02,
        )
        relay("Building engine", 0.42)
        assert [b.fraction for b in builds_in_progress(build)] == [0.42]
    assert seen == [("parsing the ONNX", 0.02), ("Building engine", 0.42)]
    assert builds_in_progress(build) == [] and list(build.iterdir()) == []


def test_a_failed_build_leaves_no_progress_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ProgressFile(tmp_path, "onnxruntime") as shown:
        shown.update("optimizing", 0.3)
        raise RuntimeError("build failed")
    assert list(tmp_path.iterdir()) == []


def test_writes_are_spaced_but_the_end_is_always_written(tmp_path: Path) -> None:
    with ProgressFile(tmp_path, "tensorrt", interval=60) as shown:
        shown.update("a", 0.1)
        shown.update("b", 0.2)  # within the interval: not written
        assert builds_in_progress(tmp_path)[0].stage == "a"
        shown.update("done", 1.0)
        assert builds_in_progress(tmp_path)[0].stage == "done"


def test_a_killed_builds_file_and_foreign_files_are_not_shown(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    state = {"backend": "tensorrt", "stage": "x", "fraction": 0.5, "started": 0.0}
    (tmp_path / ".progress-tensorrt.json").write_text(
        json.dumps({**state, "pid": int(dead.stdout)})
    )
    (tmp_path / ".progress-onnxruntime.json").write_text("{not json")
    (tmp_path / ".progress-other.json").write_text(json.dumps({"backend": "x"}))
    assert builds_in_progress(tmp_path) == []
    assert builds_in_progress(tmp_path / "missing") == []
