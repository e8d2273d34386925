"""compile → artifact → open_model → infer, against ONNX Runtime on the source (real runtimes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from edgert import (
    ArtifactError,
    BuildError,
    CompileOptions,
    IncompatibleArtifact,
    ModelCheckError,
    ModelDir,
    ModelLoadError,
    ParityError,
    UnboundedDimError,
    compile_model,
    open_model,
)
from edgert.onnx import io_specs, load_source, with_io_dims
from edgert.parity import random_samples
from tests.corpus import CASES
from tests.onnx.mlmodels import old_mlp, tree_classifier, write_model

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = ("occupancy", "silero_vad")


def reference(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The source run directly in ONNX Runtime, its unnamed dims named as edgert names them
    (ONNX Runtime reads dim_value 0 as a zero-size axis and cannot run that file as it is)."""
    model_dir = ModelDir(model_path.parent)
    source = load_source(model_path)
    model = with_io_dims(source.model, io_specs(source, model_dir.config))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-3, err_msg=name)


def build_dirs(model: ModelDir) -> list[str]:
    return sorted(p.name for p in model.build_dir.iterdir()) if model.build_dir.exists() else []


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_corpus_model_compiles_and_runs_like_onnxruntime(
    case: str, corpus: Callable[[str], Path]
) -> None:
    source = corpus(case)
    model = ModelDir(source.parent)
    result = compile_model(model, CompileOptions(backend="onnxruntime"))
    assert not result.cached
    assert result.artifact.manifest.parity["passed"] is True
    if case == "fixed_mlp":  # a fixed-shape model needs no model.toml at all
        assert not (source.parent / "model.toml").exists()

    loaded = open_model(model)
    try:
        for feeds in random_samples(loaded.runner.io, model.config, seed=7):
            request = {k: v for k, v in feeds.items() if k not in loaded.constants}
            assert_close(loaded.infer(request), reference(source, feeds), atol=1e-5)
    finally:
        loaded.close()


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of the example repository (sources fetched by scripts/fetch-models)."""
    root = tmp_path / "engines"
    for name in EXAMPLES:
        src = REPO / "engines" / name
        assert (src / "model.onnx").is_file(), f"run scripts/fetch-models first ({src})"
        shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("build"))
    return root


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_compile_and_run_equal_to_the_source(name: str, examples: Path) -> None:
    model = ModelDir(examples / name)
    compile_model(model)
    loaded = open_model(model)
    try:
        for feeds in random_samples(loaded.runner.io, model.config, seed=3):
            request = {k: v for k, v in feeds.items() if k not in loaded.constants}
            assert_close(loaded.infer(request), reference(model.source_path, feeds), atol=1e-5)
    finally:
        loaded.close()


def test_occupancy_classifies_its_samples(examples: Path) -> None:
    model = ModelDir(examples / "occupancy")
    compile_model(model)
    loaded = open_model(model)
    occupied = json.loads((model.path / "samples" / "occupied.json").read_text())
    empty = json.loads((model.path / "samples" / "empty_night.json").read_text())
    try:
        p_occ = loaded.infer({"readings": np.array(occupied["readings"], np.float32)})
        p_empty = loaded.infer({"readings": np.array(empty["readings"], np.float32)})
    finally:
        loaded.close()
    assert p_occ["probabilities"][0, 1] > 0.9
    assert p_empty["probabilities"][0, 0] > 0.9


def test_second_compile_is_a_cache_hit_and_force_rebuilds(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("dim_symbol").parent)
    first = compile_model(model)
    stamp = first.artifact.file.stat().st_mtime_ns
    again = compile_model(model)
    assert again.cached and again.artifact.path == first.artifact.path
    assert again.artifact.file.stat().st_mtime_ns == stamp
    forced = compile_model(model, CompileOptions(force=True))
    assert not forced.cached
    assert build_dirs(model) == [first.artifact.path.name]


def test_changed_bounds_give_a_new_artifact_and_the_old_one_is_stale(
    corpus: Callable[[str], Path],
) -> None:
    model = ModelDir(corpus("dim_symbol").parent)
    first = compile_model(model)
    toml = model.path / "model.toml"
    toml.write_text(toml.read_text().replace("max = 32", "max = 16"))
    model = ModelDir(model.path)
    second = compile_model(model)
    assert second.artifact.path != first.artifact.path
    shutil.rmtree(second.artifact.path)
    with pytest.raises(IncompatibleArtifact, match="dim bounds"):
        open_model(ModelDir(model.path))


def test_fp16_build_passes_with_fp16_tolerance(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("dim_symbol").parent)
    result = compile_model(model, CompileOptions(precision="fp16"))
    manifest = result.artifact.manifest
    assert manifest.key.precision == "fp16"
    assert manifest.parity["tolerance"]["atol"] == pytest.approx(1e-2)
    assert 0 < manifest.parity["outputs"]["y"]["max_abs"] < 1e-2


def test_fp16_parity_failure_keeps_nothing(corpus: Callable[[str], Path]) -> None:
    source = corpus("dim_symbol")
    toml = source.parent / "model.toml"
    # FP16 rounding is ~1e-3 relative: demand FP32 closeness so the check must catch it.
    toml.write_text(toml.read_text() + "\n[parity]\natol = 1e-7\nrtol = 1e-7\n")
    model = ModelDir(source.parent)
    with pytest.raises(ParityError, match=r"output 'y' differs .* at index"):
        compile_model(model, CompileOptions(precision="fp16"))
    assert build_dirs(model) == []


def test_int8_without_qdq_nodes_is_refused(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    with pytest.raises(BuildError, match="QuantizeLinear"):
        compile_model(model, CompileOptions(precision="int8"))
    assert build_dirs(model) == []


def test_truncated_source_writes_nothing(corpus: Callable[[str], Path]) -> None:
    source = corpus("fixed_mlp")
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    model = ModelDir(source.parent)
    with pytest.raises(ModelLoadError, match="truncated or not ONNX"):
        compile_model(model)
    assert not model.build_dir.exists()


def test_unbounded_dim_writes_nothing(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("dim_symbol").parent)
    (model.path / "model.toml").unlink()
    with pytest.raises(UnboundedDimError, match=r"\[dims\] batch = "):
        compile_model(model)
    assert not model.build_dir.exists()


def test_stale_source_is_refused_with_the_rebuild_command(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    compile_model(model)
    changed = onnx.load(str(model.source_path))
    changed.graph.initializer[0].float_data.append(0.0)  # any edit: a retrained model
    weights = onnx.numpy_helper.to_array(changed.graph.initializer[0]) * 2
    changed.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(weights, changed.graph.initializer[0].name)
    )
    onnx.save(changed, str(model.source_path))
    with pytest.raises(IncompatibleArtifact) as info:
        open_model(ModelDir(model.path))
    assert "changed since it was built (stale)" in info.value.message
    assert f"run: edgert compile {model.path}" in info.value.message


def test_artifact_for_another_machine_names_both_keys(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    artifact = compile_model(model).artifact
    manifest_path = artifact.path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["key"]["device"] = "cpu-riscv64"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(IncompatibleArtifact) as info:
        open_model(ModelDir(model.path))
    message = info.value.message
    assert "cpu-riscv64" in message and "this machine has cpu-" in message
    assert f"edgert compile {model.path}" in message


def test_corrupt_artifact_file_is_refused(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    artifact = compile_model(model).artifact
    artifact.file.write_bytes(b"\0" * 64)
    with pytest.raises(IncompatibleArtifact, match="sha256 differs"):
        open_model(ModelDir(model.path))


def test_uncompiled_model_says_how_to_compile(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    with pytest.raises(ArtifactError, match="no artifact built yet; run: edgert compile"):
        open_model(model)


def test_auto_records_why_it_chose_its_backend(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    auto = compile_model(model).artifact.manifest.notes
    assert auto[0].startswith("backend auto chose onnxruntime (tensorrt unavailable: ")
    forced = compile_model(model, CompileOptions(backend="onnxruntime", force=True))
    assert not any("backend auto" in n for n in forced.artifact.manifest.notes)


def test_serving_tells_stale_artifacts_without_parsing_the_onnx(
    corpus: Callable[[str], Path],
) -> None:
    """open_model re-hashes the files the manifest names (external data too) and compares the
    bounds in model.toml; the onnx package is never imported on that path."""
    model = ModelDir(corpus("external_data").parent)
    manifest = compile_model(model).artifact.manifest
    assert manifest.source_files == ("model.onnx", "model.onnx.data")
    probe = (
        "import sys; from pathlib import Path; from edgert import ModelDir, open_model; "
        f"open_model(ModelDir(Path({str(model.path)!r}))); "
        "print(sorted(m for m in ('onnx', 'typer', 'edgert.compile') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    data = model.path / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x3f")  # one weight retrained
    with pytest.raises(IncompatibleArtifact, match=r"changed since it was built \(stale\)"):
        open_model(ModelDir(model.path))


def test_changed_bounds_in_model_toml_make_the_artifact_stale(
    corpus: Callable[[str], Path],
) -> None:
    model = ModelDir(corpus("dim_symbol").parent)
    compile_model(model)
    toml = model.path / "model.toml"
    toml.write_text(toml.read_text().replace("32", "16"))
    with pytest.raises(IncompatibleArtifact, match=r"dim bounds .* \(stale\)"):
        open_model(ModelDir(model.path))


def test_manifests_from_before_source_files_still_load(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    artifact = compile_model(model).artifact
    manifest_path = artifact.path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    del data["source_files"]  # as edgert wrote them before it recorded them
    manifest_path.write_text(json.dumps(data))
    loaded = open_model(ModelDir(model.path))
    assert loaded.artifact.manifest.source_files == ()
    loaded.close()


# --------------------------------------------------------------------------------------------
# Capability and opsets on ONNX Runtime (the TensorRT side: tests/trt/test_capability.py)


def test_onnx_ml_pipelines_compile_for_onnxruntime(tmp_path: Path) -> None:
    """An ONNX-ML tree classifier, and one with a string label inside the graph, build and run
    on ONNX Runtime like the source; where TensorRT is unavailable that is no fallback."""
    for name, variant in (("forest", {}), ("named", {"string_labels": True})):
        model = ModelDir(write_model(tmp_path / name, tree_classifier(**variant)))
        result = compile_model(model)
        manifest = result.artifact.manifest
        assert manifest.key.backend == "onnxruntime" and result.parity["passed"]
        assert manifest.fallback == ""
        assert manifest.notes[0].startswith("backend auto chose onnxruntime (tensorrt unavailable")
        loaded = open_model(model)
        try:
            x = np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32)
            assert_close(loaded.infer({"x": x}), reference(model.source_path, {"x": x}), 1e-6)
        finally:
            loaded.close()


def test_zipmap_outputs_are_refused_as_not_tensors(tmp_path: Path) -> None:
    """ZipMap gives a sequence of maps: export scikit-learn models with zipmap=False."""
    model = ModelDir(write_model(tmp_path / "zipped", tree_classifier(zipmap=True)))
    with pytest.raises(ModelCheckError, match="output 'probabilities' is not a tensor"):
        compile_model(model)
    assert build_dirs(model) == []


def test_an_opset_below_onnxruntimes_is_converted_or_refused_with_the_range(
    tmp_path: Path,
) -> None:
    model = ModelDir(write_model(tmp_path / "static", old_mlp(6, batch=2)))
    result = compile_model(model, CompileOptions(backend="onnxruntime"))
    assert result.parity["passed"]
    assert result.artifact.manifest.notes == (
        f"converted from opset 6 to 7 for ONNX Runtime {ort.__version__} (onnx version converter)",
    )
    # A dynamic batch: onnx's converter cannot drop Gemm 6's `broadcast`, so nothing builds.
    model = ModelDir(write_model(tmp_path / "dynamic", old_mlp(6)))
    with pytest.raises(ModelCheckError) as info:
        compile_model(model)
    assert info.value.message.startswith(
        f"no available backend takes {model.source_path}: ONNX Runtime {ort.__version__} takes "
        "ai.onnx opsets 7 to "
    )
    assert build_dirs(model) == []


def test_manifests_from_before_fallback_still_load(corpus: Callable[[str], Path]) -> None:
    model = ModelDir(corpus("fixed_mlp").parent)
    artifact = compile_model(model).artifact
    manifest_path = artifact.path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    del data["fallback"]  # as edgert wrote them before it recorded fallbacks
    manifest_path.write_text(json.dumps(data))
    loaded = open_model(ModelDir(model.path))
    assert loaded.artifact.manifest.fallback == ""
    loaded.close()


def test_a_changed_output_shape_in_model_toml_makes_the_artifact_stale(tmp_path: Path) -> None:
    # A converter-style output: its batch axis named apart from the input's ('unk__7').
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["unk__7", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Softmax", ["x"], ["y"])], "g", [x], [y])
    model_path = tmp_path / "soft" / "model.onnx"
    model_path.parent.mkdir()
    opset = [onnx.helper.make_opsetid("", 17)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opset), model_path)
    toml = model_path.parent / "model.toml"
    toml.write_text('name = "soft"\n[dims]\nbatch = [1, 2, 8]\n')
    first = compile_model(ModelDir(model_path.parent))
    assert first.artifact.manifest.io.outputs[0].shape == ("unk__7", 4)
    toml.write_text(toml.read_text() + '[outputs.y]\nshape = ["batch", 4]\n')
    with pytest.raises(IncompatibleArtifact, match=r"output shapes .* \(stale\)"):
        open_model(ModelDir(model_path.parent))
    second = compile_model(ModelDir(model_path.parent))
    assert not second.cached and second.artifact.path != first.artifact.path
    loaded = open_model(ModelDir(model_path.parent))
    assert loaded.io.outputs[0].shape == ("batch", 4)
    loaded.close()
