"""Post-processing from model.toml's ``[postprocess]``: outputs → a small JSON-able result.

::

    [postprocess]                 # classification
    output = "logits"             # default: the model's first output
    softmax = true                # or softmax = "logits" (names the output too)
    top_k = 3                     # → [{"label", "score"}], labels from model.toml's labels

    [postprocess]                 # binary state
    threshold = 0.5
    on_label = "occupied"         # whose score is compared; omit for a one-value output
                                  # → {"state": bool, "score"}

    [postprocess]                 # detection (see edgert.pipeline.detect)
    detect = "yolov8"             # yolov5 | yolov8 | end2end
    score_threshold = 0.25
    iou_threshold = 0.45
    max_detections = 100          # → [{"label", "score", "box": [x1, y1, x2, y2]}]

An output with a batch axis gives one result per batch item: the result itself for a batch of
one, else a list of results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from edgert.errors import ConfigError, InferenceError
from edgert.pipeline._check import check_keys, choice, number, positive_int
from edgert.pipeline.detect import DETECT_LAYOUTS, Detect, DetectLayout
from edgert.pipeline.image import Transform

if TYPE_CHECKING:
    from edgert.config import ModelConfig
    from edgert.spec import ModelIO, TensorSpec

__all__ = ["POSTPROCESS_KEYS", "Postprocess", "softmax", "threshold", "top_k"]

POSTPROCESS_KEYS = (
    "output",
    "softmax",
    "top_k",
    "threshold",
    "on_label",
    "detect",
    "score_threshold",
    "iou_threshold",
    "max_detections",
)
_DETECT_ONLY = ("score_threshold", "iou_threshold", "max_detections")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return cast(np.ndarray, e / e.sum(axis=axis, keepdims=True))


def _label(labels: Sequence[str], index: int) -> str:
    return labels[index] if index < len(labels) else str(index)


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` best of a 1-D score vector, best first (ties: lower index first), as
    ``[{"label", "score"}]``; an index without a label is named by its number."""
    scores = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": _label(labels, int(i)), "score": round(float(scores[i]), 4)} for i in order]


def threshold(score: float, at: float) -> dict[str, Any]:
    """A binary state: on when ``score >= at``."""
    return {"state": bool(score >= at), "score": round(float(score), 4)}


def _class_dim(spec: TensorSpec, where: str) -> int | None:
    if len(spec.shape) > 2:
        raise ConfigError(
            f"{where}: output '{spec.name}' {spec.shape_text()} is not a score vector "
            f"([C] or [batch, C])"
        )
    last = spec.shape[-1] if spec.shape else 1
    return last if isinstance(last, int) else None


def _detect_classes(spec: TensorSpec, layout: DetectLayout, where: str) -> int | None:
    ranks = (2, 3) if layout == "end2end" else (3,)
    if len(spec.shape) not in ranks:
        raise ConfigError(
            f"{where}: {layout} output '{spec.name}' {spec.shape_text()} must have rank "
            f"{' or '.join(map(str, ranks))}"
        )
    dim, base = {"yolov5": (spec.shape[-1], 5), "yolov8": (spec.shape[1], 4)}.get(layout, (None, 0))
    return dim - base if isinstance(dim, int) else None


@dataclass(frozen=True)
class Postprocess:
    """A validated ``[postprocess]`` section; :meth:`apply` turns outputs into the result."""

    output: str
    kind: Literal["top_k", "threshold", "detect"]
    softmax: bool = False
    k: int = 1
    at: float = 0.5
    on_index: int | None = None
    labels: tuple[str, ...] = ()
    detect: Detect | None = None

    @classmethod
    def of(cls, config: ModelConfig, io: ModelIO) -> Postprocess | None:
        """The model's post-processing, or None when model.toml has no ``[postprocess]``."""
        section = config.sections.get("postprocess")
        if section is None:
            return None
        where = f"model {config.name!r} [postprocess]"
        check_keys(section, POSTPROCESS_KEYS, where)
        names = [s.name for s in io.outputs]
        soft = section.get("softmax", False)
        if not isinstance(soft, bool | str):
            raise ConfigError(f"{where}: softmax must be true/false or an output name")
        output = section.get("output", soft if isinstance(soft, str) else names[0])
        if isinstance(soft, str) and soft != output:
            raise ConfigError(f"{where}: softmax names {soft!r} but output is {output!r}")
        if output not in names:
            raise ConfigError(f"{where}: no output {output!r}; outputs: {', '.join(names)}")
        spec = next(s for s in io.outputs if s.name == output)
        kinds = [k for k in ("top_k", "threshold", "detect") if k in section]
        if len(kinds) != 1:
            raise ConfigError(
                f"{where}: set exactly one of top_k, threshold, detect (got "
                f"{', '.join(kinds) or 'none'})"
            )
        kind = kinds[0]
        labels = config.labels
        if kind != "detect":
            misplaced = [k for k in _DETECT_ONLY if k in section]
            if misplaced:
                raise ConfigError(f"{where}: {', '.join(misplaced)} only apply with detect")
        if kind == "detect":
            if soft or "on_label" in section:
                raise ConfigError(f"{where}: softmax and on_label do not apply with detect")
            layout = cast(DetectLayout, choice(section, "detect", DETECT_LAYOUTS, where))
            classes = _detect_classes(spec, layout, where)
            _check_labels(labels, classes, where)
            detect = Detect(
                layout,
                number(section, "score_threshold", 0.25, where, low=0.0, high=1.0),
                number(section, "iou_threshold", 0.45, where, low=0.0, high=1.0),
                positive_int(section, "max_detections", 100, where),
                labels,
            )
            return cls(output, "detect", labels=labels, detect=detect)
        classes = _class_dim(spec, where)
        if kind == "threshold" and classes == 1 and len(labels) == 2:
            # One score, two labels: [below, above] the threshold (silero: silence, speech).
            on_label = section.get("on_label", labels[1])
            if on_label != labels[1]:
                raise ConfigError(
                    f"{where}: one score with labels {list(labels)}: on_label is {labels[1]!r}"
                )
            at = number(section, "threshold", 0.5, where)
            return cls(output, "threshold", at=at, on_index=None, labels=labels)
        _check_labels(labels, classes, where)
        if kind == "top_k":
            if "on_label" in section:
                raise ConfigError(f"{where}: on_label applies with threshold, not top_k")
            k = positive_int(section, "top_k", None, where)
            return cls(output, "top_k", softmax=bool(soft), k=k, labels=labels)
        at = number(section, "threshold", 0.5, where)
        on_index = None
        if "on_label" in section:
            on_label = section["on_label"]
            if on_label not in labels:
                raise ConfigError(
                    f"{where}: on_label {on_label!r} is not a label; labels: "
                    f"{', '.join(labels) or '(none in model.toml)'}"
                )
            on_index = labels.index(on_label)
        elif classes not in (1, None):
            raise ConfigError(
                f"{where}: output '{output}' has {classes} scores; say which with on_label"
            )
        elif soft:
            raise ConfigError(f"{where}: softmax over one score is always 1; use on_label")
        return cls(output, "threshold", softmax=bool(soft), at=at, on_index=on_index, labels=labels)

    def apply(self, outputs: Mapping[str, np.ndarray], transform: Transform | None = None) -> Any:
        """The JSON-able result of one request's outputs (``transform`` maps detection boxes back
        to the original image)."""
        if self.output not in outputs:
            raise InferenceError(
                f"post-processing needs output '{self.output}'; got {', '.join(outputs)}"
            )
        array = np.asarray(outputs[self.output])
        if self.detect is not None:
            if array.ndim == 2:
                return self.detect.run(array, transform)
            results = [self.detect.run(item, transform) for item in array]
        else:
            if array.ndim > 2:
                raise InferenceError(
                    f"output '{self.output}' has shape {list(array.shape)}; expected [C] or [B, C]"
                )
            if array.ndim < 2:
                return self._classify(array.reshape(-1))
            results = [self._classify(row) for row in array]
        return results[0] if len(results) == 1 else results

    def _classify(self, scores: np.ndarray) -> Any:
        if self.softmax:
            scores = softmax(scores)
        if self.kind == "top_k":
            return top_k(scores, self.labels, self.k)
        if self.on_index is None:
            if scores.size != 1:
                raise InferenceError(
                    f"output '{self.output}' has {scores.size} scores; threshold needs one "
                    f"or on_label"
                )
            return threshold(float(scores[0]), self.at)
        if self.on_index >= scores.size:
            raise InferenceError(
                f"output '{self.output}' has {scores.size} scores; on_label is index "
                f"{self.on_index}"
            )
        return threshold(float(scores[self.on_index]), self.at)


def _check_labels(labels: Sequence[str], classes: int | None, where: str) -> None:
    if labels and classes is not None and len(labels) != classes:
        raise ConfigError(f"{where}: {len(labels)} labels but the output has {classes} classes")
