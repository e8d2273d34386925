"""edgert doctor: the facts it reads, and the command's report and exit code."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from edgert.doctor import jetpack_release, run_checks
from tests.broker import free_port
from tests.test_cli import edgert


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic", ("36.4.3", "6.1/6.2")),
        ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic", ("36.3.0", "6.0")),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref", ("35.4.1", "5.x")),
        ("not a tegra release file", None),
    ],
)
def test_jetpack_from_l4t_release(line: str, expected: tuple[str, str] | None) -> None:
    assert jetpack_release(line) == expected


def test_findings_name_onnxruntime_and_why_tensorrt_is_missing() -> None:
    findings = {(f.section, f.item): f for f in run_checks()}
    assert findings[("onnxruntime", "onnxruntime")].value == ort.__version__
    tensorrt = findings[("backends", "tensorrt")]
    assert tensorrt.ok is None and tensorrt.value.startswith("unavailable: ")
    assert findings[("backends", "onnxruntime")].ok is True


def test_doctor_command_reports_and_flags_an_unreachable_broker() -> None:
    fine = edgert("doctor")
    assert fine.returncode == 0, fine.stderr
    assert f"onnxruntime: onnxruntime │ {ort.__version__}" in fine.stdout
    closed = edgert("doctor", "--broker", f"mqtt://127.0.0.1:{free_port()}")
    assert closed.returncode == 1
    assert "unreachable" in closed.stdout and "1 problem(s) found" in closed.stderr
