"""YOLO11n's side of tests/frameworks/test_yolo.py: the constants both sides share, Ultralytics'
own post-processing of a raw head, the comparison with edgert's ``result``, and a batch of
pictures through edgert's pre-processing and model."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from edgert import LoadedModel
from edgert.pipeline import Postprocess, Preprocess
from edgert.pipeline.image import Transform

__all__ = [
    "BOX_PX",
    "IOU",
    "MAX_BATCH",
    "MAX_DET",
    "NAME",
    "PICTURE_SEED",
    "REPO",
    "SCORE",
    "SHAPES",
    "SIZE",
    "Exported",
    "Run",
    "assert_same_detections",
    "coco_names",
    "load_recipe",
    "picture_size",
    "run",
    "ultralytics_detections",
]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make-cnn-model"
NAME = "yolo11n"
COCO = "cfg/datasets/coco.yaml"
SIZE = 320
MAX_BATCH = 8
# Ultralytics' predict defaults are conf 0.25, iou 0.7, max_det 300; these are edgert's (model.toml
# states them, and Ultralytics is called with the same).
SCORE, IOU, MAX_DET = 0.25, 0.45, 100
BOX_PX = 0.5  # edgert rounds boxes to 0.1 px; a letterbox off by one pixel is 1 px or more
SCORE_TOLERANCE = 1e-4  # edgert rounds scores to 4 decimals
# (height, width): landscape, portrait, square (scaled up), a wide strip, odd sides whose scaled
# size rounds, and a 1080p frame.
SHAPES = [(480, 640), (640, 480), (300, 300), (200, 700), (777, 333), (1080, 1920)]
# Scenes of this seed score 12 to 51 boxes in each shape (some seeds' backgrounds score none).
PICTURE_SEED = 107


@dataclass(frozen=True)
class Exported:
    directory: Path
    labels: tuple[str, ...]
    connects: list[object]  # network connections Ultralytics tried while building and exporting


def load_recipe() -> ModuleType:
    """scripts/make-cnn-model as a module (it has no .py suffix)."""
    loader = SourceFileLoader("make_cnn_model", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def coco_names() -> tuple[str, ...]:
    """The 80 class names of Ultralytics' COCO dataset file, in class order."""
    import yaml

    names = yaml.safe_load((resources.files("ultralytics") / COCO).read_text())["names"]
    return tuple(names[i] for i in range(len(names)))


def ultralytics_detections(raw: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """Ultralytics' post-processing of one picture's ``[84, anchors]`` head: ``[n, 6]`` rows of
    x1, y1, x2, y2 (in ``original`` (height, width) pixels), score, class; best first."""
    import torch
    from ultralytics.utils import nms, ops

    (found,) = nms.non_max_suppression(
        torch.from_numpy(np.ascontiguousarray(raw[np.newaxis], np.float32)),
        conf_thres=SCORE,
        iou_thres=IOU,
        max_det=MAX_DET,
    )
    found[:, :4] = ops.scale_boxes((SIZE, SIZE), found[:, :4], original)
    return np.asarray(found.numpy(), np.float64)


def assert_same_detections(
    got: Sequence[Mapping[str, Any]], want: np.ndarray, labels: Sequence[str]
) -> None:
    """edgert's ``result`` holds Ultralytics' boxes: the same count, classes, scores and boxes
    within BOX_PX. Ties in score are put in class order on both sides."""
    assert len(got) == len(want), f"edgert found {len(got)} boxes, Ultralytics {len(want)}"
    index = {label: i for i, label in enumerate(labels)}
    mine = sorted(got, key=lambda d: (-d["score"], index[d["label"]], d["box"][0]))
    theirs = sorted(want.tolist(), key=lambda r: (-round(r[4], 4), r[5], r[0]))
    for n, (det, row) in enumerate(zip(mine, theirs, strict=True)):
        assert det["label"] == labels[int(row[5])], (n, det, row)
        assert abs(det["score"] - row[4]) <= SCORE_TOLERANCE, (n, det, row)
        off = max(abs(a - b) for a, b in zip(det["box"], row[:4], strict=True))
        assert off <= BOX_PX, f"box {n} is {off:.2f} px off: edgert {det['box']}, {row[:4]}"


def picture_size(picture: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(picture)) as img:
        return img.height, img.width


@dataclass(frozen=True)
class Run:
    raw: np.ndarray  # the head's [84, anchors] for this picture
    transform: Transform
    original: tuple[int, int]


def run(loaded: LoadedModel, pictures: Sequence[bytes]) -> tuple[list[Run], Postprocess]:
    """Every picture pre-processed by edgert and run as one batch."""
    pre = Preprocess.of(loaded.config, loaded.io.inputs[0])
    post = Postprocess.of(loaded.config, loaded.io)
    assert pre is not None and post is not None
    decoded = [pre.decode(p) for p in pictures]
    batch = np.concatenate([tensor for tensor, _ in decoded])
    raw = loaded.infer({pre.input: batch})["output0"]
    anchors = sum((SIZE // stride) ** 2 for stride in (8, 16, 32))
    assert raw.shape == (len(pictures), 84, anchors)
    runs = []
    for head, (_, transform), picture in zip(raw, decoded, pictures, strict=True):
        assert transform is not None
        runs.append(Run(head, transform, picture_size(picture)))
    return runs, post
