"""A Jetson's GPU load, memory and temperatures, read from NVIDIA's ``tegrastats``.

``tegrastats --interval <ms>`` prints one line per interval in the format its documentation
describes (L4T Developer Guide, "tegrastats Utility"): ``RAM <used>/<total>MB (lfb ...)``,
``GR3D_FREQ <load>%`` (the integrated GPU, with ``@<MHz>`` or ``@[<MHz>,...]`` on some
releases), and temperatures as ``<sensor>@<degrees>C``. Fields vary by module and release, so
each is read on its own and a missing one is left out, not guessed. A sensor that is powered
down reads ``-256C``: it is left out too. The binary exists only on a Jetson; elsewhere nothing
is spawned.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

__all__ = ["TegraSample", "Tegrastats", "parse_line"]

log = logging.getLogger("edgert.daemon")

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB\b")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEMPERATURE = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_OFFLINE = -256.0  # what tegrastats prints for a sensor that is powered down


@dataclass(frozen=True)
class TegraSample:
    """One tegrastats line: RAM in bytes, the GPU's load (0 to 1), temperatures by sensor
    (lower case, as the newer releases write them)."""

    ram_used: int | None = None
    ram_total: int | None = None
    gpu_load: float | None = None
    temperatures: dict[str, float] = field(default_factory=dict)


def parse_line(line: str) -> TegraSample:
    """What ``line`` says; fields it lacks are None (or absent, for temperatures)."""
    ram = _RAM.search(line)
    gr3d = _GR3D.search(line)
    temperatures = {
        name.lower(): float(value)
        for name, value in _TEMPERATURE.findall(line)
        if float(value) > _OFFLINE
    }
    return TegraSample(
        ram_used=int(ram.group(1)) << 20 if ram else None,
        ram_total=int(ram.group(2)) << 20 if ram else None,
        gpu_load=int(gr3d.group(1)) / 100 if gr3d else None,
        temperatures=temperatures,
    )


class Tegrastats:
    """``tegrastats`` running beside the daemon; :attr:`latest` is its last line, parsed."""

    def __init__(self, interval_ms: int = 1000, binary: str = "tegrastats") -> None:
        self.interval_ms = interval_ms
        self.binary = binary
        self.latest: TegraSample | None = None
        self._child: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Spawn it where the binary exists (a Jetson); False elsewhere."""
        path = shutil.which(self.binary)
        if path is None:
            return False
        try:
            self._child = subprocess.Popen(
                [path, "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError as exc:
            log.warning("tegrastats: cannot run %s: %s; no Jetson metrics", path, exc)
            return False
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return True

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _read(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        for line in self._child.stdout:
            self.latest = parse_line(line)  # one reference replaced: readers need no lock

    def stop(self) -> None:
        child = self._child
        if child is None:
            return
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        with contextlib.suppress(OSError, ValueError):
            if child.stdout is not None:
                child.stdout.close()
