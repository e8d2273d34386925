"""Processes the bench starts and what it reads of them from /proc (no psutil needed)."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "Broker",
    "Server",
    "cpu_seconds",
    "free_port",
    "peak_rss_mib",
    "reset_peak_rss",
    "rss_mib",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads (not its children)."""
    with open(f"/proc/{pid}/stat") as fh:
        # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_mib(pid: int) -> float:
    """Resident memory now (VmRSS), MiB."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) since start or the last :func:`reset_peak_rss`, MiB."""
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux's clear_refs 5); False where that is not allowed,
    and the peak then counts from the process's start."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:g} s")


class Server:
    """A subprocess with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, command: Sequence[str], log: Path) -> None:
        self.name = name
        self.command = list(command)
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {code}; the end of {self.log}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class Broker(Server):
    """mosquitto on a free loopback port, with a config of its own (no persistence).
    ``nodelay``: the broker's sockets turn Nagle's algorithm off (``set_tcp_nodelay``); else
    they are mosquitto's defaults, as on a device."""

    def __init__(self, directory: Path, nodelay: bool = True) -> None:
        self.port = free_port()
        config = directory / "mosquitto.conf"
        # As root, mosquitto would otherwise drop to the `mosquitto` user.
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"user {getpass.getuser()}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if nodelay:
            # Nagle's algorithm on the broker's sockets would add 40 ms delayed-ACK stalls to
            # every server alike; the servers' own sockets are left as they set them.
            lines.append("set_tcp_nodelay true")
        config.write_text("\n".join(lines) + "\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        super().__init__("mosquitto", [binary, "-c", str(config)], directory / "mosquitto.log")
        try:
            _wait_for_port(self.port, 10.0)
        except RuntimeError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def version(self) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [self.command[0], "-h"], capture_output=True, text=True, timeout=5
            ).stdout
            return out.splitlines()[0].removeprefix("mosquitto version ").strip()
        return "unknown"
