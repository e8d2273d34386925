"""``[[sources]]`` in edgert.toml: the cameras and microphones the daemon feeds to its models
(re-exported by :mod:`edgert.settings`, which holds the rest of the file).

A source is one of three kinds: a camera the daemon pulls an HTTP snapshot from (``url``
``http(s)://``, on an ``interval`` or a ``trigger``), a video stream it decodes itself (``url``
``rtsp(s)://``, ``file://``, or ``http(s)://`` with ``video = true``: MJPEG or HLS), or a device
that streams its own requests (``stream``). Video streams are sampled at ``fps`` and pass a
motion gate (``[sources.motion]``) before the model sees a frame.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from msgspec import Meta

from edgert.errors import ConfigKeyError
from edgert.schema import Table, show
from edgert.topics import filter_ok

__all__ = ["VIDEO_SCHEMES", "MotionSection", "SourceConfig", "is_video", "redact_url"]

Seconds = Annotated[float, Meta(gt=0)]
Delay = Annotated[float, Meta(ge=0)]  # seconds; 0 = none
Fraction = Annotated[float, Meta(ge=0, le=1)]
VIDEO_SCHEMES = ("rtsp", "rtsps", "file")  # always video; http(s) is video with `video = true`
Point = Annotated[tuple[Fraction, Fraction], Meta(description="an [x, y] pair in 0..1")]
Polygon = Annotated[
    tuple[Point, ...], Meta(min_length=3, description="a polygon of at least 3 [x, y] points")
]


class MotionSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[sources.motion]``: the gate in front of a video source's model. Each sampled frame is
    compared with the one before on a small grey copy; the model runs when enough of it changed,
    and on a keep-alive frame every ``keepalive`` seconds whatever changed."""

    enabled: bool = True  # false: the model sees every sampled frame
    width: Annotated[int, Meta(ge=8, le=640)] = 96  # pixels across the grey copy
    threshold: Annotated[int, Meta(ge=1, le=255)] = 24  # grey levels a pixel must change by
    min_area: Fraction = 0.004  # fraction of the (unmasked) frame that must change
    keepalive: Delay = 10.0  # seconds; 0 = only on change
    # Ignored regions (a tree in the wind, a street): polygons of [x, y] points, as fractions
    # of the frame's width and height from its top left corner.
    mask: tuple[Polygon, ...] = ()


class SourceConfig(Table, forbid_unknown_fields=True, frozen=True):
    """One ``[[sources]]`` table: a camera the daemon pulls a snapshot from (``url``, on an
    interval or when a message arrives on ``trigger``), a video stream it decodes (``url``
    ``rtsp://``..., sampled at ``fps`` behind the motion gate), or a device that streams its own
    requests (``stream``: a microphone's stream id), feeding ``model``; results that pass
    ``labels`` and ``min_score`` become events on the source's own events topic."""

    name: Annotated[
        str,
        Meta(pattern=r"^[A-Za-z0-9_-]+$", description='a name of letters, digits, "_" or "-"'),
    ]  # a topic level
    model: Annotated[str, Meta(min_length=1)]
    # http(s):// answering with a JPEG or PNG; or a video stream: rtsp://, rtsps://, file://,
    # or http(s):// with video = true. Credentials in it are never logged or published.
    url: str | None = None
    stream: str | None = None  # or: the stream id whose results are this source's
    interval: Delay = 0.0  # seconds between pulls; 0 = only on trigger
    trigger: str | None = None  # MQTT topic filter: any message on it pulls once now
    labels: (
        Annotated[
            tuple[str, ...],
            Meta(min_length=1, description="a non-empty list of labels (none: every label)"),
        ]
        | None
    ) = None
    min_score: Annotated[float, Meta(ge=0, le=1)] = 0.5
    debounce: Delay = 0.0  # seconds the same label is not announced again
    timeout: Seconds = 5.0  # HTTP, or a stream's open and read, seconds
    video: bool = False  # an http(s):// url is an MJPEG or HLS stream, not a snapshot
    fps: Annotated[float, Meta(gt=0, le=60)] = 5.0  # video: frames per second sampled
    transport: Literal["tcp", "udp"] = "tcp"  # rtsp: how the camera sends its packets
    # video: a bigger stream is refused (use the camera's sub-stream); 1920 x 1080
    max_pixels: Annotated[int, Meta(ge=1)] = 2_073_600
    snapshot_interval: Delay = 10.0  # video: seconds between annotated snapshots; 0 = none
    reconnect_min: Seconds = 1.0  # video: a dropped stream's first retry, seconds; doubling
    reconnect_max: Seconds = 30.0  # video: up to this
    motion: MotionSection = MotionSection()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.url is None and self.stream is None:
            raise ConfigKeyError("url", "missing; give a url (a camera) or a stream (a microphone)")
        if self.url is not None and self.stream is not None:
            raise ConfigKeyError("stream", "a source has a url (a camera) or a stream, not both")
        if self.stream is not None:
            for key in ("interval", "trigger"):
                if getattr(self, key):
                    raise ConfigKeyError(key, "a stream source has no interval or trigger")
            return
        parts = urlsplit(self.url or "")
        if parts.scheme == "file" and parts.path:
            pass
        elif parts.scheme not in ("http", "https", "rtsp", "rtsps") or not parts.hostname:
            raise ConfigKeyError(
                "url",
                "expected an http(s)://, rtsp(s):// or file:// URL, got "
                f"{show(redact_url(self.url or ''))}",
            )
        if self.reconnect_min > self.reconnect_max:
            raise ConfigKeyError(
                "reconnect_min",
                f"must be at most reconnect_max ({self.reconnect_max:g}), got "
                f"{self.reconnect_min:g}",
            )
        if is_video(self):
            for key in ("interval", "trigger"):
                if getattr(self, key):
                    raise ConfigKeyError(key, "a video source is decoded all the time")
            return
        if self.trigger is not None and not filter_ok(self.trigger):
            raise ConfigKeyError(
                "trigger", f"expected an MQTT topic filter, got {show(self.trigger)}"
            )
        if self.interval <= 0 and self.trigger is None:
            raise ConfigKeyError(
                "interval", "give an interval (seconds) or a trigger topic, or both"
            )


def is_video(config: SourceConfig) -> bool:
    """Whether ``config`` is a stream the daemon decodes (not a snapshot it pulls)."""
    if config.url is None:
        return False
    return config.video or urlsplit(config.url).scheme in VIDEO_SCHEMES


def redact_url(url: str) -> str:
    """``url`` without its password (camera URLs often carry credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()
