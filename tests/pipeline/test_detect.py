"""Detection heads of each layout: decode, class-aware NMS, boxes mapped back to the image."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgert.pipeline import Detect, Transform, decode_head, nms
from edgert.pipeline import detect as detect_module
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


def random_candidates(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` boxes over a few classes, with tied scores and some zero-area boxes."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 100, (n, 2))
    size = rng.uniform(0, 40, (n, 2))
    size[rng.random(n) < 0.1] = 0
    scores = np.round(rng.uniform(0, 1, n), 1)
    return np.concatenate([corner, corner + size], 1), scores, rng.integers(0, 4, n)


def greedy(boxes: np.ndarray, scores: np.ndarray, ids: np.ndarray, iou: float) -> list[int]:
    """NMS as its docstring says, one pair at a time: the reference for both of its ways."""
    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        a = boxes[i]
        for k in kept:
            b = boxes[k]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
            if ids[k] == ids[i] and union > 0 and w * h / union > iou:
                break
        else:
            kept.append(i)
    return kept


@pytest.mark.parametrize("n", [0, 1, 40, 300, detect_module.MATRIX_NMS_MAX + 88])
def test_nms_keeps_what_one_pair_at_a_time_keeps(n: int) -> None:
    """Below MATRIX_NMS_MAX NMS takes the whole IoU matrix at once, above it a row per kept box;
    both keep the reference's boxes. Ties are broken by position either way, so the order is
    compared as sets of equal scores."""
    for seed in range(4):
        boxes, scores, ids = random_candidates(seed, n)
        found = nms(boxes, scores, ids, 0.45)
        assert sorted(found.tolist()) == sorted(greedy(boxes, scores, ids, 0.45))
        assert list(scores[found]) == sorted(scores[found], reverse=True)


def test_decode_head_threshold_drops_only_what_scores_under_it() -> None:
    rng = np.random.default_rng(3)
    head = rng.uniform(0, 1, (4 + 6, 500)).astype(np.float32)
    head[4:] **= 4  # most anchors score low, as a real head's do
    for threshold in (0.125, 0.3, 0.75):
        # Ten anchors whose best class scores the threshold exactly: they reach it, so stay.
        head[4:, :10] = np.minimum(head[4:, :10], np.float32(threshold))
        head[4 + 2, :10] = threshold
        boxes, scores, ids = decode_head(head, "yolov8")
        mask = scores >= threshold
        fast = decode_head(head, "yolov8", threshold)
        assert mask[:10].all() and 0 < mask.sum() < len(mask)
        for got, want in zip(fast, (boxes[mask], scores[mask], ids[mask]), strict=True):
            assert got.tobytes() == want.tobytes()
