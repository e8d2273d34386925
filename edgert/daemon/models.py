"""The models a daemon serves, and the changes to them: a model loaded with its worker, a new
version swapped in between two requests (hot reload), one retired, one compiled in a child
process (:mod:`edgert.daemon.builds`: a crash or out-of-memory abort there must not take the
daemon down). While a TensorRT engine builds, the model is served from its ONNX Runtime artifact
(the interim, ``[serve] interim_backend``), built first, and the engine swapped in once built."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from edgert.codec import InputsDecoder
from edgert.daemon.batcher import BatchPlan, BatchSettings
from edgert.daemon.builds import Builds, interim, measure_ms, target
from edgert.daemon.decoding import declared_format, request_specs
from edgert.daemon.holding import Held, HeldRequests
from edgert.daemon.ledger import RequestLedger
from edgert.daemon.observers import ResultHook
from edgert.daemon.served import Served, fingerprint
from edgert.daemon.stats import ModelStats
from edgert.daemon.streams import StreamPlan, StreamStates
from edgert.daemon.worker import ModelWorker, PublishFn
from edgert.errors import ArtifactError, EdgertError, IncompatibleArtifact
from edgert.pipeline import Postprocess, Preprocess
from edgert.protocol import Topics
from edgert.repository import Artifact, ModelDir
from edgert.runtime import LoadedModel, open_model
from edgert.settings import DaemonConfig
from edgert.transport import MqttTransport

__all__ = ["Models", "Served", "model_name"]

log = logging.getLogger("edgert.daemon")


class Models:
    """Which models are served, which failed (and why), and the builds running.

    ``served`` and ``failed`` are read under ``lock``. ``swap`` is held while a request is
    decoded and handed to a model's worker and while a model is swapped or retired, so no
    request goes to a worker after it was swapped out, and none is decoded by one version and
    taken by another (reentrant). ``observers`` sees every result (the events topic, sources)
    through each worker's ``events`` callback; ``on_built(model, ok)`` each child build's end
    (and an interim served); ``on_progress()`` a build's progress (``builds``), once a second.
    ``held`` says which models are loading (building, or being opened); what it held for a
    model is handed to ``replay`` once the model is served or has failed.
    In a pool, each model this node takes requests for (loading or served) has its own shared
    subscription; a single daemon takes every model's through one (:meth:`Topics.all_infer`).
    """

    def __init__(
        self,
        config: DaemonConfig,
        ledger: RequestLedger,
        connection: MqttTransport,
        topics: Topics,
        stopping: threading.Event,
        *,
        publish_reply: PublishFn,
        observers: ResultHook,
        on_built: Callable[[str, bool], None],
        held: HeldRequests,
        replay: Callable[[list[Held]], None],
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.served: dict[str, Served] = {}
        self.failed: dict[str, str] = {}
        self.lock = threading.Lock()
        self.swap = threading.RLock()
        self._ledger = ledger
        self._connection = connection
        self._topics = topics
        self._stopping = stopping
        self._publish_reply = publish_reply
        self._observers = observers
        self._on_built = on_built
        self.builds = Builds(stopping, on_progress)
        self._building: set[str] = set()  # models with a build thread (interim, then engine)
        self.held = held
        self._replay = replay
        self._pooled: dict[str, str] = {}  # shared subscription -> its model (pools only)

    def get(self, name: str) -> Served | None:
        with self.lock:
            return self.served.get(name)

    def entries(self) -> list[Served]:
        with self.lock:
            return list(self.served.values())

    def fail(self, model: ModelDir | str, reason: str) -> None:
        """Record why ``model`` is not served; what was held for it is answered now."""
        name = model if isinstance(model, str) else model_name(model)
        with self.lock:
            self.failed[name] = reason
            entry = self.served.get(name)
        log.error("%s: not served: %s", name, reason)
        if entry is None:
            self._unsubscribe(name)  # the pool's other nodes (or its unserved group) answer
        self._replay(self.held.finish(name))

    def loading(self, model: ModelDir) -> None:
        """``model`` is building or loading: its requests are held until it is ready."""
        name = model_name(model)
        with self.lock:
            self.failed.pop(name, None)
        self.held.start(name)
        self._subscribe(name)

    def model_of(self, subscription: str) -> str | None:
        """The model whose shared subscription ``subscription`` is, if it is one."""
        with self.lock:
            return self._pooled.get(subscription)

    def _subscribe(self, name: str) -> None:
        if self.config.share_group:
            topic = self._topics.pooled_infer(name)
            with self.lock:
                self._pooled[topic] = name
            self._connection.subscribe(topic, self.config.qos)

    def _unsubscribe(self, name: str) -> None:
        if self.config.share_group:
            topic = self._topics.pooled_infer(name)
            with self.lock:
                self._pooled.pop(topic, None)
            self._connection.unsubscribe(topic)

    def update(self, models: Sequence[ModelDir]) -> None:
        """Serve ``models`` as they are on disk now: a changed one is loaded beside the one
        serving and swapped in; one that fails to load keeps its old version serving (and says
        why in the log); new ones are served or compiled in a child; the rest are retired."""
        for model in models:
            name = model_name(model)
            with self.lock:
                current = self.served.get(name)
                building = name in self._building
            if building or (current is not None and current.fingerprint == fingerprint(model)):
                continue
            try:
                loaded = open_model(model, self.config.backend)
                self.serve(model, loaded)
                self.builds.forget(name)  # a failure of the version before
                if self.wants_engine(loaded):
                    self.start_build(model)
            except ArtifactError as exc:
                if current is not None:
                    log.error("%s: kept version %s: %s", name, current.version, exc.message)
                elif isinstance(exc, IncompatibleArtifact) and not self.config.rebuild_stale:
                    self.fail(model, f"{exc.message} (or serve with --rebuild-stale)")
                else:
                    self.start_build(model)
            except EdgertError as exc:
                if current is not None:
                    log.error("%s: kept version %s: %s", name, current.version, exc.message)
                else:
                    self.fail(model, exc.message)
        names = {model_name(model) for model in models}
        with self.lock:
            gone = [name for name in self.served if name not in names]
            for name in [n for n in self.failed if n not in names]:
                del self.failed[name]
        for name in gone:
            self.builds.forget(name)
            self.retire(name)

    def serve(self, model: ModelDir, loaded: LoadedModel) -> None:
        """Serve ``loaded`` (opened from ``model``), in place of a version serving now; an
        interim's latency is measured first (the catalogue says whether it is slow)."""
        measured_ms = measure_ms(loaded) if self._interim(loaded) else None
        if measured_ms is not None and measured_ms > self.config.interim_budget_ms:
            log.warning(
                "%s: %.1f ms a request on %s, over interim_budget_ms (%g); served all the same",
                loaded.config.name,
                measured_ms,
                loaded.artifact.manifest.key.backend,
                self.config.interim_budget_ms,
            )
        worker, loaded, streams = self._start_worker(model, loaded)
        specs = streams.request_specs(request_specs(loaded.runner.io, loaded.constants))
        pre = Preprocess.of(loaded.config, specs[0]) if len(specs) == 1 else None
        inputs = InputsDecoder(specs, loaded.runner.io)
        declared = declared_format(loaded.config, specs)
        entry = Served(model, worker, inputs, declared, pre, fingerprint(model), measured_ms)
        old = self._swap_in(loaded.config.name, entry)
        self._subscribe(loaded.config.name)
        self._replay(self.held.finish(loaded.config.name))
        if old is not None:
            log.info(
                "%s: version %s swapped in for %s", model_name(model), entry.version, old.version
            )
            self._retire_worker(old)
        key = loaded.artifact.manifest.key
        log.info(
            "%s %s: loaded (%s, %s, max batch %d, %d instance(s))",
            loaded.config.name,
            loaded.config.version,
            key.backend,
            key.precision,
            worker.plan.max_batch,
            len(worker.instances),
        )

    def _start_worker(
        self, model: ModelDir, loaded: LoadedModel
    ) -> tuple[ModelWorker, LoadedModel, StreamPlan]:
        """A started worker for ``loaded`` (reopened with its share of the cores where its batch
        settings ask), the model it runs, and the model's stream plan."""
        settings = BatchSettings.of(loaded.config)
        streams = StreamPlan.of(loaded.config, loaded.io)
        backend = loaded.artifact.manifest.key.backend  # an interim's, where config says auto
        if streams.stateful:  # a stream's requests run in order, on one runner
            settings = replace(settings, instances=1)
        threads = settings.threads_per_instance(os.cpu_count() or 1)
        if threads:  # reopen with its share of the cores
            loaded.close()
            loaded = open_model(model, backend, threads=threads)
        extra = [open_model(model, backend, threads=threads) for _ in range(settings.instances - 1)]
        worker = ModelWorker(
            loaded,
            self._ledger,
            self._publish_reply,
            ModelStats(),
            self.config.queue_size,
            plan=BatchPlan.for_model(loaded.io, loaded.constants, settings.max_batch),
            max_queue_delay_us=settings.max_queue_delay_us,
            extra_instances=extra,
            # No hook while nothing observes: a result then costs no call.
            events=self._observers.events_for(loaded.config.name)
            if self._observers.active
            else None,
            streams=StreamStates(streams, loaded.io) if streams.stateful else None,
            post=Postprocess.of(loaded.config, loaded.io),
            stream_rows=min(
                streams.max_rows(loaded.io, request_specs(loaded.io, loaded.constants)),
                settings.max_batch or 1 << 30,
            ),
            max_reply=self.config.max_payload,
        )
        worker.start()
        return worker, loaded, streams

    def _swap_in(self, name: str, entry: Served) -> Served | None:
        """Serve ``entry`` as ``name``; the entry it replaces, if any, after running what that one
        kept back from the last read."""
        with self.swap:
            with self.lock:
                old = self.served.get(name)
                self.served[name] = entry
                self.failed.pop(name, None)
            if old is not None:
                old.worker.flush()  # what it kept back from the last read runs on the old one
        return old

    def flush(self) -> None:
        """Run what each model's worker kept back from the last read (network thread)."""
        with self.swap:
            for entry in self.served.values():
                entry.worker.flush()

    def retire(self, name: str) -> None:
        """Stop serving ``name`` (its directory is gone): what it took is still answered."""
        self._unsubscribe(name)
        with self.swap:
            with self.lock:
                entry = self.served.pop(name, None)
            if entry is not None:
                entry.worker.flush()
        if entry is not None:
            log.info("%s: no longer in the repository; not served", name)
            self._retire_worker(entry)

    def start_build(self, model: ModelDir) -> None:
        """Compile ``model`` in a child process, then serve it (or record why not). While a
        TensorRT engine builds, the interim serves: opened, or compiled first if missing."""
        name = model_name(model)
        with self.lock:
            self._building.add(name)
            served = name in self.served
        if not served:
            self.loading(model)
        else:  # building as of now, for the catalogue
            self.builds.starting(name, self.config.backend)
            log.info("%s: building its engine; the interim serves meanwhile", name)
        threading.Thread(
            target=self._build_then_serve, args=(model,), name="build", daemon=True
        ).start()

    def end_builds(self) -> None:
        """Builds in progress die with the daemon, so none writes or holds the GPU after it."""
        self.builds.end_all()

    def wants_engine(self, loaded: LoadedModel) -> bool:
        """Whether ``loaded`` is an interim artifact served for want of its engine (under
        ``auto``, a daemon stopped during the build): build the engine, serving this meanwhile.
        Not one that auto built for ONNX Runtime because TensorRT cannot take it, nor one
        beside a stale engine unless ``rebuild_stale`` says so."""
        if not self._interim(loaded):
            return False
        wanted = target(self.config.backend)
        stale = [
            a.path.name
            for a in loaded.model.artifacts()
            if isinstance(a, Artifact) and a.manifest.key.backend == wanted
        ]
        if stale and not self.config.rebuild_stale:
            log.info(
                "%s: served on %s: its %s artifact %s is stale (serve with --rebuild-stale to "
                "rebuild it)",
                loaded.config.name,
                loaded.artifact.manifest.key.backend,
                wanted,
                stale[0],
            )
            return False
        return True

    def _interim(self, loaded: LoadedModel) -> bool:
        """Whether ``loaded`` is on the interim backend, which serves until the engine does."""
        manifest = loaded.artifact.manifest
        return (
            manifest.key.backend == interim(self.config)
            and manifest.key.backend != target(self.config.backend)
            and not manifest.fallback
        )

    def _retire_worker(self, entry: Served) -> None:
        if entry.worker.streams is not None and len(entry.worker.streams):
            log.warning("%s: open streams start again from their initial state", entry.worker.name)
        if not entry.worker.drain(30.0):
            log.warning("%s: the old version's drain timed out", entry.worker.name)
        entry.worker.stop()

    def _build_then_serve(self, model: ModelDir) -> None:
        name = model_name(model)
        try:
            if self._stopping.is_set():
                return
            interim_backend = interim(self.config)
            if interim_backend is not None and self.get(name) is None:
                self._serve_interim(model, interim_backend)
                if self._stopping.is_set():
                    return
            reason = self.builds.run(name, model, self.config.backend)
            if self._stopping.is_set():
                return  # stopped (and the build ended by stop()): neither fail nor serve
            if not reason:
                try:
                    self.serve(model, open_model(ModelDir(model.path), self.config.backend))
                except EdgertError as exc:
                    reason = f"built but not loaded: {exc.message}"
                    self.builds.fail(name, target(self.config.backend), reason)
            current = self.get(name)
            if reason and current is None:
                self.fail(model, f"build failed: {reason}")
            elif reason and current is not None:
                log.error("%s: build failed: %s; %s serves on", name, reason, current.backend)
            self._on_built(name, not reason)
        finally:
            with self.lock:
                self._building.discard(name)

    def _serve_interim(self, model: ModelDir, backend: str) -> None:
        """Serve ``model`` on ``backend`` (compiled now in FP32, the reference's own precision,
        if it has no artifact there yet); on failure, its requests stay held for the engine."""
        name = model_name(model)
        try:
            try:
                loaded = open_model(model, backend)
            except ArtifactError:
                reason = self.builds.run(name, model, backend, "fp32")
                if reason:
                    raise EdgertError(reason) from None
                loaded = open_model(ModelDir(model.path), backend)
        except EdgertError as exc:
            log.warning("%s: no interim on %s: %s", name, backend, exc.message)
            return
        self.builds.starting(name, self.config.backend)  # shown with the interim's first entry
        self.serve(model, loaded)
        log.info("%s: served on %s while its engine builds", name, backend)
        self._on_built(name, True)


def model_name(model: ModelDir) -> str:
    """The name requests use: model.toml's, else the directory's (if model.toml is broken)."""
    try:
        return model.config.name
    except EdgertError:
        return model.path.name
