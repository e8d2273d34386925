"""``edgert init``: a starter model.toml that names every dynamic dim, bounds it with placeholders,
comments every key, compiles as written, and never overwrites a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgert.config import ModelConfig
from edgert.starter import PLACEHOLDER, read_inputs, starter_toml
from tests.corpus import IN, OUT, make_model, mlp, tensor, write
from tests.test_cli import edgert, one_line_error


def sequence_model(directory: Path, name: str = "model.onnx") -> Path:
    """x [batch, seq, 4] and mask [batch, seq] (the exporter named both dims, shared), bias [?]
    (a dim left unnamed): y = MLP(sum over seq of x * mask) + sum(bias), [batch, 3]."""
    nodes, weights = mlp("pooled", "logits", seed=31)
    nodes = [
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["x", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["pooled"], keepdims=0),
        *nodes,
        helper.make_node("ReduceSum", ["bias"], ["offset"], keepdims=1),
        helper.make_node("Add", ["logits", "offset"], ["y"]),
    ]
    weights += [
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    model = make_model(
        nodes,
        [
            tensor("x", np.float32, ["batch", "seq", IN]),
            tensor("mask", np.float32, ["batch", "seq"]),
            tensor("bias", np.float32, [None]),
        ],
        [tensor("y", np.float32, ["batch", OUT])],
        weights,
    )
    path = write(directory, model)
    return path.rename(directory / name) if name != path.name else path


def test_init_then_compile_a_model_with_dynamic_axes(tmp_path: Path) -> None:
    model_dir = tmp_path / "seq"
    source = sequence_model(model_dir)
    refused = edgert("compile", model_dir)  # without bounds it cannot build
    assert "no bounds" in one_line_error(refused)

    made = edgert("init", source)
    assert made.returncode == 0, made.stderr
    toml = model_dir / "model.toml"
    config = ModelConfig.load(model_dir)
    # The exporter's names kept (one dim for the axes that share one), the unnamed one named.
    assert set(config.dims) == {"batch", "seq", "bias_0"}
    assert all(d.as_list() == list(PLACEHOLDER) for d in config.dims.values())
    assert config.inputs["bias"].shape == ("bias_0",)
    assert config.inputs["x"].shape is None  # its dims are the exporter's: nothing to rename
    for line in toml.read_text().splitlines():  # every key says what it is
        if line and not line.startswith(("#", "[")):
            assert "  # " in line or " # " in line, line

    built = edgert("compile", model_dir)
    assert built.returncode == 0, built.stdout + built.stderr
    assert list((model_dir / "build").glob("*/manifest.json"))


def test_init_refuses_to_overwrite_in_one_line_exit_2(tmp_path: Path) -> None:
    source = sequence_model(tmp_path / "seq")
    toml = tmp_path / "seq" / "model.toml"
    toml.write_text('name = "mine"\n')
    result = edgert("init", source)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {toml} exists; edgert init does not overwrite it"]
    assert toml.read_text() == 'name = "mine"\n'


def test_init_of_a_directory_and_of_another_file_name(tmp_path: Path) -> None:
    source = sequence_model(tmp_path / "seq", name="exported.onnx")
    assert edgert("init", source).returncode == 0
    config = ModelConfig.load(tmp_path / "seq")
    assert config.source == "exported.onnx"
    assert config.name == "seq"
    other = sequence_model(tmp_path / "other")
    assert edgert("init", other.parent).returncode == 0
    assert (tmp_path / "other" / "model.toml").is_file()


def test_init_of_a_file_that_is_not_onnx_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"not a model")
    assert "not a readable ONNX model" in one_line_error(edgert("init", bad))
    assert not (tmp_path / "bad" / "model.toml").exists()


def test_generated_names_do_not_take_an_exporters_name(tmp_path: Path) -> None:
    """An unnamed dim of input x would be x_0, but the exporter already calls a dim x_0."""
    model = make_model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [tensor("x", np.float32, ["?", IN]), tensor("w", np.float32, ["x_0", IN])],
        [tensor("y", np.float32, [None, IN])],
    )
    inputs = read_inputs(model)
    assert [i.names for i in inputs] == [["x_0_2", IN], ["x_0", IN]]


def test_fixed_shapes_need_no_dims_and_odd_names_are_quoted(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Relu", ["input.1"], ["out"])],
        [tensor("input.1", np.float32, [1, IN])],
        [tensor("out", np.float32, [1, IN])],
    )
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, str(path))
    text = starter_toml(path)
    assert "\n[dims]\n" not in text
    assert '[inputs."input.1"]' in text
    (path.parent / "model.toml").write_text(text)
    config = ModelConfig.load(path.parent)
    assert set(config.inputs) == {"input.1"} and not config.dims
    assert edgert("compile", path.parent).returncode == 0
