"""``[http] listen``: ``/health/live``, ``/health/ready`` and ``/metrics``, served by aiohttp on
the daemon's event loop (the one that owns MQTT), so a wedged loop fails its health check too.

The socket is bound when the daemon starts, before it loads anything or connects: an address
in use stops it at once, in one line, rather than after it announced itself ``online``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgert.daemon.readiness import Readiness
from edgert.errors import ConfigError
from edgert.settings import split_listen
from edgert.transport import EventLoopThread

__all__ = ["HealthServer"]

log = logging.getLogger("edgert.daemon")


class HealthServer:
    """The HTTP endpoints at ``listen`` ("host:port"): bound by :meth:`bind`, served on an event
    loop by :meth:`serve`, closed by :meth:`close`."""

    def __init__(self, listen: str, readiness: Readiness, registry: CollectorRegistry) -> None:
        self.listen = listen
        self.readiness = readiness
        self.registry = registry
        self._socket: socket.socket | None = None
        self._runner: web.AppRunner | None = None

    def bind(self) -> None:
        """Take the address now; ConfigError (one line, naming it) if it cannot be had."""
        host, port = split_listen(self.listen)
        try:
            self._socket = socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                why += ": another process listens there; choose another port"
            raise ConfigError(
                f'[http] listen = "{self.listen}": cannot listen there: {why}'
            ) from exc
        self._socket.setblocking(False)

    @property
    def port(self) -> int:
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    def serve(self, loop: EventLoopThread) -> None:
        """Start answering on ``loop`` (running), with the socket :meth:`bind` took."""
        loop.run(self._start(), timeout=10)
        log.info("http: health and metrics on http://%s/", self.listen)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        assert self._socket is not None
        await web.SockSite(runner, self._socket).start()
        self._runner = runner

    def close(self, loop: EventLoopThread) -> None:
        if self._runner is not None and loop.running:
            loop.run(self._runner.cleanup(), timeout=5)
        if self._socket is not None:
            self._socket.close()

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})  # answered at all: the loop runs

    async def _ready(self, request: web.Request) -> web.Response:
        found = self.readiness.check()
        if found.ready:
            return web.json_response({"ready": True})
        body = {"ready": False, "waiting": list(found.waiting)}
        return web.Response(status=503, text=json.dumps(body), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
