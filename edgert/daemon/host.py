"""What the daemon tells its host: systemd's notify socket (``Type=notify``), and glibc's heap
(memory that loading freed, given back)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket

__all__ = ["notify_systemd", "release_freed_memory"]

log = logging.getLogger("edgert.daemon")


def release_freed_memory() -> None:
    """Give the heap that loading freed (ONNX protos parsed for IO specs, shape inference) back
    to the OS: glibc keeps it otherwise, and an 8 GB Jetson shares it with the GPU."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def notify_systemd(state: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd set it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
