"""Seeded ONNX models for the capability and opset tests: scikit-learn-like ONNX-ML pipelines
(which TensorRT cannot parse) and default-domain models at opsets around TensorRT's range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.corpus import make_model, mlp, tensor, write

__all__ = [
    "BATCH_BOUNDS",
    "CLASSES",
    "FEATURES",
    "old_mlp",
    "reduce_mean",
    "split18",
    "tree_classifier",
    "write_model",
]

FEATURES, CLASSES = 3, 3
BATCH_BOUNDS = "[dims]\nN = { min = 1, opt = 4, max = 16 }\n"
_ML = helper.make_opsetid("ai.onnx.ml", 3)


def tree_classifier(
    *, zipmap: bool = False, string_labels: bool = False, seed: int = 0
) -> onnx.ModelProto:
    """A scikit-learn-like pipeline: standard scaling (Sub, Mul), then an ONNX-ML
    TreeEnsembleClassifier of two stumps over three classes. Outputs ``label`` (int64 [N]) and
    ``probabilities`` (float [N, 3]); with ``zipmap`` the probabilities go through ZipMap (a
    sequence of maps, as skl2onnx exports by default); with ``string_labels`` the trees name
    their classes with strings, which a LabelEncoder maps back to int64 (a string tensor inside
    the graph, numeric IO)."""
    rng = np.random.default_rng(seed)
    mean = numpy_helper.from_array(rng.normal(size=FEATURES).astype(np.float32), "mean")
    scale = numpy_helper.from_array(rng.uniform(0.5, 2.0, FEATURES).astype(np.float32), "scale")
    trees = 2
    thresholds = rng.normal(scale=0.5, size=trees)
    weights = rng.uniform(0.0, 1.0, (trees, 2, CLASSES)) ** 4  # leaves lean to a class
    names = ["cat", "dog", "owl"]
    labels = {"classlabels_strings": names} if string_labels else {"classlabels_int64s": [0, 1, 2]}
    tree = helper.make_node(
        "TreeEnsembleClassifier",
        ["scaled"],
        ["label_text" if string_labels else "label", "scores"],
        domain="ai.onnx.ml",
        name="forest",
        nodes_treeids=[t for t in range(trees) for _ in range(3)],
        nodes_nodeids=[0, 1, 2] * trees,
        nodes_featureids=[t % FEATURES for t in range(trees) for _ in range(3)],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"] * trees,
        nodes_values=[v for t in range(trees) for v in (float(thresholds[t]), 0.0, 0.0)],
        nodes_truenodeids=[1, 0, 0] * trees,
        nodes_falsenodeids=[2, 0, 0] * trees,
        class_treeids=[t for t in range(trees) for _ in range(2 * CLASSES)],
        class_nodeids=[leaf for _ in range(trees) for leaf in (1, 2) for _ in range(CLASSES)],
        class_ids=[c for _ in range(trees * 2) for c in range(CLASSES)],
        class_weights=[float(w) for w in weights.ravel()],
        post_transform="NONE",
        **labels,
    )
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale"], ["scaled"]),
        tree,
    ]
    probabilities = tensor("probabilities", np.float32, ["N", CLASSES])
    if zipmap:
        nodes.append(
            helper.make_node(
                "ZipMap",
                ["scores"],
                ["probabilities"],
                domain="ai.onnx.ml",
                classlabels_int64s=[0, 1, 2],
            )
        )
        value = helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        map_type = helper.make_map_type_proto(TensorProto.INT64, value)
        probabilities = helper.make_value_info(
            "probabilities", helper.make_sequence_type_proto(map_type)
        )
    else:
        nodes.append(helper.make_node("Identity", ["scores"], ["probabilities"]))
    if string_labels:
        nodes.append(
            helper.make_node(
                "LabelEncoder",
                ["label_text"],
                ["label"],
                domain="ai.onnx.ml",
                keys_strings=names,
                values_int64s=[0, 1, 2],
                default_int64=-1,
            )
        )
    model = make_model(
        nodes,
        [tensor("x", np.float32, ["N", FEATURES])],
        [tensor("label", np.int64, ["N"]), probabilities],
        [mean, scale],
    )
    model.opset_import.append(_ML)
    return model


def reduce_mean(opset: int = 18) -> onnx.ModelProto:
    """x [N, 4] → ReduceMean over axis 1 → y [N, 1]; from opset 18 the axes are an input (an
    initializer here, so onnx's converter can turn them back into an attribute)."""
    if opset >= 18:
        axes = [numpy_helper.from_array(np.array([1], np.int64), "axes")]
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1, name="mean")
    else:
        axes = []
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1, name="mean")
    return make_model(
        [node],
        [tensor("x", np.float32, ["N", 4])],
        [tensor("y", np.float32, ["N", 1])],
        axes,
        opset,
    )


def split18() -> onnx.ModelProto:
    """Opset 18's Split by ``num_outputs``: onnx's converter has no adapter from 18 down."""
    node = helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2, name="halves")
    return make_model(
        [node],
        [tensor("x", np.float32, ["N", 4])],
        [tensor("a", np.float32, ["N", 2]), tensor("b", np.float32, ["N", 2])],
        opset=18,
    )


def old_mlp(opset: int = 7, batch: int | str = "N") -> onnx.ModelProto:
    """The corpus MLP (Gemm, Relu, Gemm) stamped with an old opset."""
    nodes, weights = mlp("x", "y")
    return make_model(
        nodes,
        [tensor("x", np.float32, [batch, 4])],
        [tensor("y", np.float32, [batch, 3])],
        weights,
        opset,
    )


def write_model(directory: Path, model: onnx.ModelProto) -> Path:
    """``model`` as ``directory/model.onnx`` with the batch bounds in model.toml."""
    return write(directory, model, BATCH_BOUNDS).parent
