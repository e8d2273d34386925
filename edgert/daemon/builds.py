"""The compiles a daemon runs in child processes, and what they report while they run.

A build runs as ``python -m edgert.daemon.builds MODEL_DIR BACKEND [PRECISION]``, never in the
daemon (a TensorRT abort or an out-of-memory kill there must not take serving down), in a
process group of its own (ending it ends TensorRT's build grandchild too). The child prints one
JSON object a line: ``{"stage", "fraction"}`` as it works (TensorRT's progress monitor on 10 and
11; the compile's phases, parse → build → parity → write, on 8.6), then ``{"ok": true}`` or
``{"error": message}``. :class:`Builds` relays the progress: to the catalogue at most once a
second (``on_progress``), to the log at each tenth.

Also here: how long the interim backend takes on a sample request (:func:`measure_ms`), which the
catalogue compares with ``[serve] interim_budget_ms``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgert.errors import EdgertError
from edgert.parity import sample_inputs
from edgert.repository import ModelDir
from edgert.runtime import LoadedModel
from edgert.settings import DaemonConfig

__all__ = ["BuildState", "Builds", "interim", "main", "measure_ms", "target"]

log = logging.getLogger("edgert.daemon")


@dataclass(frozen=True)
class BuildState:
    """A model's build for ``backend``: how far it got (``stage``, ``fraction`` of the whole
    compile), or why it failed (``failed``)."""

    backend: str
    fraction: float = 0.0
    stage: str = "starting"
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The catalogue's ``building`` (running) or ``build_failed`` (ended) entry."""
        if self.failed is not None:
            return {"backend": self.backend, "reason": self.failed}
        return {"backend": self.backend, "progress": round(self.fraction, 2), "stage": self.stage}


class Builds:
    """The build children running now, each model's last build state, and the publishes of it.

    ``on_progress()`` is called at most once every ``publish_every`` seconds while builds run
    (a progress line held back by that limit is published when the limit has passed)."""

    def __init__(
        self,
        stopping: threading.Event,
        on_progress: Callable[[], None],
        *,
        publish_every: float = 1.0,
    ) -> None:
        self._stopping = stopping
        self._on_progress = on_progress
        self._every = publish_every
        self._lock = threading.Lock()
        self._children: dict[str, subprocess.Popen[str]] = {}
        self._states: dict[str, BuildState] = {}
        self._published = float("-inf")  # monotonic time of the last on_progress()
        self._timer: threading.Timer | None = None

    def state(self, name: str) -> BuildState | None:
        """``name``'s build running now, or the last one's failure; None if neither."""
        with self._lock:
            return self._states.get(name)

    def starting(self, name: str, backend: str) -> str:
        """``name``'s build for ``backend`` starts now (or next: the catalogue shows it as
        building from the moment its interim serves); the backend it builds for."""
        label = target(backend)
        self._set(name, BuildState(label))
        return label

    def fail(self, name: str, backend: str, reason: str) -> None:
        """Record that ``name``'s build for ``backend`` failed after the child ended (its
        artifact would not load)."""
        with self._lock:
            self._states[name] = BuildState(backend, failed=reason)

    def forget(self, name: str) -> None:
        """Drop ``name``'s last build state (a version served since, or the model gone)."""
        with self._lock:
            self._states.pop(name, None)

    def run(self, name: str, model: ModelDir, backend: str, precision: str | None = None) -> str:
        """Compile ``model`` for ``backend`` in a child; "" once built, else why not. Blocks
        (a build thread); its state stays, as the failure, when it fails."""
        command = [sys.executable, "-m", "edgert.daemon.builds", str(model.path), backend]
        label = self.starting(name, backend)
        with subprocess.Popen(
            [*command, *([precision] if precision else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one pipe: neither can fill up while the other is read
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as child:
            with self._lock:
                self._children[name] = child
                stopped = self._stopping.is_set()
            if stopped:  # the daemon stops: end_all() may have looked before this child began
                _signal_group(child, signal.SIGTERM)
            try:
                reason = self._follow(name, label, child)
            finally:
                with self._lock:
                    self._children.pop(name, None)
        with self._lock:
            if reason:
                self._states[name] = BuildState(label, failed=reason)
            else:
                self._states.pop(name, None)
        return reason

    def _follow(self, name: str, label: str, child: subprocess.Popen[str]) -> str:
        """Relay ``child``'s progress until it exits; its failure's reason, or ""."""
        assert child.stdout is not None
        other: collections.deque[str] = collections.deque(maxlen=5)  # its last non-JSON lines
        last: dict[str, Any] = {}
        decile = -1
        for line in child.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                if line.strip():
                    other.append(line.strip())
                continue
            if not isinstance(message, dict):
                continue
            if "stage" not in message:
                last = message
                continue
            fraction = min(max(float(message.get("fraction", 0.0)), 0.0), 1.0)
            stage = str(message["stage"])
            self._set(name, BuildState(label, fraction, stage))
            if int(fraction * 10) > decile:
                decile = int(fraction * 10)
                log.info("%s: building for %s: %d%% (%s)", name, label, decile * 10, stage)
        code = child.wait()
        if code == 0 and last.get("ok"):
            return ""
        if "error" in last:
            return str(last["error"])
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        return f"the build process {how}: {' | '.join(other) or 'no output'}"

    def _set(self, name: str, state: BuildState) -> None:
        with self._lock:
            self._states[name] = state
            if self._timer is not None:
                return  # a publish is due: it shows this state
            wait = self._published + self._every - time.monotonic()
            if wait > 0:  # published within the last second: once the second is up
                self._timer = threading.Timer(wait, self._publish)
                self._timer.daemon = True
                self._timer.start()
                return
            self._published = time.monotonic()
        self._on_progress()

    def _publish(self) -> None:
        with self._lock:
            self._timer = None
            self._published = time.monotonic()
        if not self._stopping.is_set():
            self._on_progress()

    def end_all(self) -> None:
        """Builds in progress die with the daemon, so none writes or holds the GPU after it."""
        with self._lock:
            children = list(self._children.values())
            if self._timer is not None:
                self._timer.cancel()
        for child in children:
            _signal_group(child, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()


def target(backend: str) -> str:
    """The backend a build for ``backend`` makes (auto: the first available, as compile picks
    it when the model fits; the catalogue names the one it meant)."""
    if backend != "auto":
        return backend
    from edgert.backends import choose

    try:
        return choose("auto").name
    except EdgertError:
        return backend


def interim(config: DaemonConfig) -> str | None:
    """The backend that serves while an engine builds for ``config``'s backend; None if none
    does (``interim_backend = "none"``, or the build is not for TensorRT)."""
    chosen = config.interim_backend
    return chosen if chosen != "none" and target(config.backend) == "tensorrt" else None


def _signal_group(child: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(child.pid, sig)


def measure_ms(loaded: LoadedModel) -> float | None:
    """Milliseconds ``loaded`` takes on one sample request (after one warm-up run), or None if
    it cannot be measured (a sample that does not fit: the parity check said so already)."""
    try:
        samples, _ = sample_inputs(loaded.model.path, loaded.io, loaded.config)
        feeds = samples[0]
        loaded.infer(feeds)
        start = time.perf_counter()
        loaded.infer(feeds)
    except (EdgertError, IndexError) as exc:
        log.warning("%s: interim latency not measured: %s", loaded.config.name, exc)
        return None
    return (time.perf_counter() - start) * 1000


def _say(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so the staging dir and the progress file are removed


def main(argv: list[str] | None = None) -> int:
    """The build child: compile one model, reporting on stdout (see the module's docstring)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        sys.stderr.write("usage: python -m edgert.daemon.builds MODEL_DIR BACKEND [PRECISION]\n")
        return 2
    signal.signal(signal.SIGTERM, _terminated)
    from edgert.compile import CompileOptions, compile_model

    precision: Any = args[2] if len(args) == 3 else None
    options = CompileOptions(backend=args[1], precision=precision)
    try:
        result = compile_model(
            ModelDir(Path(args[0])), options, lambda s, f: _say(stage=s, fraction=f)
        )
    except EdgertError as exc:
        _say(error=exc.message)
        return 1
    _say(ok=True, backend=result.artifact.manifest.key.backend, cached=result.cached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
