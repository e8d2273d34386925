"""The TensorRT build, run as a child process: ``python -m edgert.backends.trt_build JOB.json``.

A TensorRT build can abort the whole process (out of memory on an 8 GB Jetson), so it never runs
inside the daemon or the CLI. The parent writes a job file; the child prints one JSON object per
line on stdout (``{"stage", "fraction"}`` while it works, then ``{"ok": ...}`` or
``{"error", "details"}``), writes the plan and the updated timing cache atomically, and exits.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "write_atomic"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _say(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m edgert.backends.trt_build JOB.json\n")
        return 2
    job = json.loads(Path(args[0]).read_text())
    try:
        from edgert.backends import trt_compat as compat
    except ImportError as exc:
        _say(error=f"TensorRT is not importable: {exc}", details=[])
        return 3

    settings = compat.BuildSettings(
        precision=job["precision"],
        profiles={
            name: (tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2]))
            for name, shapes in job["profiles"].items()
        },
        workspace_bytes=job.get("workspace_bytes"),
        optimization_level=job.get("optimization_level"),
        dla_core=job.get("dla_core"),
        version_compatible=bool(job.get("version_compatible")),
        hardware_compatible=bool(job.get("hardware_compatible")),
    )
    cache_path = Path(job["timing_cache"]) if job.get("timing_cache") else None
    cache = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
    log = compat.TrtLog()
    try:
        plan, updated = compat.build_serialized(
            compat.api(),
            job["onnx"],
            settings,
            log,
            lambda stage, fraction: _say(stage=stage, fraction=fraction),
            cache,
        )
    except compat.TrtFailure as exc:
        _say(error=exc.message, details=exc.details[-20:])
        return 1
    write_atomic(Path(job["plan"]), plan)
    if cache_path is not None and updated:
        write_atomic(cache_path, updated)
    warnings = [msg for severity, msg in log.lines if severity == "warning"]
    _say(ok=True, warnings=warnings[-10:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
