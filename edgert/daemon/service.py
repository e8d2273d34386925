"""The serving daemon: load models, connect, take requests, answer them, drain on SIGTERM.

The network thread (paho's) decodes and hands off to each model's worker (a bounded queue, a
batcher, one thread per instance). A model whose runs take under a millisecond is answered on
the network thread itself while nothing is queued for it: there, a hand-off costs more than the
inference. Which models are served, and swapping, retiring and building them, are the work of
:class:`~edgert.daemon.models.Models`.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgert.daemon.discovery import ModelEntity, SourceEntity
from edgert.daemon.homeassistant import HomeAssistant
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.limits import RateLimiter
from edgert.daemon.models import Models, Served, model_name
from edgert.daemon.sources import Sources
from edgert.daemon.worker import Job
from edgert.errors import ArtifactError, EdgertError, IncompatibleArtifact
from edgert.mqtt import Message, MqttConnection
from edgert.pipeline import Transform
from edgert.protocol import (
    ErrorCode,
    ProtocolError,
    Request,
    Topics,
    catalogue,
    default_node_id,
    error_reply,
    sanitize_node_id,
)
from edgert.repository import ModelDir, Repository
from edgert.runtime import open_model
from edgert.settings import DaemonConfig

__all__ = ["Service"]

log = logging.getLogger("edgert.daemon")


@dataclass(frozen=True)
class _LocalWaiter(Waiter):
    """A reply for the daemon itself (a source's pull), not for an MQTT topic."""

    deliver: Callable[[bytes], None] = field(compare=False)


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
        self._limiter = RateLimiter(config.rate_limit, config.burst) if config.rate_limit else None
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

    def _publish_reply(self, waiter: Waiter, reply: bytes) -> None:
        if isinstance(waiter, _LocalWaiter):
            waiter.deliver(reply)
            return
        reply = self._fitting(waiter, reply)
        # No Content Type: a reply is always JSON (DESIGN.md), and each property costs every
        # requester's MQTT client a decode.
        self.connection.publish(waiter.topic, reply, qos=waiter.qos, correlation=waiter.correlation)

    def _fitting(self, waiter: Waiter, reply: bytes) -> bytes:
        """``reply``, or a too_large error in its place when it exceeds the payload limit or the
        broker's Maximum Packet Size (the broker would drop the client that sends it)."""
        limit = self.connection.max_packet_size
        cap = min(limit or self.config.max_payload, self.config.max_payload)
        size = len(reply)
        overhead = len(waiter.topic.encode()) + len(waiter.correlation or b"") + 64  # headers
        if size + overhead <= cap:
            return reply  # far inside both limits: no need to measure the packet exactly
        if limit is not None:
            size = self.connection.packet_size(
                waiter.topic, reply, qos=waiter.qos, correlation=waiter.correlation
            )
        if size <= cap:
            return reply
        try:
            request_id = json.loads(reply).get("id")
        except ValueError:
            request_id = None
        return error_reply(
            request_id,
            ErrorCode.TOO_LARGE,
            f"the reply is {size} bytes; replies go up to {cap} bytes here: ask with "
            '"compact": true, or for fewer items per request',
        )

    def _on_message(self, message: Message) -> bool:
        """Take a request, or answer it with an error. False leaves it unacknowledged."""
        if self.homeassistant is not None and self.homeassistant.on_message(
            message.topic, message.payload
        ):
            return True
        if self._stopping.is_set():
            return False  # not taken: the broker redelivers it to our next session
        route = self.topics.parse_request_topic(message.topic)
        if route is None:
            self._sources.on_message(message.topic)  # a source's trigger, maybe
            return True
        name, key, _pinned = route
        received = time.monotonic()
        keyed = self.topics.default_reply_topic(key, name) if key else None
        fallback = message.response_topic or keyed
        waiter_qos = min(message.qos, self.config.qos)
        served = self.models.get(name)
        try:
            if len(message.payload) > self.config.max_payload:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"payload is {len(message.payload)} bytes; the limit is "
                    f"{self.config.max_payload}",
                )
            if served is None:
                why = self.models.failed.get(name)
                known = ", ".join(sorted(self.models.served)) or "none"
                raise ProtocolError(
                    ErrorCode.NO_MODEL,
                    f"model '{name}' is not served here"
                    + (f" ({why})" if why else f"; served: {known}"),
                )
            request, transform = served.decode(message, name, key, self.config.max_elements)
        except ProtocolError as exc:
            request_id = exc.request_id or message.user.get("id") or key
            candidates = [exc.reply_to, fallback, keyed]
            if key is not None:  # a device's: never answered under another device's key
                candidates = [t for t in candidates if t and self._under(t, key)]
            self._reply_error(candidates, message, request_id, exc, waiter_qos)
            return True
        destination = request.reply_to or fallback
        if destination is None:
            log.warning("request on %s names no reply topic and has no key; dropped", message.topic)
            return True
        if not self.topics.reply_allowed(destination):
            error = ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"reply topic {destination!r} is outside {self.topics.reply_root}",
            )
            self._reply_error([keyed], message, request.id, error, waiter_qos)
            return True
        if key is not None and self.topics.reply_device(destination) != key:
            # A keyed request is a device's (the ACL lets each user publish under its own key
            # only): its reply goes under that key, never to another device's replies.
            error = ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"reply topic {destination!r} is not under this request's key {key!r}",
            )
            self._reply_error([keyed], message, request.id, error, waiter_qos)
            return True
        with self.models.swap:
            if self.models.served.get(name) is not served:  # swapped in while this was decoded
                return self._on_message(message)
            return self._take(message, served, request, transform, destination, received)

    def _take(
        self,
        message: Message,
        served: Served,
        request: Request,
        transform: Transform | None,
        destination: str,
        received: float,
    ) -> bool:
        """Hand a decoded request to its model's worker (under the swap lock)."""
        waiter_qos = min(message.qos, self.config.qos)
        served.worker.stats.record_request()
        if self._limiter is not None:
            device = self.topics.reply_device(destination)
            wait = self._limiter.take(device)
            if wait:
                served.worker.stats.record_error(ErrorCode.RATE_LIMITED.value)
                error = ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"device '{device}' is over its {self.config.rate_limit:g} requests/s "
                    f"(bursts of {self.config.burst:g}); retry in {wait:.2f} s",
                )
                self._reply_error([destination], message, request.id, error, waiter_qos)
                return True
        waiter = Waiter(destination, message.correlation, waiter_qos)
        ledger_key = (destination, request.id) if request.id is not None else None
        begin = self.ledger.begin(ledger_key, waiter)
        if begin.cached is not None:
            self._publish_reply(waiter, begin.cached)
            return True
        if not begin.run:
            return True
        deadline = received + request.deadline_ms / 1000 if request.deadline_ms else None
        job = Job(
            request.id,
            ledger_key,
            waiter,
            request.inputs,
            received,
            deadline,
            request.compact,
            request.stream,
            request.reset,
            transform,
        )
        if not served.worker.offer(job, defer=True):
            reply = error_reply(
                request.id, ErrorCode.BUSY, f"{served.worker.name}'s queue is full; retry later"
            )
            served.worker.stats.record_error(ErrorCode.BUSY.value)
            for w in self.ledger.finish(ledger_key, waiter, reply, cache=False):
                self._publish_reply(w, reply)
        return True

    def _flush(self) -> None:
        """After each burst of reads: run what the fast models kept back, a batch each."""
        self.models.flush()

    # -- sources (their own threads) --------------------------------------------------------

    def infer_local(
        self, model: str, payload: bytes, content_type: str, timeout: float
    ) -> Mapping[str, Any]:
        """The reply ``model`` gives ``payload`` (a source's snapshot), taken the way a device's
        request is: its pre-processing, its worker's queue, its post-processing. An error reply
        when it cannot run, ``expired`` when no result comes within ``timeout`` seconds."""
        served = self.models.get(model)
        try:
            if served is None or self._stopping.is_set():
                raise ProtocolError(ErrorCode.NO_MODEL, f"model '{model}' is not served now")
            if len(payload) > self.config.max_payload:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"{len(payload)} bytes; the limit is {self.config.max_payload}",
                )
            message = Message("", payload, 0, False, 0, content_type=content_type)
            request, transform = served.decode(message, model, None, self.config.max_elements)
        except ProtocolError as exc:
            return dict(json.loads(error_reply(None, exc.code, exc.message)))
        replies: list[bytes] = []
        answered = threading.Event()

        def deliver(reply: bytes) -> None:
            replies.append(reply)
            answered.set()

        received = time.monotonic()
        waiter = _LocalWaiter("", None, 0, deliver)
        deadline = received + timeout
        job = Job(None, None, waiter, request.inputs, received, deadline, True, transform=transform)
        served.worker.stats.record_request()
        with self.models.swap:
            # swapped since: the new version runs it (same inputs; a reload keeps the IO)
            served = self.models.served.get(model, served)
            taken = served.worker.offer(job)  # not deferred: this is not the network thread
        if not taken:
            served.worker.stats.record_error(ErrorCode.BUSY.value)
            return dict(json.loads(error_reply(None, ErrorCode.BUSY, f"{model}'s queue is full")))
        if not answered.wait(timeout):
            message_text = f"no result from {model} within {timeout:g} s"
            return dict(json.loads(error_reply(None, ErrorCode.EXPIRED, message_text)))
        return dict(json.loads(replies[0]))

    def _event(self, topic: str, payload: bytes) -> None:
        self.connection.publish(topic, payload, qos=0)

    def _under(self, topic: str, key: str) -> bool:
        return self.topics.reply_allowed(topic) and self.topics.reply_device(topic) == key

    def _reply_error(
        self,
        candidates: list[str | None],
        message: Message,
        request_id: str | None,
        error: ProtocolError,
        qos: int,
    ) -> None:
        """Answer an error at the first allowed topic among ``candidates``, if any."""
        topic = next((t for t in candidates if t and self.topics.reply_allowed(t)), None)
        if topic is None:
            log.warning(
                "%s on %s (no reply topic to tell): %s",
                error.code.value,
                message.topic,
                error.message,
            )
            return
        reply = error_reply(request_id, error.code, error.message)
        self._publish_reply(Waiter(topic, message.correlation, qos), reply)


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
