"""The TensorRT capability check and opset handling, on the emulated TensorRT of each version.

What TensorRT's ONNX parser cannot take (ONNX-ML ops, strings) falls back to ONNX Runtime under
``--backend auto`` (the reason in the manifest and in ``edgert list``) and is a clear error under
``--backend tensorrt``; an opset outside the parser's range is converted, or refused with the
range. The emulator refuses those models by rules of its own (any node outside the default
domain, any string value, any op defined after the parser's newest opset), so these tests would
fail if edgert's check let such a model through to the parser.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgert import ModelDir, compile_model, open_model
from edgert.compile import CompileOptions
from edgert.errors import ModelCheckError
from edgert.onnx import io_specs, load_source, with_io_dims
from edgert.onnx.capability import fit_opset, tensorrt_parser
from tests.onnx.mlmodels import (
    FEATURES,
    old_mlp,
    reduce_mean,
    split18,
    tree_classifier,
    write_model,
)
from tests.trt.bindings import VERSIONS
from tests.trt.test_emulator import Emu

NEWEST = {"8": 17, "10": 20, "11": 25}  # what the emulator's parser of each major takes


def _edgert(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgert", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def _reference(model: ModelDir, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = load_source(model.source_path)
    prepared = with_io_dims(source.model, io_specs(source, model.config))
    session = ort.InferenceSession(prepared.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES)).astype(np.float32)


def _nothing_built(model: ModelDir) -> bool:
    return not model.build_dir.exists() or not any(model.build_dir.iterdir())


def test_onnx_ml_model_falls_back_to_onnxruntime_under_auto_and_is_served(
    emulated: str, tmp_path: Path
) -> None:
    model = ModelDir(write_model(tmp_path / "forest", tree_classifier()))
    result = compile_model(model)  # --backend auto; TensorRT is available
    manifest = result.artifact.manifest
    assert manifest.key.backend == "onnxruntime" and result.parity["passed"]
    reason = (
        f"TensorRT {emulated} cannot take {model.source_path}: op(s) it has no importer for: "
        "ai.onnx.ml::TreeEnsembleClassifier"
    )
    assert manifest.fallback == reason
    assert manifest.notes[0] == f"backend auto chose onnxruntime ({reason})"

    listing = _edgert("list", "--repository", str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    assert f"forest {result.artifact.path.name}: built for onnxruntime because {reason}" in (
        listing.stdout
    )
    assert "backend tensorrt: available" in listing.stdout

    # Served the way `edgert run` and the daemon open models: auto finds no engine, takes ORT.
    loaded = open_model(model)
    try:
        assert loaded.artifact.manifest.key.backend == "onnxruntime"
        x = _features(7)
        got = loaded.infer({"x": x})
        label, probabilities = _reference(model, {"x": x})
        np.testing.assert_array_equal(got["label"], label)
        np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-6)
    finally:
        loaded.close()


@pytest.mark.parametrize(
    ("variant", "named"),
    [
        ({}, "ai.onnx.ml::TreeEnsembleClassifier"),
        (
            {"string_labels": True},
            "ai.onnx.ml::LabelEncoder, ai.onnx.ml::TreeEnsembleClassifier; value(s) of types "
            "it cannot hold: 'label_text' (string tensor)",
        ),
    ],
)
def test_backend_tensorrt_refuses_naming_the_ops(
    emulated: str, tmp_path: Path, variant: dict[str, bool], named: str
) -> None:
    model = ModelDir(write_model(tmp_path / "forest", tree_classifier(**variant)))
    want = (
        f"TensorRT {emulated} cannot take {model.source_path}: op(s) it has no importer for: "
        f"{named}; --backend onnxruntime (or auto, which falls back to it) builds it"
    )
    with pytest.raises(ModelCheckError) as info:
        compile_model(model, CompileOptions(backend="tensorrt"))
    assert info.value.message == want
    assert _nothing_built(model)
    run = _edgert("compile", str(model.path), "--backend", "tensorrt")
    assert run.returncode == 1 and run.stdout == ""
    assert " ".join(run.stderr.split()) == f"error: {want}"
    # The same model builds for ONNX Runtime when asked by name: no notes of a fallback.
    built = compile_model(model, CompileOptions(backend="onnxruntime")).artifact.manifest
    assert built.fallback == "" and built.notes == ()


def test_an_opset_above_the_parsers_range_is_converted(emulated: str, tmp_path: Path) -> None:
    """ReduceMean-18 takes its axes as an input: 8.6 (opsets up to 17) gets it converted; the
    emulated 8.6 parser refuses it unconverted."""
    model = ModelDir(write_model(tmp_path / "mean", reduce_mean(18)))
    result = compile_model(model, CompileOptions(backend="tensorrt"))
    manifest = result.artifact.manifest
    assert manifest.key.backend == "tensorrt" and result.parity["passed"]
    conversion = f"converted from opset 18 to 17 for TensorRT {emulated} (onnx version converter)"
    assert (conversion in manifest.notes) == emulated.startswith("8.")
    loaded = open_model(model, backend="tensorrt")
    try:
        x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
        np.testing.assert_allclose(loaded.infer({"x": x})["y"], _reference(model, {"x": x})[0])
    finally:
        loaded.close()


def test_an_old_opset_is_converted_up_to_the_parsers_lowest(emulated: str, tmp_path: Path) -> None:
    model = ModelDir(write_model(tmp_path / "old", old_mlp(7)))
    result = compile_model(model)
    manifest = result.artifact.manifest
    assert manifest.key.backend == "tensorrt" and result.parity["passed"]
    assert manifest.notes == (
        "backend auto chose tensorrt",
        f"converted from opset 7 to 9 for TensorRT {emulated} (onnx version converter)",
    )
    assert manifest.fallback == ""


def test_an_opset_that_cannot_be_converted(emulated: str, tmp_path: Path) -> None:
    """Split-18 (num_outputs) has no converter adapter down to 17: TensorRT 8.6 refuses it with
    its range, and auto falls back to ONNX Runtime; later versions parse opset 18."""
    model = ModelDir(write_model(tmp_path / "halves", split18()))
    if not emulated.startswith("8."):
        assert compile_model(model).artifact.manifest.key.backend == "tensorrt"
        return
    with pytest.raises(ModelCheckError) as info:
        compile_model(model, CompileOptions(backend="tensorrt"))
    refusal = (
        "TensorRT 8.6.1 takes ai.onnx opsets 9 to 17; the model is opset 18 and onnx's version "
        "converter cannot convert it to 17: "
    )
    assert info.value.message.startswith(refusal)
    assert _nothing_built(model)
    manifest = compile_model(model).artifact.manifest
    assert manifest.key.backend == "onnxruntime" and manifest.fallback.startswith(refusal)


# --------------------------------------------------------------------------------------------
# The emulated parser refuses by its own rules, whatever edgert checks first.


@pytest.mark.parametrize("version", VERSIONS)
def test_the_emulated_parser_refuses_onnx_ml_as_tensorrt_reports_it(version: str) -> None:
    emu = Emu(version)
    _, _, ok = emu.network(tree_classifier())
    assert not ok
    assert "No importer registered for op: TreeEnsembleClassifier" in emu.errors()
    assert "Plugin not found" in emu.parser.get_error(0).desc()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_emulated_parser_refuses_ops_newer_than_its_opsets(version: str) -> None:
    newest = NEWEST[version.split(".")[0]]
    emu = Emu(version)
    _, _, ok = emu.network(reduce_mean(18))
    assert ok == (newest >= 18)
    if not ok:
        error = emu.parser.get_error(0)
        assert error.code() == emu.trt.ErrorCode.UNSUPPORTED_NODE
        assert "ReduceMean of opset 18" in error.desc() and f"up to {newest}" in error.desc()
        # What edgert sends instead: the model converted to the parser's newest opset.
        converted, _ = fit_opset(reduce_mean(18), tensorrt_parser(version))
        assert Emu(version).network(converted)[2]
    # An opset above the parser's whose ops are all older parses, as on a real parser.
    relu = old_mlp(17)
    relu.opset_import[0].version = newest + 1
    onnx.checker.check_model(relu)
    assert Emu(version).network(relu)[2]


# --------------------------------------------------------------------------------------------
# A real scikit-learn pipeline, exported with skl2onnx.


def test_scikit_learn_pipeline_end_to_end(emulated: str, tmp_path: Path) -> None:
    from skl2onnx import to_onnx  # the frameworks extra installs it (scripts/setup)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    pipeline = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=4, random_state=0))
    pipeline.fit(x, y)
    exported = to_onnx(pipeline, x[:1], options={"zipmap": False}, target_opset=17)
    directory = tmp_path / "sklearn"
    directory.mkdir()
    onnx.save(exported, str(directory / "model.onnx"))
    name = exported.graph.input[0].name
    # skl2onnx leaves the batch dim unnamed: edgert names it <input>.<axis>.
    batch = exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param or f"{name}.0"
    (directory / "model.toml").write_text(f'[dims]\n"{batch}" = {{ min = 1, opt = 4, max = 32 }}\n')
    model = ModelDir(directory)

    with pytest.raises(ModelCheckError, match=r"ai\.onnx\.ml::TreeEnsembleClassifier"):
        compile_model(model, CompileOptions(backend="tensorrt"))
    result = compile_model(model)
    manifest = result.artifact.manifest
    assert manifest.key.backend == "onnxruntime" and result.parity["passed"]
    assert "ai.onnx.ml::TreeEnsembleClassifier" in manifest.fallback
    listing = _edgert("list", "--repository", str(tmp_path))
    assert f"because TensorRT {emulated} cannot take" in listing.stdout

    loaded = open_model(model)
    try:
        got = loaded.infer({name: x[:16]})
        label = next(o.name for o in exported.graph.output if "label" in o.name)
        np.testing.assert_array_equal(got[label], pipeline.predict(x[:16]))
    finally:
        loaded.close()
