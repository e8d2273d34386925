"""Post-processing from model.toml's ``[postprocess]``: outputs → a small JSON-able result.

::

    [postprocess]                 # classification
    output = "logits"             # default: the model's first output
    softmax = true                # or softmax = "logits" (names the output too)
    top_k = 3                     # → [{"label", "score"}], labels from model.toml's labels

    [postprocess]                 # binary state
    threshold = 0.5
    on_label = "occupied"         # whose score is compared; omit for a one-value output
                                  # → {"state": bool, "score", "label"}: the state's
                                  # label; state and score null for a NaN score

    [postprocess]                 # detection (see edgert.pipeline.detect)
    detect = "yolov8"             # yolov5 | yolov8 | end2end
    score_threshold = 0.25
    iou_threshold = 0.45
    max_detections = 100          # → [{"label", "score", "box": [x1, y1, x2, y2]}]

An output with a batch axis gives one result per batch item: the result itself for a batch of
one, else a list of results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from edgert.errors import ConfigError, InferenceError
from edgert.pipeline.detect import Detect, DetectLayout
from edgert.pipeline.image import Transform

if TYPE_CHECKING:
    from edgert.config import ModelConfig
    from edgert.sections import PostprocessSection
    from edgert.spec import ModelIO, TensorSpec

__all__ = ["Postprocess", "softmax", "threshold", "top_k"]

Problem = Callable[[str | None, str], ConfigError]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return cast(np.ndarray, e / e.sum(axis=axis, keepdims=True))


def _label(labels: Sequence[str], index: int) -> str:
    return labels[index] if index < len(labels) else str(index)


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` best of a 1-D score vector, best first (ties: lower index first), as
    ``[{"label", "score"}]``; an index without a label is named by its number. A score that is
    not a finite number is left out: a NaN (from a sensor's NaN reading) ranks nothing, and its
    label is not claimed; all of them NaN gives ``[]``."""
    scores = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    kept = order[np.isfinite(scores[order])][:k]
    return [{"label": _label(labels, int(i)), "score": round(float(scores[i]), 4)} for i in kept]


def threshold(
    score: float, at: float, labels: tuple[str | None, str | None] = (None, None)
) -> dict[str, Any]:
    """A binary state: on when ``score >= at``, with the state's ``label`` where the model names
    one (``labels``: the off state's and the on state's). A score that is not a finite number (a
    sensor's NaN reading gives one) is no answer: state and score are None, and no label, not
    "off"."""
    if not math.isfinite(score):
        return {"state": None, "score": None}
    on = bool(score >= at)
    result: dict[str, Any] = {"state": on, "score": round(float(score), 4)}
    label = labels[1] if on else labels[0]
    if label is not None:
        result["label"] = label
    return result


def _class_dim(spec: TensorSpec, problem: Problem) -> int | None:
    if len(spec.shape) > 2:
        raise problem(
            "output",
            f"'{spec.name}' {spec.shape_text()} is not a score vector ([C] or [batch, C])",
        )
    last = spec.shape[-1] if spec.shape else 1
    return last if isinstance(last, int) else None


def _detect_classes(spec: TensorSpec, layout: DetectLayout, problem: Problem) -> int | None:
    ranks = (2, 3) if layout == "end2end" else (3,)
    if len(spec.shape) not in ranks:
        raise problem(
            "detect",
            f"{layout} output '{spec.name}' {spec.shape_text()} must have rank "
            f"{' or '.join(map(str, ranks))}",
        )
    dim, base = {"yolov5": (spec.shape[-1], 5), "yolov8": (spec.shape[1], 4)}.get(layout, (None, 0))
    return dim - base if isinstance(dim, int) else None


@dataclass(frozen=True)
class Postprocess:
    """A ``[postprocess]`` table checked against the model's outputs; :meth:`apply` turns
    outputs into the result."""

    output: str
    kind: Literal["top_k", "threshold", "detect"]
    softmax: bool = False
    k: int = 1
    at: float = 0.5
    on_index: int | None = None
    labels: tuple[str, ...] = ()
    detect: Detect | None = None
    # A threshold's labels for off and on: what its events are named (Home Assistant's
    # event_types are the model's labels).
    state_labels: tuple[str | None, str | None] = (None, None)

    @classmethod
    def of(cls, config: ModelConfig, io: ModelIO) -> Postprocess | None:
        """The model's post-processing, or None when model.toml has no ``[postprocess]``.
        The table's own rules were checked when model.toml was read; these need the outputs."""
        section = config.postprocess
        if section is None:
            return None

        def problem(key: str | None, message: str) -> ConfigError:
            return config.problem("postprocess", key, message)

        names = [s.name for s in io.outputs]
        soft = section.softmax
        output = section.output or (soft if isinstance(soft, str) else names[0])
        if output not in names:
            key = "output" if section.output else "softmax"
            raise problem(key, f"no output {output!r}; outputs: {', '.join(names)}")
        spec = next(s for s in io.outputs if s.name == output)
        labels = config.labels
        if section.detect is not None:
            classes = _detect_classes(spec, section.detect, problem)
            _check_labels(labels, classes, problem)
            detect = Detect(
                section.detect,
                _or(section.score_threshold, 0.25),
                _or(section.iou_threshold, 0.45),
                _or(section.max_detections, 100),
                labels,
            )
            return cls(output, "detect", labels=labels, detect=detect)
        if section.top_k is not None:
            _check_labels(labels, _class_dim(spec, problem), problem)
            return cls(output, "top_k", softmax=bool(soft), k=section.top_k, labels=labels)
        return cls._threshold(section, output, spec, labels, problem)

    @classmethod
    def _threshold(
        cls,
        section: PostprocessSection,
        output: str,
        spec: TensorSpec,
        labels: tuple[str, ...],
        problem: Problem,
    ) -> Postprocess:
        classes = _class_dim(spec, problem)
        at = _or(section.threshold, 0.5)
        on_label, soft = section.on_label, bool(section.softmax)
        if classes == 1 and len(labels) == 2:
            # One score, two labels: [below, above] the threshold (silero: silence, speech).
            if on_label not in (None, labels[1]):
                raise problem(
                    "on_label", f"one score with labels {list(labels)}: on_label is {labels[1]!r}"
                )
            pair = (labels[0], labels[1])
            return cls(output, "threshold", at=at, labels=labels, state_labels=pair)
        _check_labels(labels, classes, problem)
        on_index = None
        if on_label is not None:
            if on_label not in labels:
                raise problem(
                    "on_label",
                    f"{on_label!r} is not a label; labels: "
                    f"{', '.join(labels) or '(none in model.toml)'}",
                )
            on_index = labels.index(on_label)
        elif classes not in (1, None):
            raise problem("on_label", f"missing; output '{output}' has {classes} scores: say which")
        elif soft:
            raise problem("softmax", "softmax over one score is always 1; use on_label")
        states: tuple[str | None, str | None] = (None, labels[0] if len(labels) == 1 else None)
        if on_index is not None:  # off is the other label, where there is just one other
            others = [label for i, label in enumerate(labels) if i != on_index]
            states = (others[0] if len(others) == 1 else None, labels[on_index])
        return cls(
            output,
            "threshold",
            softmax=soft,
            at=at,
            on_index=on_index,
            labels=labels,
            state_labels=states,
        )

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
            return threshold(float(scores[0]), self.at, self.state_labels)
        if self.on_index >= scores.size:
            raise InferenceError(
                f"output '{self.output}' has {scores.size} scores; on_label is index "
                f"{self.on_index}"
            )
        return threshold(float(scores[self.on_index]), self.at, self.state_labels)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check_labels(labels: Sequence[str], classes: int | None, problem: Problem) -> None:
    if labels and classes is not None and len(labels) != classes:
        raise problem(None, f"{len(labels)} labels but the output has {classes} classes")
