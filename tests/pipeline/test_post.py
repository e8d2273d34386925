"""softmax, top_k, threshold, and Postprocess built from model.toml."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgert.config import ModelConfig
from edgert.errors import ConfigError, InferenceError
from edgert.pipeline import Postprocess, Transform, softmax, threshold, top_k
from edgert.spec import DType, ModelIO, TensorSpec


def test_softmax_is_stable_and_sums_to_one() -> None:
    probs = softmax(np.array([1000.0, 1000.0 + np.log(3.0)]))
    np.testing.assert_allclose(probs, [0.25, 0.75])
    rows = softmax(np.array([[0.0, 0.0], [0.0, np.log(4.0)]]))
    np.testing.assert_allclose(rows, [[0.5, 0.5], [0.2, 0.8]])


def test_top_k_orders_and_labels() -> None:
    probs = np.array([0.1, 0.6, 0.05, 0.25])
    assert top_k(probs, ["a", "b", "c", "d"], 2) == [
        {"label": "b", "score": 0.6},
        {"label": "d", "score": 0.25},
    ]
    # missing labels are the class number; k past the end gives all
    assert [r["label"] for r in top_k(probs, ["a"], 9)] == ["1", "3", "a", "2"]


def test_threshold() -> None:
    assert threshold(0.5, 0.5) == {"state": True, "score": 0.5}
    assert threshold(0.49994, 0.5) == {"state": False, "score": 0.4999}


def model(post: dict[str, Any], labels: list[str] | None = None) -> ModelConfig:
    data: dict[str, Any] = {"postprocess": post}
    if labels is not None:
        data["labels"] = labels
    return ModelConfig.from_dict(data, default_name="m")


def io(*outputs: TensorSpec) -> ModelIO:
    return ModelIO((TensorSpec("x", DType.FLOAT32, ("batch", 4)),), outputs, {})


LOGITS = TensorSpec("logits", DType.FLOAT32, ("batch", 3))
PROB = TensorSpec("prob", DType.FLOAT32, ("batch", 1))
BOXES = TensorSpec("output0", DType.FLOAT32, (1, 6, 8400))


def test_top_k_with_softmax_per_batch_item() -> None:
    post = Postprocess.of(
        model({"softmax": "logits", "top_k": 2}, ["a", "b", "c"]), io(PROB, LOGITS)
    )
    assert post is not None
    one = np.log(np.array([[1.0, 2.0, 5.0]]))
    assert post.apply({"logits": one, "prob": np.zeros((1, 1))}) == [
        {"label": "c", "score": 0.625},
        {"label": "b", "score": 0.25},
    ]
    two = np.log(np.array([[1.0, 2.0, 5.0], [6.0, 1.0, 1.0]]))
    assert [r[0]["label"] for r in post.apply({"logits": two})] == ["c", "a"]


def test_threshold_on_a_label_and_on_a_single_score() -> None:
    config = model({"threshold": 0.7, "on_label": "occupied"}, ["empty", "occupied"])
    two = TensorSpec("probs", DType.FLOAT32, ("batch", 2))
    post = Postprocess.of(config, io(two))
    assert post is not None
    on = {"state": True, "score": 0.8, "label": "occupied"}
    assert post.apply({"probs": np.array([[0.2, 0.8]])}) == on
    off = {"state": False, "score": 0.6, "label": "empty"}
    assert post.apply({"probs": np.array([[0.4, 0.6]])}) == off
    single = Postprocess.of(model({"threshold": 0.5}), io(PROB))
    assert single is not None
    assert single.apply({"prob": np.array([[0.25]])}) == {"state": False, "score": 0.25}


def test_a_threshold_names_its_state_by_the_label_there_is_one_for() -> None:
    # Home Assistant's event entity of a model has the model's labels as its event types:
    # a result names one, or none where the labels do not say.
    three = TensorSpec("probs", DType.FLOAT32, ("batch", 3))
    config = model({"threshold": 0.5, "on_label": "cat"}, ["dog", "cat", "bird"])
    post = Postprocess.of(config, io(three))
    assert post is not None
    assert post.apply({"probs": np.array([[0.2, 0.7, 0.1]])})["label"] == "cat"
    assert "label" not in post.apply({"probs": np.array([[0.6, 0.3, 0.1]])})  # which, if off?
    one = Postprocess.of(model({"threshold": 0.5}, ["person"]), io(PROB))
    assert one is not None
    assert one.apply({"prob": np.array([[0.9]])}) == {
        "state": True,
        "score": 0.9,
        "label": "person",
    }
    assert one.apply({"prob": np.array([[0.1]])}) == {"state": False, "score": 0.1}


def test_a_nan_score_is_no_state_and_no_label_not_off() -> None:
    # A sensor's failed read (a DHT22 gives NaN) makes the model's scores NaN: "empty" would be
    # a made-up answer, and Home Assistant would show it.
    assert threshold(float("nan"), 0.5) == {"state": None, "score": None}
    assert threshold(float("inf"), 0.5, ("off", "on")) == {"state": None, "score": None}
    config = model({"threshold": 0.7, "on_label": "occupied"}, ["empty", "occupied"])
    post = Postprocess.of(config, io(TensorSpec("probs", DType.FLOAT32, ("batch", 2))))
    assert post is not None
    nan = np.array([[np.nan, np.nan]], np.float32)
    assert post.apply({"probs": nan}) == {"state": None, "score": None}
    rows = post.apply({"probs": np.array([[0.1, 0.9], [np.nan, np.nan]], np.float32)})
    assert [r["state"] for r in rows] == [True, None]


def test_top_k_leaves_out_scores_that_are_not_numbers() -> None:
    probs = np.array([np.nan, 0.3, 0.6, np.nan])
    assert top_k(probs, ["a", "b", "c", "d"], 3) == [
        {"label": "c", "score": 0.6},
        {"label": "b", "score": 0.3},
    ]
    assert top_k(np.full(4, np.nan), ["a", "b", "c", "d"], 1) == []
    post = Postprocess.of(model({"softmax": "logits", "top_k": 1}, ["a", "b", "c"]), io(LOGITS))
    assert post is not None
    assert post.apply({"logits": np.array([[np.nan, 1.0, 2.0]])}) == []  # softmax spreads a NaN


def test_detect_applies_the_transform() -> None:
    post = Postprocess.of(
        model({"detect": "yolov8", "score_threshold": 0.5}, ["a", "b"]), io(BOXES)
    )
    assert post is not None and post.detect is not None
    assert post.detect.score_threshold == 0.5 and post.detect.iou_threshold == 0.45
    head = np.zeros((1, 6, 3), np.float32)
    head[0, :, 0] = [20, 20, 10, 10, 0.0, 0.9]  # class b at (15, 15)-(25, 25)
    result = post.apply({"output0": head}, Transform(0.5, 0.5, 0.0, 5.0, 100, 100))
    assert result == [{"label": "b", "score": 0.9, "box": [30.0, 20.0, 50.0, 40.0]}]


def test_missing_output_at_run_time() -> None:
    post = Postprocess.of(model({"top_k": 1}), io(LOGITS))
    assert post is not None
    with pytest.raises(InferenceError, match="needs output 'logits'"):
        post.apply({"other": np.zeros((1, 3))})


def test_no_section_is_none() -> None:
    assert Postprocess.of(ModelConfig(name="m"), io(LOGITS)) is None


@pytest.mark.parametrize(
    ("post", "message"),
    [
        ({"top_k": 1, "topk": 2}, " topk: unknown key; did you mean [postprocess] top_k?"),
        ({}, ": set exactly one of top_k, threshold, detect (got none)"),
        (
            {"top_k": 1, "threshold": 0.5},
            " threshold: set exactly one of top_k, threshold, detect (got top_k and threshold)",
        ),
        ({"top_k": 0}, " top_k: expected an integer >= 1, got 0"),
        (
            {"detect": "yolov9"},
            ' detect: expected one of "yolov5", "yolov8", "end2end", got "yolov9"',
        ),
        (
            {"detect": "end2end", "iou_threshold": 2},
            " iou_threshold: expected a number in [0, 1], got 2",
        ),
        ({"top_k": 1, "iou_threshold": 0.5}, " iou_threshold: applies with detect only"),
        ({"detect": "yolov8", "softmax": True}, " softmax: does not apply with detect"),
        ({"top_k": 1, "on_label": "a"}, " on_label: applies with threshold, not top_k"),
        (
            {"softmax": "a", "output": "logits", "top_k": 1},
            ' softmax: names "a" but output is "logits"',
        ),
        ({"softmax": 1, "top_k": 1}, " softmax: expected true or false or a string, got 1"),
    ],
)
def test_file_errors(post: dict[str, Any], message: str) -> None:
    """Refused when model.toml is read, whatever the outputs."""
    with pytest.raises(ConfigError) as caught:
        model(post)
    assert caught.value.message == f"model.toml: [postprocess]{message}"


@pytest.mark.parametrize(
    ("post", "labels", "outputs", "message"),
    [
        (
            {"top_k": 1, "output": "nope"},
            None,
            (LOGITS,),
            " output: no output 'nope'; outputs: logits",
        ),
        ({"top_k": 1}, ["a", "b"], (LOGITS,), ": 2 labels but the output has 3 classes"),
        (
            {"threshold": 0.5},
            None,
            (LOGITS,),
            " on_label: missing; output 'logits' has 3 scores: say which",
        ),
        (
            {"threshold": 0.5, "on_label": "x"},
            ["a", "b", "c"],
            (LOGITS,),
            " on_label: 'x' is not a label; labels: a, b, c",
        ),
        (
            {"threshold": 0.5, "softmax": True},
            None,
            (PROB,),
            " softmax: softmax over one score is always 1; use on_label",
        ),
        (
            {"detect": "yolov8"},
            ["a", "b", "c"],
            (BOXES,),
            ": 3 labels but the output has 2 classes",
        ),
        (
            {"detect": "yolov5"},
            None,
            (LOGITS,),
            " detect: yolov5 output 'logits' [batch, 3] must have rank 3",
        ),
    ],
)
def test_errors_against_the_outputs(
    post: dict[str, Any], labels: list[str] | None, outputs: tuple[TensorSpec, ...], message: str
) -> None:
    """Refused when the model loads: they need the outputs' specs."""
    with pytest.raises(ConfigError) as caught:
        Postprocess.of(model(post, labels), io(*outputs))
    assert caught.value.message == f"model.toml: [postprocess]{message}"


def test_one_score_with_two_labels_thresholds_to_the_second() -> None:
    """silero VAD: one P(speech) output, labels [silence, speech]."""
    spec = io(TensorSpec("p", DType.FLOAT32, ("batch", 1)))
    post = Postprocess.of(model({"threshold": 0.5}, ["silence", "speech"]), spec)
    assert post is not None
    speech = {"state": True, "score": 0.7, "label": "speech"}
    assert post.apply({"p": np.array([[0.7]], np.float32)}) == speech
    assert post.apply({"p": np.array([[0.2]], np.float32)})["label"] == "silence"
    with pytest.raises(ConfigError, match=r"^model.toml: \[postprocess\] on_label: .* is 'speech'"):
        Postprocess.of(
            model({"threshold": 0.5, "on_label": "silence"}, ["silence", "speech"]), spec
        )
