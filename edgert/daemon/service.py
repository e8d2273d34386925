"""The serving daemon: load models, connect, take requests, answer them, drain on SIGTERM.

The network thread (paho's) decodes and hands off to each model's worker (a bounded queue, a
batcher, one thread per instance). A model whose runs take under a millisecond is answered on
the network thread itself while nothing is queued for it: there, a hand-off costs more than the
inference. The service owns the lifecycle, the catalogue and the stats; taking requests and
publishing replies is :class:`~edgert.daemon.requests.Requests`'s work, and which models are
served (swapping, retiring, building them) is :class:`~edgert.daemon.models.Models`'.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from edgert.daemon.discovery import ModelEntity, SourceEntity
from edgert.daemon.homeassistant import HomeAssistant
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.models import Models, model_name
from edgert.daemon.requests import Requests
from edgert.daemon.sources import Sources
from edgert.errors import ArtifactError, EdgertError, IncompatibleArtifact
from edgert.mqtt import Message, MqttConnection
from edgert.protocol import (
    Topics,
    catalogue,
    default_node_id,
    sanitize_node_id,
)
from edgert.repository import ModelDir, Repository
from edgert.runtime import open_model
from edgert.settings import DaemonConfig

__all__ = ["Service"]

log = logging.getLogger("edgert.daemon")


class Service:
    """start → serve → drain → stop, with cleanup in ``stop``."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.node = sanitize_node_id(config.node) if config.node else default_node_id()
        self.topics = Topics(
            prefix=config.prefix,
            node=self.node,
            reply_prefix=config.reply_prefix or None,
            share_group=config.share_group or None,
        )
        self.ledger = RequestLedger(config.reply_cache)
        self._stopping = threading.Event()
        self._reload = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self._sources = Sources(
            config.sources, self.topics.events, self.infer_local, self._event, config.max_payload
        )
        broker = config.broker
        if not broker.client_id:
            from dataclasses import replace

            broker = replace(broker, client_id=f"edgert-{self.node}")
        self.connection = MqttConnection(
            broker,
            will=(self.topics.status, b"offline"),
            on_message=self._on_message,
            after_read=self._flush,
        )
        self.models = Models(
            config,
            self.ledger,
            self.connection,
            self.topics,
            self._stopping,
            publish_reply=self._publish_reply,
            on_result=self._sources.on_result,
            on_built=self._built,
        )
        self.requests = Requests(
            config, self.topics, self.ledger, self.connection, self.models, self._stopping
        )
        self.homeassistant = (
            HomeAssistant(self.node, self.topics, self.connection, self._entities)
            if config.homeassistant
            else None
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load what is compiled, connect, announce; start builds for the rest in children."""
        repository = Repository(self.config.repository)
        pending: list[ModelDir] = []
        for model in self._configured(repository):
            try:
                self.models.serve(model, open_model(model, self.config.backend))
            except IncompatibleArtifact as exc:
                if not self.config.rebuild_stale:
                    self.models.fail(model, f"{exc.message} (or serve with --rebuild-stale)")
                    continue
                log.info("%s: %s; rebuilding it in a child process", model_name(model), exc.message)
                pending.append(model)
            except ArtifactError as exc:
                log.info("%s: %s; compiling it in a child process", model_name(model), exc.message)
                pending.append(model)
            except EdgertError as exc:
                self.models.fail(model, exc.message)
        self.connection.start()
        # Pinned requests for any model (so an unknown one is answered no_model); pooled ones
        # per served model, so daemons sharing a broker never answer for each other's models.
        self.connection.subscribe(self.topics.node_infer(), self.config.qos)
        if self.homeassistant is not None:
            self.homeassistant.subscribe()
        for trigger in self._sources.triggers:
            self.connection.subscribe(trigger, 0)
        self.connection.publish_retained(self.topics.status, b"online")
        self._publish_catalogue()
        self._sources.start(list(self.models.served), [model_name(m) for m in pending])
        for model in pending:
            self.models.start_build(model)
        self._stats_thread = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        self._stats_thread.start()
        _release_freed_memory()
        _notify_systemd("READY=1")
        log.info(
            "serving %s as node %s on %s:%d",
            ", ".join(self.models.served) or "no models yet",
            self.node,
            self.config.broker.host,
            self.config.broker.port,
        )

    def wait(self) -> None:
        """Block until :meth:`request_stop` (SIGTERM/SIGINT); reload on :meth:`request_reload`."""
        while not self._stopping.wait(0.1):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()

    def request_stop(self) -> None:
        self._stopping.set()

    def request_reload(self) -> None:
        """SIGHUP (``systemctl reload edgert``): :meth:`reload` soon, from :meth:`wait`."""
        self._reload.set()

    def reload(self) -> None:
        """Serve what the repository holds now, without dropping a request.

        A model whose directory changed (a new compile, a new model.toml) is loaded beside the
        one serving and swapped in between two requests; the old one answers what it took, then
        closes. A model that fails to load keeps serving its old version, and says why in the
        log. New models are served (or compiled, in a child); removed ones stop being served.
        """
        log.info("reloading the repository %s", self.config.repository)
        try:
            models = self._configured(Repository(self.config.repository))
        except EdgertError as exc:
            log.error("reload: %s; serving on as before", exc.message)
            return
        self.models.update(models)
        self._publish_catalogue()
        _release_freed_memory()

    def _configured(self, repository: Repository) -> list[ModelDir]:
        """The repository's models, or those the config names."""
        if self.config.models:
            return [repository.model(name) for name in self.config.models]
        return repository.models()

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking requests, answer what was taken, publish offline, disconnect."""
        self._stopping.set()
        _notify_systemd("STOPPING=1")
        self._sources.stop()  # no new pulls; then what was taken is answered
        self.models.end_builds()
        served = self.models.entries()
        for entry in served:
            if not entry.worker.drain(drain_timeout):
                log.warning("%s: drain timed out", entry.worker.name)
        self.connection.publish_retained(self.topics.status, b"offline")
        time.sleep(0.2)  # let the network thread flush the replies and offline
        self.connection.stop()
        for entry in served:
            entry.worker.stop()
        log.info("stopped")

    def _built(self, name: str, ok: bool) -> None:
        if ok:
            self._sources.model_served(name, list(self.models.served))
        self._publish_catalogue()

    # -- catalogue, Home Assistant and stats ----------------------------------------------

    def _publish_catalogue(self) -> None:
        with self.models.lock:
            entries = []
            for name, entry in self.models.served.items():
                loaded = entry.worker.loaded
                manifest = loaded.artifact.manifest
                entries.append(
                    {
                        "name": name,
                        "version": loaded.config.version,
                        "backend": manifest.key.backend,
                        "precision": manifest.key.precision,
                        "inputs": [s.to_dict() for s in entry.specs],  # what a device sends
                        "outputs": [
                            s.to_dict()
                            for s in loaded.runner.io.outputs
                            if entry.worker.streams is None
                            or s.name not in entry.worker.streams.plan.internal_outputs
                        ],
                        "stateful": entry.worker.streams is not None,
                        "parity": manifest.parity,
                    }
                )
                if manifest.fallback:  # why not the preferred backend (e.g. ONNX-ML ops)
                    entries[-1]["fallback"] = manifest.fallback
            failed = dict(self.models.failed)
        self.connection.publish_retained(self.topics.models, catalogue(self.node, entries, failed))
        if self.homeassistant is not None:
            self.homeassistant.publish()

    def _entities(self) -> tuple[list[ModelEntity], list[SourceEntity]]:
        """What Home Assistant is told of: the served models, and the sources feeding them."""
        with self.models.lock:
            configs = {
                name: entry.worker.loaded.config for name, entry in self.models.served.items()
            }
        models = [ModelEntity.of(config) for config in configs.values()]
        sources = [
            SourceEntity(
                s.name,
                s.model,
                tuple(s.labels or configs[s.model].labels or (s.model,)),
            )
            for s in self.config.sources
            if s.model in configs
        ]
        return models, sources

    def _stats_loop(self) -> None:
        last: dict[str, tuple[float, int]] = {}  # model -> (when, requests) at the last stats
        while not self._stopping.wait(self.config.stats_interval):
            with self.models.lock:
                models = {
                    name: entry.worker.stats.snapshot(entry.worker.depth)
                    for name, entry in self.models.served.items()
                }
            now = time.monotonic()
            for name, snapshot in models.items():
                when, before = last.get(name, (now, snapshot["requests"]))
                elapsed = now - when
                rate = (snapshot["requests"] - before) / elapsed if elapsed > 0 else 0.0
                snapshot["rate"] = round(rate, 3)  # requests per second since the last stats
                last[name] = (now, snapshot["requests"])
            payload = {
                "v": 1,
                "node": self.node,
                "time": time.time(),
                "models": models,
                "joined": self.ledger.joined,
                "replayed": self.ledger.replayed,
                "in_flight": self.ledger.in_flight(),
            }
            if self._sources.configs:
                payload["sources"] = self._sources.snapshot()
            self.connection.publish(self.topics.stats, json.dumps(payload).encode(), qos=0)

    # -- requests (network thread) ----------------------------------------------------------

    def _on_message(self, message: Message) -> bool:
        """Take a request, or answer it with an error. False leaves it unacknowledged."""
        if self.homeassistant is not None and self.homeassistant.on_message(
            message.topic, message.payload
        ):
            return True
        if self._stopping.is_set():
            return False  # not taken: the broker redelivers it to our next session
        if not self.requests.on_message(message):
            self._sources.on_message(message.topic)  # a source's trigger, maybe
        return True

    def _publish_reply(self, waiter: Waiter, reply: bytes) -> None:
        self.requests.publish_reply(waiter, reply)

    def _flush(self) -> None:
        """After each burst of reads: run what the fast models kept back, a batch each."""
        self.models.flush()

    # -- sources (their own threads) --------------------------------------------------------

    def infer_local(
        self, model: str, payload: bytes, content_type: str, timeout: float
    ) -> Mapping[str, Any]:
        return self.requests.infer_local(model, payload, content_type, timeout)

    def _event(self, topic: str, payload: bytes) -> None:
        self.connection.publish(topic, payload, qos=0)


def _release_freed_memory() -> None:
    """Give the heap that loading freed (ONNX protos parsed for IO specs, shape inference) back
    to the OS: glibc keeps it otherwise, and an 8 GB Jetson shares it with the GPU."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _notify_systemd(state: str) -> None:
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
