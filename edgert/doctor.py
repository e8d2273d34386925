"""``edgert doctor``: what a user needs to know about this machine before filing a bug.

Each check is a :class:`Finding`; ``ok`` is True (fine), False (a problem, with a hint) or None
(information). Checks never raise: a failing probe is itself a finding.
"""

from __future__ import annotations

import importlib
import platform
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgert import __version__
from edgert.settings import BrokerConfig

__all__ = ["Finding", "jetpack_release", "run_checks"]

# L4T (Linux for Tegra) release → JetPack, for the releases edgert supports or refuses.
_JETPACK = {"36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2", "35": "5.x"}


@dataclass(frozen=True)
class Finding:
    section: str
    item: str
    value: str
    ok: bool | None = None
    hint: str = ""


def jetpack_release(text: str) -> tuple[str, str] | None:
    """(L4T release, JetPack) from /etc/nv_tegra_release's first line, e.g. "# R36 (release),
    REVISION: 4.0"; None if it is not one."""
    match = re.search(r"R(\d+) \(release\), REVISION: (\d+)\.(\d+)", text)
    if match is None:
        return None
    l4t = f"{match[1]}.{match[2]}.{match[3]}"
    jetpack = _JETPACK.get(f"{match[1]}.{match[2]}") or _JETPACK.get(match[1], "unknown")
    return l4t, jetpack


def _python() -> Iterator[Finding]:
    yield Finding("edgert", "edgert", __version__)
    ok = sys.version_info >= (3, 10)
    yield Finding(
        "edgert",
        "python",
        f"{platform.python_version()} ({sys.executable})",
        ok,
        "" if ok else "edgert needs Python 3.10 or later (JetPack 5 ships 3.8: not supported)",
    )
    yield Finding("edgert", "platform", f"{platform.system()} {platform.machine()}")


def _jetson() -> Iterator[Finding]:
    release = Path("/etc/nv_tegra_release")
    if not release.is_file():
        return
    found = jetpack_release(release.read_text(errors="replace"))
    if found is None:
        yield Finding("jetson", "L4T", "unreadable /etc/nv_tegra_release", False)
        return
    l4t, jetpack = found
    supported = l4t.startswith("36.")
    yield Finding(
        "jetson",
        "JetPack",
        f"{jetpack} (L4T {l4t})",
        supported,
        "" if supported else "JetPack 6.0 or later is needed (TensorRT 8.6.2+, Python 3.10)",
    )
    model = Path("/proc/device-tree/model")
    if model.is_file():
        yield Finding("jetson", "board", model.read_text(errors="replace").strip("\x00 \n"))


def _cuda() -> Iterator[Finding]:
    try:
        from edgert.backends import cuda
    except Exception as exc:  # the probe itself must not fail the report
        yield Finding("cuda", "cuda-python", f"not importable: {exc}", False)
        return
    binding = _package_version("cuda.bindings") or _package_version("cuda")
    driver, runtime = cuda.driver_version(), cuda.runtime_version()
    yield Finding(
        "cuda",
        "cuda-python",
        binding or "not installed",
        hint="" if binding else "for TensorRT: pip install 'edgert[tensorrt]'",
    )
    yield Finding(
        "cuda",
        "driver CUDA",
        driver or "no NVIDIA driver (models run on ONNX Runtime's CPU provider)",
    )
    yield Finding("cuda", "runtime CUDA", runtime or "unknown")
    if driver and binding:
        same = driver.split(".")[0] == binding.split(".")[0]
        yield Finding(
            "cuda",
            "cuda-python vs driver",
            f"{binding.split('.')[0]} vs {driver.split('.')[0]}",
            same,
            "" if same else f"install cuda-python {driver.split('.')[0]}.x to match the driver",
        )
    count = cuda.device_count()
    yield Finding("cuda", "GPUs", str(count), count > 0 or None)
    for index in range(count):
        try:
            with cuda.Cuda(index) as gpu:
                info = gpu.info
                free, total = gpu.mem_info()
        except Exception as exc:
            yield Finding("cuda", f"GPU {index}", f"cannot open: {exc}", False)
            continue
        kind = "integrated (Jetson)" if info.integrated else "discrete"
        yield Finding(
            "cuda",
            f"GPU {index}",
            f"{info.name}, {info.sm}, {kind}, {free >> 20} MiB free of {total >> 20} MiB",
        )


def _tensorrt() -> Iterator[Finding]:
    try:
        from edgert.backends import trt_compat
    except Exception as exc:
        yield Finding("tensorrt", "tensorrt", f"not importable: {exc}", None)
        return
    yield Finding("tensorrt", "tensorrt", trt_compat.VERSION, True)
    try:
        yield Finding("tensorrt", "DLA cores", str(trt_compat.dla_cores()))
    except Exception as exc:
        yield Finding("tensorrt", "DLA cores", f"cannot ask: {exc}", False)


def _onnxruntime() -> Iterator[Finding]:
    try:
        import onnxruntime as ort
    except Exception as exc:
        yield Finding("onnxruntime", "onnxruntime", f"not importable: {exc}", False)
        return
    yield Finding("onnxruntime", "onnxruntime", str(ort.__version__), True)
    yield Finding("onnxruntime", "providers", ", ".join(ort.get_available_providers()))


def _backends() -> Iterator[Finding]:
    from edgert.backends import status

    for entry in status():
        yield Finding(
            "backends",
            entry.name,
            "available" if entry.available else f"unavailable: {entry.reason}",
            True if entry.available else None,
        )


def _broker(broker: BrokerConfig) -> Iterator[Finding]:
    where = f"{broker.host}:{broker.port}"
    try:
        with socket.create_connection((broker.host, broker.port), timeout=3):
            yield Finding("broker", where, "reachable (TCP)", True)
    except OSError as exc:
        yield Finding("broker", where, f"unreachable: {exc}", False, "is mosquitto running?")


def _package_version(module: str) -> str | None:
    try:
        found = importlib.import_module(module)
    except Exception:
        return None
    version = getattr(found, "__version__", None)
    return str(version) if version else None


def run_checks(broker: BrokerConfig | None = None) -> list[Finding]:
    """Every finding, in report order; a probe that breaks becomes a failed finding."""
    probes: list[Callable[[], Iterator[Finding]]] = [
        _python,
        _jetson,
        _cuda,
        _tensorrt,
        _onnxruntime,
        _backends,
    ]
    if broker is not None:
        probes.append(lambda: _broker(broker))
    findings: list[Finding] = []
    for probe in probes:
        try:
            findings.extend(probe())
        except Exception as exc:
            findings.append(Finding(probe.__name__.strip("_"), "probe", f"failed: {exc}", False))
    return findings
