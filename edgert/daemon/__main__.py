"""The daemon's own entry point: ``edgert serve`` parses its flags, then replaces itself with this.

``python -m edgert.daemon``, with ``$EDGERT_SERVE_SETTINGS`` holding (as JSON) the config file
and the overrides ``edgert serve`` was given; the environment, not argv, so a broker password in
``--broker`` does not show in ``ps``. A thin main (settings → logging → config → service → signals)
in a process that never imports the CLI's libraries (Typer, Click, Rich and Typer's pydantic:
memory a daemon never uses, on a Jetson whose memory is shared with the GPU).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgert.errors import EdgertError, first_line
from edgert.settings import DaemonConfig, parse_broker_url

__all__ = ["SETTINGS_VARIABLE", "load_settings", "main", "settings_argument"]

SETTINGS_VARIABLE = "EDGERT_SERVE_SETTINGS"


def settings_argument(
    config: Path | None,
    *,
    broker: str | None = None,
    repository: Path | None = None,
    node: str | None = None,
    rebuild_stale: bool = False,
    verbose: bool = False,
) -> str:
    """The one argument ``main`` takes, from ``edgert serve``'s flags."""
    return json.dumps(
        {
            "config": str(config) if config else None,
            "broker": broker,
            "repository": str(repository) if repository else None,
            "node": node,
            "rebuild_stale": rebuild_stale,
            "verbose": verbose,
        }
    )


def load_settings(argument: str, default_repository: Path) -> tuple[DaemonConfig, bool]:
    """The daemon config the flags describe, and whether to log verbosely."""
    flags: dict[str, Any] = json.loads(argument)
    config_path = Path(flags["config"]) if flags.get("config") else None
    settings = DaemonConfig.load(config_path)
    changes: dict[str, Any] = {}
    if flags.get("broker"):
        changes["broker"] = parse_broker_url(flags["broker"], settings.broker)
    if flags.get("repository"):
        changes["repository"] = Path(flags["repository"])
    elif config_path is None:
        changes["repository"] = default_repository
    if flags.get("node"):
        changes["node"] = flags["node"]
    if flags.get("rebuild_stale"):
        changes["rebuild_stale"] = True
    return replace(settings, **changes), bool(flags.get("verbose"))


def main(argv: list[str] | None = None) -> int:
    from edgert.daemon.service import Service

    argument = os.environ.pop(SETTINGS_VARIABLE, None) if argv is None else argv[0]
    if argument is None:
        sys.stderr.write("error: run `edgert serve`; this is its internal entry point\n")
        return 2
    try:
        settings, verbose = load_settings(argument, Path("engines"))
    except EdgertError as exc:
        sys.stderr.write(f"error: {first_line(exc)}\n")
        return 1
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        service = Service(settings)
        signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
        signal.signal(signal.SIGINT, lambda *_: service.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: service.request_reload())
        service.start()
    except EdgertError as exc:
        sys.stderr.write(f"error: {first_line(exc)}\n")
        return 1
    try:
        service.wait()
    finally:
        service.stop()
    if service.fatal is not None:
        sys.stderr.write(f"error: {service.fatal}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
