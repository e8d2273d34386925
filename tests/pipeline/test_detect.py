"""Detection heads of each layout: decode, class-aware NMS, boxes mapped back to the image."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgert.pipeline import Detect, Transform, nms
from edgert.pipeline.detect import DetectLayout

LABELS = ("person", "car")
# A 128x96 image letterboxed into 64x64: gain 0.5 → 64x48, 8 rows of padding above and below.
LETTERBOX = Transform(0.5, 0.5, 0.0, 8.0, 128, 96)

# (x1, y1, x2, y2, score, class) in model pixels
CANDIDATES = [
    (10, 18, 30, 38, 0.9, 0),  # A: kept
    (12, 18, 32, 38, 0.8, 0),  # B: IoU 360/440 with A, same class → suppressed
    (12, 18, 32, 38, 0.7, 1),  # C: B's box, other class → kept
    (40, 40, 60, 60, 0.6, 0),  # D: apart → kept
    (0, 0, 8, 8, 0.1, 1),  # E: under score_threshold
    (-4, 4, 10, 20, 0.5, 1),  # F: sticks out of the image → clipped
]
EXPECTED = [
    {"label": "person", "score": 0.9, "box": [20.0, 20.0, 60.0, 60.0]},
    {"label": "car", "score": 0.7, "box": [24.0, 20.0, 64.0, 60.0]},
    {"label": "person", "score": 0.6, "box": [80.0, 64.0, 120.0, 96.0]},
    {"label": "car", "score": 0.5, "box": [0.0, 0.0, 20.0, 24.0]},
]


def head(layout: DetectLayout) -> np.ndarray:
    """CANDIDATES written in ``layout``, with a batch axis of 1."""
    rows = []
    for x1, y1, x2, y2, score, cls in CANDIDATES:
        xywh = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        classes = [0.0, 0.0]
        if layout == "yolov5":
            # objectness × class score: split the score between the two
            obj = score**0.5
            classes[cls] = score**0.5
            rows.append([*xywh, obj, *classes])
        elif layout == "yolov8":
            classes[cls] = score
            classes[1 - cls] = score / 2  # a lower second class must not win
            rows.append([*xywh, *classes])
        else:
            rows.append([x1, y1, x2, y2, score, cls])
    array = np.asarray(rows, np.float32)
    return (array.T if layout == "yolov8" else array)[np.newaxis]


@pytest.mark.parametrize("layout", ["yolov5", "yolov8", "end2end"])
def test_each_layout_suppresses_same_class_overlap_and_maps_boxes(layout: DetectLayout) -> None:
    detect = Detect(layout, score_threshold=0.25, iou_threshold=0.45, labels=LABELS)
    assert detect.run(head(layout)[0], LETTERBOX) == EXPECTED


@pytest.mark.parametrize("layout", ["yolov5", "yolov8", "end2end"])
def test_each_layout_without_transform_keeps_model_pixels(layout: DetectLayout) -> None:
    found = Detect(layout, iou_threshold=0.9, max_detections=3).run(head(layout)[0], None)
    # IoU 0.82 < 0.9 keeps B; max_detections cuts to the best three; no labels → class numbers
    assert found == [
        {"label": "0", "score": 0.9, "box": [10.0, 18.0, 30.0, 38.0]},
        {"label": "0", "score": 0.8, "box": [12.0, 18.0, 32.0, 38.0]},
        {"label": "1", "score": 0.7, "box": [12.0, 18.0, 32.0, 38.0]},
    ]


def test_nms_greedy_class_aware() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10], [0, 0, 10, 10]], float)
    scores = np.array([0.5, 0.9, 0.8, 0.7])
    ids = np.array([0, 0, 0, 1])
    # 1 beats 0 (IoU 9/11) and 2 (IoU 9/11); 3 is another class
    assert nms(boxes, scores, ids, 0.5).tolist() == [1, 3]
    # at 0.85 no overlap (at most 9/11) is enough: all kept, best first
    assert nms(boxes, scores, ids, 0.85).tolist() == [1, 2, 3, 0]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).tolist() == []


def test_stretch_transform_maps_each_axis() -> None:
    stretch = Transform(64 / 128, 64 / 96, 0.0, 0.0, 128, 96)
    out = stretch.to_original(np.array([[32.0, 32.0, 64.0, 64.0]]))
    np.testing.assert_allclose(out, [[64.0, 48.0, 128.0, 96.0]])


def test_empty_head_gives_no_detections() -> None:
    empty: Any = np.zeros((0, 7), np.float32)
    assert Detect("yolov5").run(empty, LETTERBOX) == []
