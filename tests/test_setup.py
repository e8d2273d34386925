"""scripts/setup's two paths: the demo's light install (the runtime and the images extra) and the
tests' full one, and the stamp that lets a later scripts/test add what a light venv lacks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup"
HEAVY = ("torch", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "paho-mqtt", "pytest")


def setup(venv: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP), *args],
        env={**os.environ, "VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def planned_extras(venv: Path, *args: str) -> set[str] | None:
    """The extras ``scripts/setup --plan`` would pip install into ``venv``; None for none."""
    result = setup(venv, "--plan", *args)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^pip: -e \.\[([a-z,]*)\]$", result.stdout, re.MULTILINE)
    return None if match is None else set(match.group(1).split(","))


def stamped(venv: Path, extras: str) -> None:
    """A venv whose stamp says ``extras`` are installed, newer than pyproject.toml."""
    venv.mkdir()
    stamp = venv / ".edgert-installed"
    stamp.write_text(extras + "\n")
    newer = (REPO / "pyproject.toml").stat().st_mtime + 10
    os.utime(stamp, (newer, newer))


def test_the_demo_path_installs_the_runtime_and_images_only(tmp_path: Path) -> None:
    assert planned_extras(tmp_path / "venv", "--demo") == {"images"}


def test_the_test_path_installs_the_frameworks(tmp_path: Path) -> None:
    assert planned_extras(tmp_path / "venv") == {"dev", "images", "cameras", "frameworks"}


def test_the_tests_after_the_demo_add_their_extras_to_a_light_venv(tmp_path: Path) -> None:
    stamped(tmp_path / "venv", "images")
    assert planned_extras(tmp_path / "venv", "--demo") is None
    assert planned_extras(tmp_path / "venv") == {"dev", "images", "cameras", "frameworks"}


def test_the_demo_after_the_tests_reinstalls_nothing(tmp_path: Path) -> None:
    stamped(tmp_path / "venv", "cameras,dev,frameworks,images")
    assert planned_extras(tmp_path / "venv", "--demo") is None
    assert planned_extras(tmp_path / "venv") is None


def test_an_unknown_argument_is_refused(tmp_path: Path) -> None:
    result = setup(tmp_path / "venv", "--light")
    assert result.returncode == 2
    assert result.stderr.strip() == "setup: unknown argument --light (use --demo, --plan)"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_light_venv_has_no_frameworks_and_says_its_size(tmp_path: Path) -> None:
    """The demo's install, for real, into a throwaway venv (the models are already fetched)."""
    venv = tmp_path / "venv"
    result = setup(venv, "--demo", timeout=220)
    assert result.returncode == 0, result.stdout + result.stderr
    said = re.search(r"holds edgert\[images\], (\d+) MB; setup took (\d+) s", result.stdout)
    assert said is not None, result.stdout
    assert int(said.group(1)) <= 400
    # --local: the venv's own packages, not the system's it can also see.
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--local", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert "onnxruntime" in names and "pillow" in names
    assert names.isdisjoint(HEAVY), sorted(names & set(HEAVY))
    assert (venv / ".edgert-installed").read_text().strip() == "images"
    where = [str(venv / "bin" / "python"), "-c", "import edgert; print(edgert.__file__)"]
    alone = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's own edgert
    found = subprocess.run(where, capture_output=True, text=True, check=True, env=alone)
    assert found.stdout.startswith(str(REPO))
