"""A real mosquitto on a free loopback port, with a config of the test's own.

Optional: a TLS listener (``tls``), users in a password file made with ``mosquitto_passwd``
(``users``; anonymous clients are then refused), ``persistence`` (its state saved in its directory
every that many seconds and on ``save()``, and loaded again on restart), and ``extra`` config
lines (limits).
"""

from __future__ import annotations

import getpass
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = ["Mosquitto", "MosquittoSub", "TlsFiles", "free_port", "wait_for_port"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate and the server certificate and key it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path


class Mosquitto:
    """Start, kill and restart one broker; ``extra`` lines go into its config."""

    def __init__(
        self,
        directory: Path,
        extra: str = "",
        *,
        tls: TlsFiles | None = None,
        users: Mapping[str, str] | None = None,
        persistence: int | None = None,
    ) -> None:
        self.port = free_port()
        self.directory = directory
        self.tls = tls
        self.users = dict(users or {})
        self.config = directory / "mosquitto.conf"
        self.password_file = directory / "mosquitto.passwd"
        # Run as whoever runs the tests: mosquitto started as root otherwise drops to the
        # `mosquitto` user, which cannot read certificates or password files in tmp_path.
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}"]
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        if self.users:
            for i, (name, password) in enumerate(self.users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", *create, str(self.password_file), name, password],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines += ["allow_anonymous true"]
        if persistence is None:
            lines += ["persistence false"]
        else:  # saved only every `persistence` seconds: a kill -9 loses what came since
            lines += [
                "persistence true",
                f"persistence_location {directory}/",
                f"autosave_interval {persistence}",
            ]
        # set_tcp_nodelay: without it each reply waits ~40 ms for a delayed ACK (Nagle).
        lines += ["log_dest stderr", "set_tcp_nodelay true", extra]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker's URL, without credentials."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "mosquitto.log"

    def use_config(self, text: str, port: int) -> Mosquitto:
        """Run from ``text``, a whole config of the caller's, instead of the one built here;
        ``port`` is its listener that :attr:`url` and :meth:`client` use. ``tls`` and ``users``
        still say what clients use (the password file is still made, at ``password_file``)."""
        self.port = port
        self.config.write_text(text)
        return self

    def client(
        self,
        protocol: MQTTProtocolVersion = paho.MQTTv5,
        *,
        user: str | None = None,
        client_id: str = "",
    ) -> paho.Client:
        """A paho client set up for this broker (TLS, the credentials of ``user``, by default
        the first user's); the caller connects it to ``127.0.0.1:port``."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if self.tls is not None:
            client.tls_set(ca_certs=str(self.tls.ca), cert_reqs=ssl.CERT_REQUIRED)
        if self.users:
            name = user if user is not None else next(iter(self.users))
            client.username_pw_set(name, self.users[name])
        return client

    def start(self) -> Mosquitto:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log
            )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM): with persistence on, mosquitto saves its database."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def save(self, timeout: float = 10.0) -> None:
        """Have it write its persistence database now (SIGUSR1), as an autosave would."""
        database = self.directory / "mosquitto.db"
        before = database.stat().st_mtime_ns if database.exists() else None
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)
        end = time.monotonic() + timeout
        while not database.exists() or database.stat().st_mtime_ns == before:
            if time.monotonic() > end:
                raise TimeoutError(f"mosquitto wrote no {database} within {timeout} s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


class MosquittoSub:
    """``mosquitto_sub`` as a shell runs it (``command``, its arguments included), returned once
    the broker's SUBACK is in. It says nothing when subscribed except with ``-d``, so it is run
    with ``-d`` and line-buffered (``stdbuf``), and the lines about its own packets are read for
    the SUBACK and kept out of :meth:`message` and :meth:`rest`."""

    def __init__(self, command: Sequence[str], timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            ["stdbuf", "-oL", *command, "-d"], stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"mosquitto_sub had no SUBACK within {timeout} s: {command}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                if "received SUBACK" in line:
                    self._subscribed.set()
                elif not line.startswith(("Client ", "Subscribed (mid")):
                    self._lines.put(line.rstrip("\n"))

    def message(self, timeout: float = 15.0) -> str:
        """The next message's line (with ``-v``: the topic, a space, the payload)."""
        return self._lines.get(timeout=timeout)

    def rest(self, timeout: float = 20.0) -> list[str]:
        """Wait for it to exit (``-C`` or ``-W``); every message line it printed not yet read."""
        self.process.wait(timeout)
        self._reader.join(timeout)
        lines: list[str] = []
        while not self._lines.empty():
            lines.append(self._lines.get_nowait())
        return lines

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(5)
        self._reader.join(5)
