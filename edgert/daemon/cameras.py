"""Video sources: a camera's stream (RTSP, MJPEG or HLS over HTTP, a local file) decoded with
PyAV on a thread of its own, sampled at the source's ``fps``, gated by motion, and fed to its
model; Home Assistant gets the per-label counts of the last frame and an annotated snapshot.

Decoding blocks (FFmpeg reads the socket itself), so each stream has a thread; the frames it
lets through go to the event loop with :meth:`EventLoopThread.call`, where the source's task
keeps only the latest one and runs the model on it off the loop. A stream that drops (or never
opens, or is not what the config allows) is retried with capped, doubling backoff; every read
has a timeout, so no thread waits on a silent camera for ever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgert.daemon.motion import MotionGate
from edgert.daemon.snapshots import annotate, counts, jpeg
from edgert.daemon.sources import Infer, Publish, Source
from edgert.sourcesettings import SourceConfig, redact_url
from edgert.transport import EventLoopThread

__all__ = ["StreamError", "StreamStats", "VideoSource", "read_stream"]

log = logging.getLogger("edgert.daemon.sources")

Deliver = Callable[[np.ndarray, float], None]  # (RGB frame, monotonic time) on the reader thread


class StreamError(Exception):
    """A stream that cannot be read now, in words for the log and the stats."""


class StreamStats:
    """A stream's state and counters (written by its reader thread, read for the stats)."""

    def __init__(self) -> None:
        self.state = "connecting"  # connecting, connected, failed (retrying), stopped
        self.last_error: str | None = None
        self.decoded = 0  # frames decoded
        self.sampled = 0  # frames taken at the source's fps
        self.gated = 0  # sampled frames the motion gate held back
        self.reconnects = 0
        self.frame_at = float("-inf")  # monotonic time of the last frame decoded
        self._rate_at = (time.monotonic(), 0)

    def fps(self) -> float:
        """Frames decoded per second since the last call."""
        now, decoded = time.monotonic(), self.decoded
        (then, before), self._rate_at = self._rate_at, (now, decoded)
        return round((decoded - before) / (now - then), 2) if now > then else 0.0


def _options(config: SourceConfig) -> dict[str, str]:
    scheme = urlsplit(config.url or "").scheme
    if scheme in ("rtsp", "rtsps"):
        # How packets come. No rtsp "timeout" option: PyAV's own timeout interrupts every
        # blocking call (the handshake, each read), and says so in words (ExitError).
        return {"rtsp_transport": config.transport}
    if scheme in ("http", "https"):
        return {"reconnect": "0"}  # the source reconnects, with its own backoff
    return {}


def _reason(exc: BaseException, timeout: float, waited: float, url: str) -> str:
    """An FFmpeg or socket failure in the words a user needs (``waited``: seconds since the
    call began, or since the last frame), never with the URL's password."""
    import av

    # PyAV's timeout interrupts FFmpeg's blocking call, which some demuxers (rtsp) then report
    # as invalid data: a failure that took the whole timeout is the camera's silence.
    if isinstance(exc, av.ExitError) or waited >= timeout:
        return f"no answer within {timeout:g} s"
    errno = getattr(exc, "errno", None)
    if isinstance(exc, ConnectionError) and errno:
        return f"cannot connect: {os.strerror(errno)}"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).replace(url, redact_url(url))


def read_stream(
    config: SourceConfig,
    stats: StreamStats,
    gate: MotionGate,
    deliver: Deliver,
    stopping: threading.Event,
    pace: bool,
) -> None:
    """Open the stream once and decode it until ``stopping`` or its end (a file's end returns;
    a network stream's raises): each frame at the source's ``fps`` through ``gate``, the ones
    it lets by to ``deliver``. StreamError for anything that ends it early. ``pace``: a file
    is read at its own frame rate, as a camera sends (else as fast as it decodes)."""
    import av

    url = config.url or ""
    where = redact_url(url)
    path = urlsplit(url).path if url.startswith("file:") else url
    began = time.monotonic()
    try:
        container = av.open(
            path, options=_options(config), timeout=(config.timeout, config.timeout)
        )
    except (av.FFmpegError, OSError, ValueError) as exc:
        waited = time.monotonic() - began
        raise StreamError(f"{where}: {_reason(exc, config.timeout, waited, url)}") from exc
    decoded = stats.decoded
    try:
        if not container.streams.video:
            kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["nothing"]
            raise StreamError(f"{where}: no video stream (it holds {', '.join(kinds)})")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_size(where, width, height, config)
        log.info("source %s: %s: %dx%d %s", config.name, where, width, height, stream.codec.name)
        stats.state = "connected"
        gate.reset()  # a new stream's first frame is compared with nothing
        _decode(container, stream, config, stats, gate, deliver, stopping, pace)
    except (av.FFmpegError, OSError, ValueError) as exc:
        waited = time.monotonic() - max(began, stats.frame_at)
        raise StreamError(f"{where}: {_reason(exc, config.timeout, waited, url)}") from exc
    finally:
        container.close()
    if stopping.is_set():
        return
    if stats.decoded == decoded:  # a file of no frames must not be replayed in a busy loop
        raise StreamError(f"{where}: no frames")
    if not url.startswith("file:"):
        raise StreamError(f"{where}: the stream ended")


def _check_size(where: str, width: int, height: int, config: SourceConfig) -> None:
    if width * height > config.max_pixels:
        raise StreamError(
            f"{where}: {width}x{height} is over max_pixels ({config.max_pixels}); use the "
            "camera's sub-stream, or raise max_pixels"
        )


def _decode(
    container: Any,
    stream: Any,
    config: SourceConfig,
    stats: StreamStats,
    gate: MotionGate,
    deliver: Deliver,
    stopping: threading.Event,
    pace: bool,
) -> None:
    period = 1.0 / config.fps
    next_at: float | None = None  # stream time of the next frame to sample
    started: tuple[float, float] | None = None  # (stream time, monotonic) of the first frame
    checked = False
    count = 0  # this stream's frames: a frame without a time is placed by it
    for frame in container.decode(stream):
        if stopping.is_set():
            return
        count += 1
        stats.decoded += 1
        stats.frame_at = time.monotonic()
        if not checked:  # a stream that did not say its size when opened
            _check_size(redact_url(config.url or ""), frame.width, frame.height, config)
            checked = True
        now = time.monotonic()
        at = frame.time if frame.time is not None else count * period
        if started is None:
            started = (at, now)
        if pace and (ahead := (at - started[0]) - (now - started[1])) > 0 and stopping.wait(ahead):
            return
        if next_at is not None and next_at - period <= at + 0.001 < next_at:
            continue  # between two samples
        if next_at is None or abs(at - next_at) > period:
            # The first frame, or the stream's clock jumped (either way: a camera that restarted
            # its encoder starts again at 0): the samples' cadence starts here.
            next_at = at + period
        else:
            next_at += period
        stats.sampled += 1
        width = config.motion.width
        height = max(1, round(width * frame.height / frame.width))
        grey = frame.reformat(width=width, height=height, format="gray").to_ndarray()
        if not gate.opens(grey, time.monotonic()):
            stats.gated += 1
            continue
        deliver(frame.to_ndarray(format="rgb24"), time.monotonic())


class VideoSource(Source):
    """One video source: its reader thread, and its task on the loop that runs the model on
    the latest frame the gate let by, announces what it found, and publishes the counts and
    the snapshot."""

    resumed = "decoding"

    def __init__(
        self,
        config: SourceConfig,
        topics: tuple[str, str, str],  # events, counts, snapshot
        infer: Infer,
        publish: Publish,
        retain: Publish,
        loop: EventLoopThread,
        labels: tuple[str, ...],
    ) -> None:
        super().__init__(config, topics[0], infer, publish, loop)
        self.counts_topic, self.snapshot_topic = topics[1], topics[2]
        self._retain = retain
        self.labels = labels
        self.stream = StreamStats()
        self.gate = MotionGate(config.motion)
        self._stop_reading = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"video-{config.name}", daemon=True)
        self._latest: tuple[np.ndarray, float] | None = None
        self._snapshot_at = float("-inf")
        self.inferred = 0
        self.dropped = 0  # frames the gate let by that a newer one replaced before the model

    def start(self) -> None:
        self._loop.spawn(self._run())
        self._reader.start()

    def stop(self) -> None:
        self._stop_reading.set()
        super().stop()

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        super().join(timeout)
        self._reader.join(max(0.0, end - time.monotonic()))

    def snapshot(self) -> dict[str, Any]:
        stream = self.stream
        return {
            "state": stream.state,
            "fps": stream.fps(),
            "last_error": stream.last_error,
            "decoded": stream.decoded,
            "sampled": stream.sampled,
            "gated": stream.gated,
            "inferred": self.inferred,
            "dropped": self.dropped,
            "events": self.events,
            "failures": self.failures,
            "reconnects": stream.reconnects,
        }

    # -- the reader thread ----------------------------------------------------------------

    def _read(self) -> None:
        config, stream = self.config, self.stream
        delay = config.reconnect_min
        pace = (config.url or "").startswith("file:")
        while not self._stop_reading.is_set():
            decoded = stream.decoded
            try:
                read_stream(config, stream, self.gate, self._deliver, self._stop_reading, pace)
            except StreamError as exc:
                stream.state, stream.last_error = "failed", str(exc)
                self._loop.call(self._failed, str(exc))
            except Exception:  # a bug must not end the stream's thread silently
                log.exception("source %s: reading the stream failed", config.name)
                stream.state = "failed"
            if stream.decoded > decoded:  # it was up: the next drop starts the backoff again
                delay = config.reconnect_min
            if stream.state != "failed":
                continue  # a file's end: it plays again
            if self._stop_reading.wait(delay):
                break
            stream.reconnects += 1
            stream.state = "connecting"
            delay = min(delay * 2, config.reconnect_max)
        stream.state = "stopped"

    def _deliver(self, frame: np.ndarray, at: float) -> None:
        self._loop.call(self._offer, frame, at)

    # -- the loop's side ------------------------------------------------------------------

    def _offer(self, frame: np.ndarray, at: float) -> None:
        if self._latest is not None:
            self.dropped += 1
        self._latest = (frame, at)
        self._set_wake()

    async def _run(self) -> None:
        self._wake = wake = asyncio.Event()
        if self._latest is not None:
            wake.set()
        try:
            while not self._stopping:
                await wake.wait()
                wake.clear()
                taken, self._latest = self._latest, None
                if taken is None or self._stopping:
                    continue
                try:
                    await self._infer_frame(taken[0])
                except Exception:  # a bug must not end the source silently
                    log.exception("source %s: a frame failed", self.config.name)
        finally:
            self._done.set()

    async def _infer_frame(self, frame: np.ndarray) -> None:
        config = self.config
        now = time.monotonic()
        due = config.snapshot_interval > 0 and now - self._snapshot_at >= config.snapshot_interval
        reply, found, picture = await asyncio.get_running_loop().run_in_executor(
            None, self._run_model, frame, due
        )
        if not reply.get("ok"):
            error = reply.get("error") or {}
            self._failed(f"{config.model}: {error.get('code')}: {error.get('message')}")
            return
        if self._stopping:
            return
        self.inferred += 1
        self._recovered()
        self._retain(self.counts_topic, json.dumps(found, separators=(",", ":")).encode())
        if picture is not None:
            self._snapshot_at = now
            self._retain(self.snapshot_topic, picture)
        self.announce(reply.get("result"))

    def _run_model(
        self, frame: np.ndarray, due: bool
    ) -> tuple[Mapping[str, Any], dict[str, int], bytes | None]:
        """On a worker thread: the frame as JPEG through the model (as a device's snapshot
        would go), the count of each label, and the annotated snapshot when one is due (the
        first, then one showing something)."""
        config = self.config
        reply = self._infer(config.model, jpeg(frame), "image/jpeg", config.timeout)
        if not reply.get("ok"):
            return reply, {}, None
        result = reply.get("result")
        found = counts(result, self.labels, config.min_score)
        first = self._snapshot_at == float("-inf")
        picture = None
        if due and (first or any(found.values())):
            picture = annotate(frame, result, config.min_score)
        return reply, found, picture
