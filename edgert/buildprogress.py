"""A build in progress, as a file beside the artifacts it makes: ``compile_model`` writes it,
``edgert list`` shows it.

``<model>/build/.progress-<backend>.json`` holds ``{"backend", "stage", "fraction", "pid",
"started"}``. It starts with a dot, so artifact listings pass it over; it is replaced atomically
(a reader sees one whole state or the next), at most every ``interval`` seconds, and removed when
the build ends. A file whose process is gone (a build killed with SIGKILL) is not shown.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgert.backends import ProgressFn

__all__ = ["BuildInProgress", "ProgressFile", "builds_in_progress"]

_PREFIX = ".progress-"


@dataclass(frozen=True)
class BuildInProgress:
    """What a running build last said of itself."""

    backend: str
    stage: str
    fraction: float  # 0..1 of the whole compile
    pid: int
    started: float  # time.time() at its start


class ProgressFile:
    """The progress file of one build for ``backend`` under ``build_dir``; a context manager
    that removes it on the way out, however the build ended."""

    def __init__(self, build_dir: Path, backend: str, interval: float = 0.5) -> None:
        self.path = build_dir / f"{_PREFIX}{backend}.json"
        self.backend = backend
        self.interval = interval
        self.started = time.time()
        self._written = float("-inf")  # monotonic time of the last write

    def __enter__(self) -> ProgressFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.path.unlink(missing_ok=True)

    def update(self, stage: str, fraction: float) -> None:
        """Record ``stage`` at ``fraction`` (skipped within ``interval`` of the last write, so a
        chatty progress monitor costs no disk traffic; the end is always written)."""
        now = time.monotonic()
        if now - self._written < self.interval and fraction < 1.0:
            return
        self._written = now
        state = {
            "backend": self.backend,
            "stage": stage,
            "fraction": round(float(fraction), 4),
            "pid": os.getpid(),
            "started": self.started,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        # Progress is a courtesy to `edgert list`: a full disk must not fail the build over it.
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.path)

    def relay(self, progress: ProgressFn) -> ProgressFn:
        """``progress``, recording each call here first."""

        def both(stage: str, fraction: float) -> None:
            self.update(stage, fraction)
            progress(stage, fraction)

        return both


def builds_in_progress(build_dir: Path) -> list[BuildInProgress]:
    """The builds running now under ``build_dir`` (a model's ``build/``), by backend."""
    found: list[BuildInProgress] = []
    for path in sorted(build_dir.glob(f"{_PREFIX}*.json")):
        try:
            data = json.loads(path.read_text())
            entry = BuildInProgress(
                str(data["backend"]),
                str(data["stage"]),
                float(data["fraction"]),
                int(data["pid"]),
                float(data["started"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed meanwhile, or not ours
        if _alive(entry.pid):
            found.append(entry)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's (the service's) build: it runs
        return True
    return True
