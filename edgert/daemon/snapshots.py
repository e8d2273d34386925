"""A video source's frames as JPEG: the frame its model is given, and the annotated snapshot
Home Assistant's ``image`` entity shows (boxes and labels drawn with Pillow).

Pure: frames in, bytes out; the caller decides when (at most one snapshot per
``snapshot_interval``) and runs these off the event loop (a 720p encode takes milliseconds).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BOX_COLOUR", "annotate", "boxes_of", "counts", "jpeg"]

BOX_COLOUR = (255, 208, 0)  # amber: visible on night-vision grey and on daylight colours
_QUALITY = 85


def jpeg(rgb: np.ndarray, quality: int = _QUALITY) -> bytes:
    """``rgb`` (``[h, w, 3]`` uint8) as JPEG bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def boxes_of(result: Any) -> list[Mapping[str, Any]]:
    """The detections in a post-processed result (entries with a ``box``); none otherwise."""
    if not isinstance(result, list):
        return []
    return [e for e in result if isinstance(e, Mapping) and _box(e.get("box")) is not None]


def counts(result: Any, labels: Sequence[str], min_score: float) -> dict[str, int]:
    """How many of each of ``labels`` the result's detections hold at ``min_score``; for a
    result without boxes (a classifier, a threshold) 1 for a label it announces."""
    found = dict.fromkeys(labels, 0)
    detections = boxes_of(result)
    if detections:
        for entry in detections:
            label = str(entry.get("label"))
            if label in found and float(entry.get("score", 0.0)) >= min_score:
                found[label] += 1
        return found
    from edgert.daemon.sources import announcements

    for label, _ in announcements(result, list(labels), min_score, labels[0] if labels else ""):
        found[label] = 1
    return found


def annotate(rgb: np.ndarray, result: Any, min_score: float = 0.0) -> bytes:
    """``rgb`` with the result's boxes (at ``min_score``) and their labels drawn, as JPEG."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    width = max(3, image.width // 240)  # survives JPEG's colour subsampling
    for entry in boxes_of(result):
        score = float(entry.get("score", 0.0))
        box = _box(entry.get("box"))
        if box is None or score < min_score:
            continue
        draw.rectangle(box, outline=BOX_COLOUR, width=width)
        text = f"{entry.get('label')} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        lift = bottom - top + 2
        draw.rectangle((left, top - lift, right + 2, bottom - lift), fill=BOX_COLOUR)
        draw.text((box[0] + 1, box[1] - lift), text, fill=(0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=_QUALITY)
    return out.getvalue()


def _box(value: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(value, Sequence) or len(value) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (x1, y1, x2, y2) if x2 >= x1 and y2 >= y1 else None
