"""What a backend takes (edgert.onnx.capability): unsupported ops, domains and values, and
opsets converted with onnx's version converter or refused with the supported range."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, shape_inference

from edgert.backends.onnxrt import KIND as ONNXRUNTIME
from edgert.errors import ModelCheckError
from edgert.onnx.capability import (
    Capability,
    Unsupported,
    fit_opset,
    tensorrt_parser,
    unsupported,
)
from tests.corpus import make_model, tensor
from tests.onnx.mlmodels import old_mlp, reduce_mean, split18, tree_classifier

TRT86, TRT10, TRT11 = "8.6.1", "10.3.0", "11.4.0.106"


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


@pytest.mark.parametrize(
    ("version", "low", "high"),
    [(TRT86, 9, 17), ("8.6.2", 9, 17), (TRT10, 9, 20), ("10.15.1", 9, 24), (TRT11, 9, 25)],
)
def test_tensorrt_parser_opsets_per_version(version: str, low: int, high: int) -> None:
    capability = tensorrt_parser(version)
    assert capability.opsets == {"ai.onnx": (low, high)}
    assert capability.name == f"TensorRT {version}"
    assert not capability.strings and not capability.other_domains


@pytest.mark.parametrize(
    ("variant", "ops", "values"),
    [
        ({}, ("ai.onnx.ml::TreeEnsembleClassifier",), ()),
        (
            {"zipmap": True},
            ("ai.onnx.ml::TreeEnsembleClassifier", "ai.onnx.ml::ZipMap"),
            ("'probabilities' (sequence)",),
        ),
        (
            {"string_labels": True},
            ("ai.onnx.ml::LabelEncoder", "ai.onnx.ml::TreeEnsembleClassifier"),
            ("'label_text' (string tensor)",),
        ),
    ],
)
def test_onnx_ml_ops_and_strings_are_what_tensorrt_cannot_take(
    variant: dict[str, bool], ops: tuple[str, ...], values: tuple[str, ...]
) -> None:
    model = shape_inference.infer_shapes(tree_classifier(**variant))
    found = unsupported(model, tensorrt_parser(TRT10))
    assert found == Unsupported(ops, values)
    assert found.describe().startswith(f"op(s) it has no importer for: {', '.join(ops)}")
    assert not unsupported(model, ONNXRUNTIME.capability())  # ONNX Runtime takes all of it


def test_default_domain_ops_without_an_importer_and_subgraphs_are_found() -> None:
    unique = helper.make_node("Unique", ["x"], ["u"])
    body = helper.make_graph(
        [unique],
        "then",
        [],
        [tensor("u", np.float32, None)],
    )
    branch = helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body)
    model = make_model(
        [branch],
        [tensor("cond", np.bool_, []), tensor("x", np.float32, [4])],
        [tensor("y", np.float32, None)],
    )
    assert unsupported(model, tensorrt_parser(TRT86)).ops == ("Unique",)
    assert not unsupported(old_mlp(17), tensorrt_parser(TRT86))


def test_an_opset_above_the_range_is_converted_down() -> None:
    model = reduce_mean(18)
    converted, note = fit_opset(model, tensorrt_parser(TRT86))
    assert note == "converted from opset 18 to 17 for TensorRT 8.6.1 (onnx version converter)"
    assert [(o.domain, o.version) for o in converted.opset_import] == [("", 17)]
    (node,) = converted.graph.node
    assert [a.name for a in node.attribute if a.name == "axes"] == ["axes"]  # input → attribute
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(converted, {"x": x})[0], _run(model, {"x": x})[0])
    # Within the range: the model itself, no note.
    same, none = fit_opset(model, tensorrt_parser(TRT10))
    assert same is model and none == ""


def test_an_old_opset_is_converted_up() -> None:
    model = old_mlp(7)
    converted, note = fit_opset(model, tensorrt_parser(TRT11))
    assert note == "converted from opset 7 to 9 for TensorRT 11.4.0.106 (onnx version converter)"
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(converted, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6)
    # ONNX Runtime runs opset 7 as it is.
    assert fit_opset(model, ONNXRUNTIME.capability()) == (model, "")


def test_a_conversion_onnx_cannot_do_is_refused_with_the_range() -> None:
    with pytest.raises(ModelCheckError) as info:
        fit_opset(split18(), tensorrt_parser(TRT86))
    message = info.value.message
    assert message.startswith(
        "TensorRT 8.6.1 takes ai.onnx opsets 9 to 17; the model is opset 18 and onnx's version "
        "converter cannot convert it to 17: "
    )
    assert "No Adapter From Version $18 for Split" in message
    assert message.endswith("Export it at an opset from 9 to 17")


def test_an_opset_6_gemm_with_a_dynamic_batch_cannot_be_converted_for_onnxruntime() -> None:
    """Gemm 6 → 7 drops `broadcast`, which the converter does only for static shapes."""
    with pytest.raises(ModelCheckError, match=r"ONNX Runtime [\d.]+ takes ai.onnx opsets 7 to"):
        fit_opset(old_mlp(6), ONNXRUNTIME.capability())


def test_another_domains_opset_out_of_range_is_refused() -> None:
    model = tree_classifier()
    capability = Capability("Old runtime", {"ai.onnx": (7, 17), "ai.onnx.ml": (1, 2)})
    with pytest.raises(ModelCheckError) as info:
        fit_opset(model, capability)
    assert info.value.message == (
        "Old runtime takes ai.onnx.ml opsets 1 to 2; the model imports ai.onnx.ml opset 3, which "
        "onnx's version converter cannot convert (it converts the default domain only)"
    )


def test_onnxruntime_range_is_what_the_installed_onnxruntime_runs() -> None:
    """Read from ONNX Runtime's own schemas, and checked by experiment: it runs a model at the
    newest opset it reports and refuses the next one."""
    low, high = ONNXRUNTIME.capability().opsets["ai.onnx"]
    assert low == 7 and high >= 17
    assert ONNXRUNTIME.capability().opsets["ai.onnx.ml"][1] >= 3
    x = np.ones((2, 4), np.float32)
    relu = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor("x", np.float32, [2, 4])],
        [tensor("y", np.float32, [2, 4])],
        opset=high,
        ir_version=10,
    )
    assert _run(relu, {"x": x})[0].shape == (2, 4)
    relu.opset_import[0].version = high + 1
    with pytest.raises(Exception, match="opset"):
        _run(relu, {"x": x})
