"""When the daemon is ready, and what it tells systemd (``Type=notify``, sd_notify(3)).

Readiness is a function of the catalogue's model states (:func:`~edgert.daemon.catalogue.
model_states`) and the broker connection, so it holds however a model gets to ``ready``:
``/health/ready`` answers 200 once connected with every model ``ready``; systemd gets
``READY=1`` once connected with every model settled (``ready`` or ``failed``: a failed model
will not become ready by waiting, and a start that never ends would be restarted). ``STATUS=``
lines say what is served and what is not yet. The watchdog is fed from the event loop that owns
the network I/O, so a wedged loop stops feeding it and systemd restarts the daemon.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgert.daemon.host import notify_systemd

__all__ = ["Readiness", "Verdict", "Watchdog", "status_line"]

StatesFn = Callable[[], Sequence[Mapping[str, Any]]]
NotifyFn = Callable[[str], None]


@dataclass(frozen=True)
class Verdict:
    """Whether the daemon is ready to answer (``/health/ready``), whether systemd may be told
    it started (every model settled), and what is not ready, with why."""

    ready: bool
    settled: bool
    waiting: tuple[dict[str, str], ...]


def verdict(connected: bool, states: Sequence[Mapping[str, Any]]) -> Verdict:
    """Ready: connected, and every model ``ready``. Settled: connected, none ``loading``."""
    waiting: list[dict[str, str]] = []
    if not connected:
        waiting.append({"name": "broker", "state": "disconnected", "reason": "not connected"})
    for entry in states:
        state = str(entry.get("state"))
        if state == "ready":
            continue
        reason = str(entry.get("reason") or (_loading(entry) if state == "loading" else ""))
        waiting.append({"name": str(entry["name"]), "state": state, "reason": reason})
    loading = any(w["state"] in ("loading", "disconnected") for w in waiting)
    return Verdict(not waiting, not loading, tuple(waiting))


def _loading(entry: Mapping[str, Any]) -> str:
    """Why a loading model is not ready: its build and how far it is, or its artifact opening."""
    build = entry.get("building")
    if not isinstance(build, Mapping):
        return "building or loading"
    share = round(100 * float(build.get("progress") or 0))
    return f"{build.get('backend')} build {share}% ({build.get('stage')})"


def status_line(states: Sequence[Mapping[str, Any]]) -> str:
    """systemd's one-line status: "serving 2 models; tensorrt build of person 40%; loading vad;
    failed cnn (reason)". A model served on its interim backend while its engine builds counts
    as served, and its build is shown too."""
    by_state: dict[str, list[Mapping[str, Any]]] = {}
    for entry in states:
        by_state.setdefault(str(entry.get("state")), []).append(entry)
    ready = len(by_state.get("ready", ()))
    parts = [f"serving {ready} model{'' if ready == 1 else 's'}"]
    for entry in states:
        build = entry.get("building")
        if isinstance(build, Mapping) and entry.get("state") != "failed":
            share = round(100 * float(build.get("progress") or 0))
            parts.append(f"{build.get('backend')} build of {entry['name']} {share}%")
    if loading := [e for e in by_state.get("loading", ()) if not e.get("building")]:
        parts.append("loading " + ", ".join(str(e["name"]) for e in loading))
    if failed := by_state.get("failed"):
        parts.append("failed " + ", ".join(f"{e['name']} ({e.get('reason', '')})" for e in failed))
    return "; ".join(parts).replace("\n", " ")


class Readiness:
    """The daemon's readiness; :meth:`changed` after every model state change and connect."""

    def __init__(
        self,
        states: StatesFn,
        connected: threading.Event,
        notify: NotifyFn = notify_systemd,
    ) -> None:
        self._states = states
        self._connected = connected
        self._notify = notify
        self._lock = threading.Lock()
        self._told_ready = False
        self._status = ""

    def check(self) -> Verdict:
        return verdict(self._connected.is_set(), self._states())

    def changed(self) -> None:
        """Tell systemd the new status, and ``READY=1`` the first time all is settled (any
        thread: model states change on build threads, connects on the event loop)."""
        states = self._states()
        found = verdict(self._connected.is_set(), states)
        with self._lock:
            lines = []
            status = status_line(states)
            if status != self._status:
                self._status = status
                lines.append(f"STATUS={status}")
            if found.settled and not self._told_ready:
                self._told_ready = True
                lines.append("READY=1")
            if lines:
                self._notify("\n".join(lines))


class Watchdog:
    """Feeds systemd's watchdog (``WatchdogSec=``) from an event loop, at half its interval."""

    def __init__(self, interval_s: float, notify: NotifyFn = notify_systemd) -> None:
        self.interval_s = interval_s
        self._notify = notify

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, notify: NotifyFn = notify_systemd
    ) -> Watchdog | None:
        """The watchdog systemd asked for (``WATCHDOG_USEC``, for this process if
        ``WATCHDOG_PID`` names one), or None."""
        env = os.environ if environ is None else environ
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            pid = int(env.get("WATCHDOG_PID", "0"))
        except ValueError:
            return None
        if usec <= 0 or (pid and pid != os.getpid()):
            return None
        return cls(usec / 1e6, notify)

    async def run(self) -> None:
        """Until cancelled: ``WATCHDOG=1`` now and every half interval, as sd_notify(3) asks."""
        while True:
            self._notify("WATCHDOG=1")
            await asyncio.sleep(self.interval_s / 2)
