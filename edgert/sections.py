"""The tables of model.toml that later layers act on: ``[preprocess]``, ``[postprocess]``,
``[batching]``, ``[state]``, ``[homeassistant]`` and ``[tensorrt]``.

They are decoded (strictly, see :mod:`edgert.schema`) with the rest of model.toml, so a typo or a
wrong type in any of them is refused when the file is read; what needs the model's inputs and
outputs (an output's name, a size against an input's dims) is checked by each table's owner
when the model loads.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from edgert.errors import ConfigKeyError
from edgert.schema import Table, show

__all__ = [
    "DETECT_LAYOUTS",
    "ENTITY_KINDS",
    "AudioSection",
    "BatchingSection",
    "DetectLayout",
    "EntityKind",
    "HomeAssistantSection",
    "ImageSection",
    "PostprocessSection",
    "Preprocessing",
    "StateSection",
    "TensorRTSection",
]

Size = Annotated[int, Meta(ge=1)]
Count = Annotated[int, Meta(ge=0)]
Score = Annotated[float, Meta(ge=0, le=1)]
Name = Annotated[str, Meta(min_length=1)]

DetectLayout = Literal["yolov5", "yolov8", "end2end"]
DETECT_LAYOUTS: tuple[DetectLayout, ...] = ("yolov5", "yolov8", "end2end")
EntityKind = Literal["event", "sensor", "binary_sensor"]
ENTITY_KINDS: tuple[EntityKind, ...] = ("event", "sensor", "binary_sensor")


class ImageSection(Table, tag_field="kind", tag="image", forbid_unknown_fields=True, frozen=True):
    """``[preprocess]`` with ``kind = "image"``: JPEG or PNG bytes in; the tensor is
    ``((pixel * scale) - mean) / std`` per channel, in ``color`` order."""

    size: tuple[Size, Size] | None = None  # [height, width]; default: the fixed dims, or [dims]
    resize: Literal["stretch", "letterbox"] = "stretch"  # letterbox keeps the aspect, pads
    pad_value: Annotated[int, Meta(ge=0, le=255)] = 114  # letterbox border, in pixel units
    color: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] | None = None  # default: from the input's shape
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # after scale
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: Literal["float32", "float16", "float64", "uint8"] | None = None  # default: the input's

    def __post_init__(self) -> None:
        super().__post_init__()
        if 0 in self.std:
            raise ConfigKeyError("std", f"must not contain 0, got {show(self.std)}")


class AudioSection(Table, tag_field="kind", tag="audio", forbid_unknown_fields=True, frozen=True):
    """``[preprocess]`` with ``kind = "audio"``: a device's PCM16 or WAV bytes in (mono, at the
    model's rate: no resampling), float samples in [-1, 1) out."""

    rate: Size  # the model's sample rate, Hz
    format: Literal["pcm16", "wav"] = "pcm16"  # pcm16: raw little-endian samples


Preprocessing = ImageSection | AudioSection


class PostprocessSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[postprocess]``: outputs → the reply's ``result``; exactly one of ``top_k`` (a
    classification), ``threshold`` (a binary state) and ``detect`` (labelled boxes)."""

    output: str | None = None  # default: the model's first output
    softmax: bool | str = False  # or the name of the output, as a check
    top_k: Size | None = None
    threshold: float | None = None
    on_label: str | None = None  # threshold: whose score is compared
    detect: DetectLayout | None = None
    score_threshold: Score | None = None  # detect only; default 0.25
    iou_threshold: Score | None = None  # detect only; default 0.45
    max_detections: Size | None = None  # detect only; default 100

    def __post_init__(self) -> None:
        super().__post_init__()
        kinds = [k for k in ("top_k", "threshold", "detect") if getattr(self, k) is not None]
        if len(kinds) != 1:
            got = " and ".join(kinds) or "none"
            raise ConfigKeyError(  # with none set, the table is at fault, not a key
                tuple(kinds[1:2]), f"set exactly one of top_k, threshold, detect (got {got})"
            )
        if kinds == ["detect"]:
            for name in ("softmax", "on_label"):
                if getattr(self, name):
                    raise ConfigKeyError(name, "does not apply with detect")
        else:
            for name in ("score_threshold", "iou_threshold", "max_detections"):
                if getattr(self, name) is not None:
                    raise ConfigKeyError(name, "applies with detect only")
        if kinds == ["top_k"] and self.on_label is not None:
            raise ConfigKeyError("on_label", "applies with threshold, not top_k")
        if isinstance(self.softmax, str) and self.output not in (None, self.softmax):
            raise ConfigKeyError(
                "softmax", f"names {show(self.softmax)} but output is {show(self.output)}"
            )


class BatchingSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[batching]``: how requests share runs."""

    max_batch: Size | None = None  # cap below the profile's bound on the batch dim
    max_queue_delay_us: Count = 0  # how long a partial batch waits for more (0: take what is)
    instances: Size = 1  # runners of the model, each one inference at a time
    threads: Count = 0  # CPU threads per instance (0: all cores for one, cores / instances else)


class StateSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[state]``: how long a stateful model keeps an idle stream's state, and how many."""

    ttl: Annotated[float, Meta(gt=0)] = 300.0  # seconds since the stream's last request
    max_streams: Size = 256  # past it, the least recently used stream goes


class HomeAssistantSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[homeassistant]``: how the model appears in Home Assistant."""

    kind: EntityKind = "event"  # sensor: the label; binary_sensor: a threshold's state
    name: Name | None = None  # the entity's name; default: the model's
    icon: Name | None = None
    off_delay: Size | None = None  # binary_sensor only: seconds it stays on; default 30
    device_class: Name | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.off_delay is not None and self.kind != "binary_sensor":
            raise ConfigKeyError("off_delay", 'applies to kind = "binary_sensor" only')


class TensorRTSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[tensorrt]``: engine build options (part of the artifact key); unset ones are
    TensorRT's defaults."""

    workspace_mb: Size | None = None  # builder workspace limit
    optimization_level: Annotated[int, Meta(ge=0, le=5)] | None = None
    dla_core: Count | None = None  # AGX Orin / Orin NX; FP16 or INT8 only
    version_compatible: bool | None = None  # runs on later TensorRT
    hardware_compatible: bool | None = None  # desktop Ampere or later: any sm_80+ card
