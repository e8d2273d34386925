"""The serving daemon: load models, connect, take requests, answer them, drain on SIGTERM.

The network thread (the transport's event loop) decodes and hands off to each model's worker
(a bounded queue, a batcher, one thread per instance). A model whose runs take under a
millisecond is answered on the network thread itself while nothing is queued for it: there, a
hand-off costs more than the inference. The service owns the lifecycle, the catalogue and the
stats, and wires the stages: taking requests is :class:`~edgert.daemon.requests.Requests`' work
(intake, admission), publishing replies :class:`~edgert.daemon.replies.Replies`', which models
are served (swapping, retiring, building them) :class:`~edgert.daemon.models.Models`', and the
side channels that see every result subscribe to one
:class:`~edgert.daemon.observers.ResultHook`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from edgert.daemon.catalogue import model_labels, model_states
from edgert.daemon.counts import ReplyCounts
from edgert.daemon.discovery import ModelEntity, SourceEntity
from edgert.daemon.health import Health
from edgert.daemon.holding import HeldRequests
from edgert.daemon.homeassistant import HomeAssistant
from edgert.daemon.host import notify_systemd, release_freed_memory
from edgert.daemon.intake import UNSERVED
from edgert.daemon.ledger import RequestLedger
from edgert.daemon.models import Models, model_name
from edgert.daemon.observers import EventsTopic, ResultHook
from edgert.daemon.pool import Pool, check_pool
from edgert.daemon.replies import Replies
from edgert.daemon.requests import Requests
from edgert.daemon.sources import Sources
from edgert.daemon.stats import Rates
from edgert.errors import ArtifactError, EdgertError, IncompatibleArtifact
from edgert.protocol import (
    Topics,
    catalogue,
    default_node_id,
    sanitize_node_id,
)
from edgert.repository import ModelDir, Repository
from edgert.runtime import open_model
from edgert.settings import DaemonConfig
from edgert.sourcesettings import is_video
from edgert.transport import AFTER_REPLY, Message, MqttTransport

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
        check_pool(config)
        self.ledger = RequestLedger(config.reply_cache)
        self.fatal: str | None = None  # why the daemon stopped itself (exit non-zero)
        self.pool = Pool(self.topics) if config.share_group else None
        self._stopping = threading.Event()
        self._reload = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self.connection = self._transport()
        # The sources' HTTP pulls run on the transport's event loop, beside MQTT.
        self._sources = Sources(
            config.sources,
            self.topics.events,
            self.infer_local,
            self._event,
            config.max_payload,
            loop=self.connection.loop,
            topics=self.topics,  # a video source's counts and snapshot topics
            retain=self.connection.publish_retained,
            labels=self._labels,
        )
        counts = ReplyCounts()  # every reply, by outcome: read by /metrics
        self.replies = Replies(
            config,
            self.topics,
            self.connection,
            counts,
            lambda name: model_labels(self.models, name),  # Models is made below
        )
        self.observers = self._result_hook()
        self.models = self._models()
        self.requests = Requests(
            config,
            self.topics,
            self.ledger,
            self.models,
            self.replies,
            self._stopping,
            self.pool,
        )
        self.health = Health(config, self.models, counts, self.connection)
        self.homeassistant = (
            HomeAssistant(self.node, self.topics, self.connection, self._entities)
            if config.homeassistant
            else None
        )

    def _transport(self) -> MqttTransport:
        broker = self.config.broker
        if not broker.client_id:
            broker = replace(broker, client_id=f"edgert-{self.node}")
        return MqttTransport(
            broker,
            will=(self.topics.status, b"offline"),
            on_message=self._on_message,
            on_connect=lambda: self.health.changed(),
            after_read=self._flush,
            on_refused=self._refused,
        )

    def _result_hook(self) -> ResultHook:
        """What observes every result: the events topic, and the sources fed by a stream."""
        hook = ResultHook()
        if self.config.events:  # every result on the events topic (Home Assistant reads it)
            hook.subscribe(EventsTopic(self.connection, self.topics))
        if any(s.stream is not None for s in self.config.sources):  # fed by a device's stream
            hook.subscribe(self._sources.on_result)
        return hook

    def _models(self) -> Models:
        config = self.config
        return Models(
            config,
            self.ledger,
            self.connection,
            self.topics,
            self._stopping,
            publish_reply=self.replies.publish,
            observers=self.observers,
            on_built=self._built,
            held=HeldRequests(config.hold_while_loading, config.queue_size),
            replay=lambda held: self.requests.replay(held),
            on_progress=lambda: self._publish_catalogue(discovery=False),
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load what is compiled, connect, announce; start builds for the rest in children.

        Models still to build are ``loading`` in the catalogue from the first publish, and
        their requests are held, so a device that sends when it sees ``online`` is answered."""
        self.health.bind()  # an HTTP address in use: stop now, before announcing anything
        repository = Repository(self.config.repository)
        configured = self._configured(repository)
        for model in configured:
            model.config  # noqa: B018 - a broken model.toml refuses to start, in one line
        pending: list[ModelDir] = []
        for model in configured:
            try:
                loaded = open_model(model, self.config.backend)
                self.models.serve(model, loaded)
                if self.models.wants_engine(loaded):  # an interim: building from the first
                    self.models.start_build(model)  # catalogue on
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
        for model in pending:
            self.models.loading(model)
        self._subscribe()
        # The catalogue before `online`: a device that sees `online` finds every model's state.
        self._publish_catalogue()
        self.connection.publish_retained(self.topics.status, b"online")
        self.connection.start()
        self.health.start(self.connection.loop)  # READY=1 once connected, every model settled
        self._sources.start(list(self.models.served), [model_name(m) for m in pending])
        for model in pending:
            self.models.start_build(model)
        self._stats_thread = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        self._stats_thread.start()
        release_freed_memory()
        log.info(
            "serving %s as node %s on %s:%d",
            ", ".join(self.models.served) or "no models yet",
            self.node,
            self.config.broker.host,
            self.config.broker.port,
        )

    def _subscribe(self) -> None:
        """What the daemon listens to (made on connect, again on every reconnect).

        Pinned requests for any model, and every pooled request: a single daemon takes them all
        (one subscription), so a model it does not serve is answered ``no_model``. In a pool,
        each model has a shared subscription of its own (see Models), and the unserved group
        gives one node each request too, to answer for a model no node lists."""
        self.connection.subscribe(self.topics.node_infer(), self.config.qos)
        if self.pool is None:
            self.connection.subscribe(self.topics.all_infer(), self.config.qos)
        else:
            for topic in self.pool.subscriptions:  # their retained state first
                self.connection.subscribe(topic, 1)
            self.connection.subscribe(
                self.topics.unserved_infer(), self.config.qos, identifier=UNSERVED
            )
        if self.homeassistant is not None:
            self.homeassistant.subscribe()
        for trigger in self._sources.triggers:
            self.connection.subscribe(trigger, 0)

    def wait(self) -> None:
        """Block until :meth:`request_stop` (SIGTERM/SIGINT); reload on :meth:`request_reload`."""
        while not self._stopping.wait(0.1):
            self.requests.expire_held()
            self.connection.ack_overdue()
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
        release_freed_memory()

    def _configured(self, repository: Repository) -> list[ModelDir]:
        """The repository's models, or those the config names."""
        if self.config.models:
            return [repository.model(name) for name in self.config.models]
        return repository.models()

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking requests, answer what was taken, publish offline, disconnect."""
        self._stopping.set()
        notify_systemd("STOPPING=1")
        self._sources.stop()  # no new pulls; then what was taken is answered
        self.models.end_builds()
        self.requests.expire_held(everything=True)  # held for a model not ready: `loading`
        served = self.models.entries()
        for entry in served:
            if not entry.worker.drain(drain_timeout):
                log.warning("%s: drain timed out", entry.worker.name)
        self.connection.publish_retained(self.topics.status, b"offline")
        time.sleep(0.2)  # let the network thread flush the replies and offline
        self.connection.ack_overdue(everything=True)  # what was answered is not redelivered
        time.sleep(0.05)
        self.health.stop(self.connection.loop)
        self.connection.stop()
        for entry in served:
            entry.worker.stop()
        log.info("stopped")

    def _built(self, name: str, ok: bool) -> None:
        if ok:
            self._sources.model_served(name, list(self.models.served))
        self._publish_catalogue()

    def _refused(self, topic: str, reason: str) -> None:
        """The broker refused a subscription (network thread). A model's own: that model is
        ``failed``. Any other request subscription: this daemon cannot answer, so it stops."""
        name = self.models.model_of(topic)
        if name is not None:
            why = f"the broker refused the subscription to {topic}: {reason}"
            # Off the network thread: retiring drains what the model took.
            threading.Thread(target=self._drop, args=(name, why), name="refused").start()
            return
        requests = {self.topics.node_infer(), self.topics.all_infer()}
        if self.pool is not None:  # without the others' catalogues it would answer for them
            requests |= {self.topics.unserved_infer(), *self.pool.subscriptions}
        if topic in requests:
            self.fatal = (
                f"the broker refused the subscription to {topic} ({reason}): requests would go "
                "unanswered; let the daemon's user subscribe it (the broker's ACL)"
            )
            log.error("%s; stopping", self.fatal)
            self.request_stop()

    # -- catalogue, Home Assistant and stats ----------------------------------------------

    def _drop(self, name: str, why: str) -> None:
        """Stop serving ``name``, which cannot get its requests, and say why."""
        self.models.retire(name)
        self.models.fail(name, why)
        self._publish_catalogue()

    def _publish_catalogue(self, *, discovery: bool = True) -> None:
        """Every repository model with its state; re-published on every change (a build's
        progress too, without Home Assistant's discovery, which it does not change)."""
        payload = catalogue(self.node, model_states(self.models))
        self.connection.publish_retained(self.topics.models, payload)
        self.health.changed()
        if discovery and self.homeassistant is not None:
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
                video=is_video(s),
            )
            for s in self.config.sources
            if s.model in configs
        ]
        return models, sources

    def _labels(self, model: str) -> tuple[str, ...]:
        with self.models.lock:
            entry = self.models.served.get(model)
            return entry.worker.loaded.config.labels if entry is not None else ()

    def _stats_loop(self) -> None:
        rates = Rates()
        while not self._stopping.wait(self.config.stats_interval):
            with self.models.lock:
                models = {
                    name: entry.worker.stats.snapshot(entry.worker.depth)
                    for name, entry in self.models.served.items()
                }
            payload = rates.node_stats(self.node, models, self.ledger)
            if self._sources.configs:
                payload["sources"] = self._sources.snapshot()
            self.connection.publish(self.topics.stats, json.dumps(payload).encode(), qos=0)

    # -- requests (network thread) ----------------------------------------------------------

    def _on_message(self, message: Message) -> bool | int:
        """Take a request, or answer it with an error. False leaves it unacknowledged."""
        if self.homeassistant is not None and self.homeassistant.on_message(
            message.topic, message.payload
        ):
            return True
        if self.pool is not None and self.pool.on_message(message.topic, message.payload):
            return True
        if self._stopping.is_set():
            return False  # not taken: the broker redelivers it to our next session
        if self.requests.on_message(message):
            return AFTER_REPLY  # acknowledged once the broker has its reply (edgert.acks)
        self._sources.on_message(message.topic)  # a source's trigger, maybe
        return True

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
