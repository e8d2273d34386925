"""The motion gate in front of a video source's model, pure: frame differencing on a small grey
copy of each sampled frame, with a mask of ignored regions and a keep-alive frame.

A static scene costs the daemon decoding only: the detector runs when enough of the frame changed
since the sampled frame before (``threshold`` grey levels on at least ``min_area`` of the
unmasked pixels), and once every ``keepalive`` seconds whatever changed, so something that
arrived and stood still is still seen, and its leaving is too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgert.sourcesettings import MotionSection

__all__ = ["MotionGate", "polygon_mask"]


def polygon_mask(
    polygons: Sequence[Sequence[tuple[float, float]]], width: int, height: int
) -> np.ndarray:
    """``[height, width]`` booleans: True at the pixels whose centre lies in any of
    ``polygons`` (points as fractions of the width and height; even-odd rule)."""
    ys, xs = np.mgrid[0:height, 0:width]
    px, py = (xs + 0.5) / width, (ys + 0.5) / height
    inside = np.zeros((height, width), bool)
    for polygon in polygons:
        odd = np.zeros((height, width), bool)
        points = list(polygon)
        for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
            if y1 == y2:
                continue  # a horizontal edge crosses no horizontal ray
            crosses = (y1 > py) != (y2 > py)
            x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            odd ^= crosses & (px < x_at)
        inside |= odd
    return inside


class MotionGate:
    """Says, per sampled grey frame, whether the model should see it; counts what it let by."""

    def __init__(self, config: MotionSection) -> None:
        self.config = config
        self._previous: np.ndarray | None = None
        self._watched: np.ndarray | None = None  # pixels not masked, at the grey frame's size
        self._last_open = float("-inf")
        self.changed = 0.0  # the fraction that changed in the last frame compared

    def opens(self, grey: np.ndarray, now: float) -> bool:
        """Whether to run the model on the frame ``grey`` (``[h, w]`` uint8) seen at ``now``
        (seconds, monotonic). The first frame of a stream always opens the gate."""
        config = self.config
        if not config.enabled:
            return True
        previous, self._previous = self._previous, grey
        if previous is None or previous.shape != grey.shape:
            self._watched = ~polygon_mask(config.mask, grey.shape[1], grey.shape[0])
            return self._open(now)
        watched = self._watched
        assert watched is not None
        difference = np.abs(grey.astype(np.int16) - previous.astype(np.int16))
        moved = (difference >= config.threshold) & watched
        area = int(watched.sum())
        self.changed = float(moved.sum()) / area if area else 0.0
        if area and self.changed >= config.min_area:
            return self._open(now)
        if config.keepalive > 0 and now - self._last_open >= config.keepalive:
            return self._open(now)
        return False

    def _open(self, now: float) -> bool:
        self._last_open = now
        return True

    def reset(self) -> None:
        """A new stream (a reconnect): its first frame opens the gate again."""
        self._previous = None
