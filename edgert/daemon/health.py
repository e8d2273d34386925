"""What the daemon tells its supervisors, wired for a :class:`~edgert.daemon.service.Service`:
its readiness and status to systemd, systemd's watchdog fed from the event loop, and (with
``[http] listen``) the HTTP health and metrics endpoints, with ``tegrastats`` on a Jetson."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgert.daemon.catalogue import model_states
from edgert.daemon.counts import ReplyCounts
from edgert.daemon.models import Models
from edgert.daemon.readiness import Readiness, Watchdog
from edgert.daemon.tegrastats import Tegrastats
from edgert.settings import DaemonConfig
from edgert.transport import EventLoopThread, MqttTransport

if TYPE_CHECKING:
    from edgert.daemon.http import HealthServer

__all__ = ["Health"]


class Health:
    """Readiness, the watchdog, and the HTTP endpoints if configured."""

    def __init__(
        self, config: DaemonConfig, models: Models, counts: ReplyCounts, connection: MqttTransport
    ) -> None:
        self.readiness = Readiness(lambda: model_states(models), connection.connected)
        self.watchdog = Watchdog.from_environment()
        self.tegrastats: Tegrastats | None = None
        self.http: HealthServer | None = None
        if config.http_listen:
            # Imported only here: aiohttp and prometheus-client would hold memory in a daemon
            # that serves no HTTP.
            from edgert.daemon.http import HealthServer
            from edgert.daemon.metrics import DaemonCollector, registry

            self.tegrastats = Tegrastats()
            collector = DaemonCollector(models, counts, self.tegrastats)
            self.http = HealthServer(config.http_listen, self.readiness, registry(collector))

    def bind(self) -> None:
        """Take the HTTP address (before loading or connecting: a clash stops the start)."""
        if self.http is not None:
            self.http.bind()

    def start(self, loop: EventLoopThread) -> None:
        """Serve HTTP and feed the watchdog on ``loop`` (running); tell systemd the status."""
        if self.http is not None:
            self.http.serve(loop)
        if self.tegrastats is not None:
            self.tegrastats.start()
        if self.watchdog is not None:
            loop.spawn(self.watchdog.run())
        self.readiness.changed()

    def changed(self) -> None:
        """A model's state changed, or the broker connected."""
        self.readiness.changed()

    def stop(self, loop: EventLoopThread) -> None:
        if self.http is not None:
            self.http.close(loop)
        if self.tegrastats is not None:
            self.tegrastats.stop()
