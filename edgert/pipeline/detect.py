"""Object-detection heads → labelled boxes: decode, class-aware NMS, map back to the image.

Layouts (boxes in model-input pixels):

- ``yolov5``: ``[B, N, 5 + C]``: cx, cy, w, h, objectness, class scores (score = obj × class).
- ``yolov8`` (also YOLO11): ``[B, 4 + C, N]``: cx, cy, w, h, class scores (no objectness).
- ``end2end``: ``[B, N, 6]`` or ``[N, 6]``: x1, y1, x2, y2, score, class (NMS is still applied;
  it changes nothing on a head that already did it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgert.errors import InferenceError
from edgert.pipeline.image import Transform
from edgert.sections import DETECT_LAYOUTS, DetectLayout

__all__ = ["DETECT_LAYOUTS", "Detect", "DetectLayout", "decode_head", "nms"]


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    cx, cy, w, h = xywh[:, 0], xywh[:, 1], xywh[:, 2] / 2, xywh[:, 3] / 2
    return np.stack([cx - w, cy - h, cx + w, cy + h], axis=1)


def decode_head(
    head: np.ndarray, layout: DetectLayout, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's head (batch axis removed) → boxes ``[N, 4]`` xyxy, scores ``[N]``,
    class ids ``[N]``; the best class of each candidate, and with ``threshold`` only the
    candidates whose score reaches it."""
    head = np.asarray(head)
    if head.ndim != 2:
        raise InferenceError(
            f"{layout} head must be [N, K] per image, got shape {list(head.shape)}"
        )
    if layout == "yolov8" and threshold is not None and head.shape[0] > 4:
        # Most of a YOLOv8 head's anchors score under the threshold: drop them before the
        # float64 copy. The best class score is the same in either precision.
        head = head[:, head[4:].max(axis=0).astype(np.float64) >= threshold]
    head = np.asarray(head, dtype=np.float64)
    if layout == "end2end":
        if head.shape[1] < 6:
            raise InferenceError(f"end2end head must be [N, 6], got {list(head.shape)}")
        return _kept(head[:, :4], head[:, 4], head[:, 5].astype(np.int64), threshold)
    if layout == "yolov8":
        head = head.T  # [4 + C, N] → [N, 4 + C]
    first = 5 if layout == "yolov5" else 4
    if head.shape[1] <= first:
        raise InferenceError(f"{layout} head has no class scores: shape {list(head.shape)}")
    classes = head[:, first:]
    ids = classes.argmax(axis=1)
    scores = classes[np.arange(len(head)), ids]
    if layout == "yolov5":
        scores = scores * head[:, 4]
    return _kept(_xywh_to_xyxy(head[:, :4]), scores, ids, threshold)


def _kept(
    boxes: np.ndarray, scores: np.ndarray, ids: np.ndarray, threshold: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if threshold is None:
        return boxes, scores, ids
    mask = scores >= threshold
    return boxes[mask], scores[mask], ids[mask]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of ``box`` ``[..., 4]`` with each of ``others`` ``[M, 4]``; broadcast, so ``boxes[:,
    None]`` against ``boxes`` gives the whole matrix, each element computed as for one pair."""
    x1 = np.maximum(box[..., 0], others[:, 0])
    y1 = np.maximum(box[..., 1], others[:, 1])
    x2 = np.minimum(box[..., 2], others[:, 2])
    y2 = np.minimum(box[..., 3], others[:, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    iou: np.ndarray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


# Up to this many candidates NMS takes every pair's IoU at once (a matrix of this size squared,
# a few MB); past it, one kept box's row at a time, so memory stays linear in the candidates.
MATRIX_NMS_MAX = 512


def nms(boxes: np.ndarray, scores: np.ndarray, ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy class-aware NMS: indices kept, best score first. A box is dropped when it overlaps
    a higher-scoring kept box *of the same class* by more than ``iou_threshold``."""
    order = np.argsort(-scores, kind="stable")
    if len(order) <= MATRIX_NMS_MAX:
        kept = _nms_matrix(boxes[order], ids[order], iou_threshold)
        # Class by class, each in score order: the order the row-wise loop keeps them in.
        keep: np.ndarray = order[kept[np.argsort(ids[order][kept], kind="stable")]]
    else:
        keep = _nms_rows(boxes, ids, order, iou_threshold)
    best_first: np.ndarray = keep[np.argsort(-scores[keep], kind="stable")]
    return best_first


def _nms_matrix(boxes: np.ndarray, ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Positions kept among ``boxes`` already in score order."""
    drops = ~(_iou(boxes[:, None], boxes) <= iou_threshold) & (ids[:, None] == ids)
    dropped = np.zeros(len(boxes), dtype=bool)
    kept: list[int] = []
    for position in range(len(boxes)):
        if not dropped[position]:
            kept.append(position)
            dropped |= drops[position]
    return np.asarray(kept, dtype=np.int64)


def _nms_rows(
    boxes: np.ndarray, ids: np.ndarray, order: np.ndarray, iou_threshold: float
) -> np.ndarray:
    kept: list[int] = []
    for cls in np.unique(ids):
        idx = order[ids[order] == cls]
        while idx.size:
            best, idx = idx[0], idx[1:]
            kept.append(int(best))
            idx = idx[_iou(boxes[best], boxes[idx]) <= iou_threshold]
    return np.asarray(kept, dtype=np.int64)


@dataclass(frozen=True)
class Detect:
    """A detection post-processor: which head layout, thresholds, and class labels."""

    layout: DetectLayout
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    labels: Sequence[str] = ()

    def label(self, cls: int) -> str:
        return self.labels[cls] if 0 <= cls < len(self.labels) else str(cls)

    def run(self, head: np.ndarray, transform: Transform | None) -> list[dict[str, Any]]:
        """One image's head → ``[{"label", "score", "box": [x1, y1, x2, y2]}]``, best first.

        Boxes are in the original image's pixels (clipped to it) when ``transform`` is given,
        else in model-input pixels. Scores are rounded to 4 decimals, boxes to 0.1 pixel.
        """
        boxes, scores, ids = decode_head(head, self.layout, self.score_threshold)
        keep = nms(boxes, scores, ids, self.iou_threshold)[: self.max_detections]
        boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
        if transform is not None:
            boxes = transform.to_original(boxes)
        return [
            {
                "label": self.label(int(c)),
                "score": round(float(s), 4),
                "box": [round(float(v), 1) for v in b],
            }
            for b, s, c in zip(boxes, scores, ids, strict=True)
        ]
