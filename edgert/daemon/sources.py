"""Sources: cameras named in the daemon config (``[[sources]]``) that the daemon pulls a snapshot
from, on an interval or when a trigger topic fires, and feeds to a served model. Results that
pass the source's label filter, minimum score and debounce become events on
``<prefix>/node/<node>/events/<source>``.

Each source is a task on the event loop that owns the daemon's network I/O (the transport's):
the HTTP pull is that loop's (aiohttp), and the wait for the model's result happens on a worker
thread, so a slow camera or model never holds up MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edgert.settings import SourceConfig, redact_url
from edgert.sourcesettings import is_video
from edgert.topics import Topics, topic_matches
from edgert.transport import EventLoopThread

if TYPE_CHECKING:  # aiohttp is imported where a pull needs it: see Source._run
    import aiohttp

if TYPE_CHECKING:  # an annotation only: sources load without the serving core
    from edgert.daemon.observers import Observed

__all__ = ["Infer", "Publish", "Source", "Sources", "announcements"]

log = logging.getLogger("edgert.daemon.sources")

# (model, image bytes, content type, timeout s) -> the model's reply, as a device would get it.
Infer = Callable[[str, bytes, str, float], Mapping[str, Any]]
Publish = Callable[[str, bytes], None]  # (topic, payload): QoS 0, not retained
LOG_EVERY_S = 60.0  # a failing source logs its first failure, then one summary this often
_IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"))


class SourceError(Exception):
    """A pull or an inference that failed; logged (rate-limited) and counted, never raised on."""


def announcements(
    result: Any, labels: Sequence[str] | None, min_score: float, model: str
) -> list[tuple[str, float]]:
    """The ``(event_type, score)`` pairs a post-processed result announces: for top-k its best
    entry, for a threshold its state when true (named by its label, else the model), for
    detections the best of each label; each within ``labels`` (if given) and at ``min_score``."""
    if isinstance(result, dict):  # threshold: {"state", "score"}
        found = [(str(result.get("label") or model), result)] if result.get("state") else []
    elif isinstance(result, list) and result and isinstance(result[0], dict):
        entries = [e for e in result if isinstance(e, dict) and "label" in e]
        if "box" not in result[0]:  # top-k: the best entry only
            entries = sorted(entries, key=lambda e: -float(e.get("score", 0)))[:1]
        found = [(str(e["label"]), e) for e in entries]
    else:
        return []
    best: dict[str, float] = {}
    for label, entry in found:
        score = float(entry.get("score", 0.0))
        if (labels is None or label in labels) and score >= min_score:
            best[label] = max(score, best.get(label, score))
    return sorted(best.items(), key=lambda item: -item[1])


class Source:
    """One source's task on ``loop``: pull, infer, announce; until :meth:`stop`."""

    resumed = "pulling"  # what the log says it does again once a failure is over

    def __init__(
        self,
        config: SourceConfig,
        topic: str,
        infer: Infer,
        publish: Publish,
        loop: EventLoopThread,
        max_bytes: int = 1 << 20,
    ) -> None:
        self.config = config
        self.max_bytes = max_bytes
        self.topic = topic
        self._infer = infer
        self._publish = publish
        self._loop = loop
        self._wake: asyncio.Event | None = None  # the loop's; made there
        self._stopping = False
        self._done = threading.Event()
        self._announced: dict[str, float] = {}  # label -> monotonic time of its last event
        self._failing_since_log = 0  # failures not yet logged
        self._last_log = float("-inf")
        self.pulls = 0
        self.failures = 0
        self.events = 0

    def start(self) -> None:
        self._loop.spawn(self._run())

    def trigger(self) -> None:
        """Pull once, now (called on the loop's thread: only wakes the source's task)."""
        self._loop.call(self._set_wake)

    def stop(self) -> None:
        """No pulls after this; a pull in progress ends at its HTTP timeout at worst."""
        self._stopping = True
        self._loop.call(self._set_wake)

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def join(self, timeout: float) -> None:
        self._done.wait(timeout)

    def snapshot(self) -> dict[str, Any]:
        return {"pulls": self.pulls, "failures": self.failures, "events": self.events}

    async def _run(self) -> None:
        # Imported here: a daemon without pulled sources never loads it (resident memory).
        import aiohttp

        self._wake = wake = asyncio.Event()
        interval = self.config.interval
        next_at: float | None = time.monotonic() if interval > 0 else None
        try:
            async with aiohttp.ClientSession() as session:
                while not self._stopping:
                    wait = None if next_at is None else max(0.0, next_at - time.monotonic())
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), wait)
                    if self._stopping:
                        return
                    wake.clear()
                    try:
                        await self.pull_once(session)
                    except Exception:  # a bug must not end the source silently
                        log.exception("source %s: pull failed", self.config.name)
                    if interval > 0:
                        next_at = time.monotonic() + interval
        finally:
            self._done.set()

    async def pull_once(self, session: aiohttp.ClientSession) -> None:
        """Fetch the snapshot, run the model on it (off the loop), announce what passes."""
        self.pulls += 1
        config = self.config
        try:
            image, content_type = await self._fetch(session)
            if self._stopping:
                return
            reply = await asyncio.get_running_loop().run_in_executor(
                None, self._infer, config.model, image, content_type, config.timeout
            )
            if not reply.get("ok"):
                error = reply.get("error") or {}
                raise SourceError(f"{config.model}: {error.get('code')}: {error.get('message')}")
        except SourceError as exc:
            self._failed(str(exc))
            return
        self._recovered()
        self.announce(reply.get("result"))

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[bytes, str]:
        """The snapshot and its type; a camera's credentials in the URL go as basic auth."""
        import aiohttp

        url = self.config.url or ""  # a pulled source has one (settings check it)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with session.get(url, timeout=timeout) as response:
                if response.status >= 400:
                    raise SourceError(f"{redact_url(url)} answered HTTP {response.status}")
                body = await _read_at_most(response.content, self.max_bytes + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise SourceError(f"{redact_url(url)}: {_reason(exc)}") from exc
        if len(body) > self.max_bytes:  # e.g. an MJPEG stream's URL, not a snapshot's
            raise SourceError(f"{redact_url(url)} sent over {self.max_bytes} bytes")
        for magic, content_type in _IMAGE_TYPES:
            if body.startswith(magic):
                return body, content_type
        raise SourceError(f"{redact_url(url)} sent {len(body)} bytes that are not JPEG/PNG")

    def announce(self, result: Any) -> None:
        """Publish what ``result`` holds that passes this source's filters and debounce."""
        config = self.config
        now = time.monotonic()
        for label, score in announcements(result, config.labels, config.min_score, config.model):
            last = self._announced.get(label)
            if last is not None and now - last < config.debounce:
                continue
            self._announced[label] = now
            event = {
                "source": config.name,
                "model": config.model,
                "event_type": label,
                "score": score,
                "result": result,
                "at": round(time.time(), 3),
            }
            if self._stopping:
                return
            self._publish(self.topic, json.dumps(event, separators=(",", ":")).encode())
            self.events += 1

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self._failing_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            more = self._failing_since_log - 1
            log.warning(
                "source %s: %s%s",
                self.config.name,
                reason,
                f" ({more} more failure(s) since the last report)" if more else "",
            )
            self._failing_since_log = 0
            self._last_log = now

    def _recovered(self) -> None:
        if self._last_log > float("-inf"):
            log.info("source %s: %s again", self.config.name, self.resumed)
            self._failing_since_log = 0
            self._last_log = float("-inf")


class Sources:
    """The daemon's sources: started once their model is served, woken by trigger topics,
    stopped first on shutdown."""

    def __init__(
        self,
        configs: Iterable[SourceConfig],
        events_topic: Callable[[str], str],
        infer: Infer,
        publish: Publish,
        max_bytes: int = 1 << 20,
        *,
        loop: EventLoopThread,
        topics: Topics | None = None,
        retain: Publish | None = None,
        labels: Callable[[str], Sequence[str]] = lambda model: (),
    ) -> None:
        self.configs = tuple(configs)
        self._topics, self._retain, self._labels = topics, retain, labels  # video sources
        self._loop = loop
        self.max_bytes = max_bytes  # a snapshot's limit, as a device request's
        self._events_topic = events_topic
        self._infer = infer
        self._publish = publish
        self._lock = threading.Lock()
        self._running: dict[str, Source] = {}
        self._stopped = False

    @property
    def triggers(self) -> set[str]:
        """The trigger topic filters to subscribe to."""
        return {c.trigger for c in self.configs if c.trigger is not None}

    def start(self, served: Iterable[str], pending: Iterable[str] = ()) -> None:
        """Start the sources whose model is served; say which wait for a model being built and
        which are not started (their model is not served here)."""
        served, pending = set(served), set(pending)
        for model in sorted({c.model for c in self.configs} & served):
            self.model_served(model, served)
        for config in self.configs:
            if config.model in served:
                continue
            if config.model in pending:
                log.info("source %s: waits for %s, being compiled", config.name, config.model)
            else:
                log.error(
                    "source %s: not started: model '%s' is not served here; served: %s",
                    config.name,
                    config.model,
                    ", ".join(sorted(served)) or "none",
                )

    def model_served(self, model: str, served: Iterable[str] = ()) -> None:
        """Start the sources that feed ``model`` (now served)."""
        served = set(served) | {model}
        for config in self.configs:
            if config.model != model:
                continue
            if config.name in served:
                # One events topic per name: a source named like a model would mix their events.
                log.error("source %s: not started: a model has that name; rename it", config.name)
                continue
            self._warn_unknown_labels(config)
            with self._lock:
                if self._stopped or config.name in self._running:
                    continue
                source = self._source(config)
                self._running[config.name] = source
            if config.stream is not None:  # a device streams its own requests: no pulling
                log.info("source %s: stream %s of %s", config.name, config.stream, model)
                continue
            log.info(
                "source %s: %s → %s%s%s%s",
                config.name,
                redact_url(config.url or ""),
                model,
                f", every {config.interval:g} s" if config.interval > 0 else "",
                f", {config.fps:g} fps" if is_video(config) else "",
                f", on {config.trigger}" if config.trigger else "",
            )
            source.start()

    def _warn_unknown_labels(self, config: SourceConfig) -> None:
        """A source's ``labels`` that its model does not have would filter out every event."""
        known = self._labels(config.model)  # none: the model names its results, not a label
        if known and (unknown := [x for x in config.labels or () if x not in known]):
            log.warning(
                "source %s: labels %s are not labels of model %s (%s): they never become events",
                *(config.name, unknown, config.model, ", ".join(known)),
            )

    def _source(self, config: SourceConfig) -> Source:
        topic = self._events_topic(config.name)
        if not is_video(config):
            return Source(config, topic, self._infer, self._publish, self._loop, self.max_bytes)
        from edgert.daemon.cameras import VideoSource  # PyAV only where a stream is decoded

        assert self._topics is not None and self._retain is not None
        labels = tuple(config.labels or self._labels(config.model) or (config.model,))
        topics = (topic, self._topics.counts(config.name), self._topics.snapshot(config.name))
        retain, publish = self._retain, self._publish
        return VideoSource(config, topics, self._infer, publish, retain, self._loop, labels)

    def on_result(self, result: Observed) -> None:
        """A result (the result hook's observer): announced by the stream sources (a
        microphone, say) that name its model and the stream of its request."""
        if result.stream is None:
            return
        with self._lock:
            hit = [
                s
                for s in self._running.values()
                if s.config.stream == result.stream and s.config.model == result.model
            ]
        for source in hit:
            source.announce(result.summary)

    def on_message(self, topic: str) -> bool:
        """Wake the sources whose trigger matches ``topic``; whether any did."""
        with self._lock:
            hit = [s for s in self._running.values() if _triggered_by(s.config, topic)]
        for source in hit:
            source.trigger()
        return bool(hit) or any(_triggered_by(c, topic) for c in self.configs)

    def stop(self, timeout: float = 1.0) -> None:
        """No new pulls; wait briefly for pulls in progress (the loop ends the rest)."""
        with self._lock:
            self._stopped = True
            running = list(self._running.values())
        for source in running:
            source.stop()
        end = time.monotonic() + timeout
        for source in running:
            source.join(max(0.0, end - time.monotonic()))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Counters per running source, for the stats topic."""
        with self._lock:
            return {name: source.snapshot() for name, source in self._running.items()}


def _triggered_by(config: SourceConfig, topic: str) -> bool:
    return config.trigger is not None and topic_matches(config.trigger, topic)


def _reason(exc: BaseException) -> str:
    """What went wrong with a pull, in the operating system's words where it has them."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return f"cannot connect: {os.strerror(exc.os_error.errno)}"
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream``: a camera that never stops sending is cut off there."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
