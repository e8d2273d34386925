"""edgert.config: model.toml parsing, defaults and validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgert.config import ModelConfig, Tolerance
from edgert.errors import ConfigError
from edgert.sections import BatchingSection, ImageSection
from edgert.spec import DimRange


def parse(**data: Any) -> ModelConfig:
    return ModelConfig.from_dict(data, default_name="dflt")


def test_load_without_model_toml_uses_defaults(tmp_path: Path) -> None:
    model_dir = tmp_path / "occupancy"
    model_dir.mkdir()
    config = ModelConfig.load(model_dir)
    assert config.name == "occupancy"
    assert (config.version, config.source, config.precision) == ("1", "model.onnx", "fp32")
    assert config.labels == () and dict(config.dims) == {} and dict(config.inputs) == {}
    assert config.tolerance is None
    assert config.tolerance_for("fp16") == Tolerance.for_precision("fp16")


def test_load_reads_model_toml(tmp_path: Path) -> None:
    (tmp_path / "model.toml").write_text(
        'name = "kitchen"\nversion = 3\nprecision = "fp16"\nlabels = ["a", "b"]\n'
    )
    config = ModelConfig.load(tmp_path)
    assert (config.name, config.version, config.precision) == ("kitchen", "3", "fp16")
    assert config.labels == ("a", "b")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match=rf"^{path}: "):
        ModelConfig.load(tmp_path)


def test_dims_in_all_three_forms() -> None:
    config = parse(dims={"a": 4, "b": [1, 2, 8], "c": {"min": 1, "opt": 3, "max": 5}})
    assert dict(config.dims) == {
        "a": DimRange(4, 4, 4),
        "b": DimRange(1, 2, 8),
        "c": DimRange(1, 3, 5),
    }


def test_dims_table_opt_defaults_to_min() -> None:
    assert parse(dims={"b": {"min": 2, "max": 9}}).dims["b"] == DimRange(2, 2, 9)


DIMS = "a size, [min, opt, max] or { min, opt, max } of integers"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], f"expected {DIMS}, got [1, 2]"),
        ({"min": 1}, f"expected {DIMS}, got {{min = 1}}"),
        ({"min": 1, "max": 4, "typo": 2}, f"expected {DIMS}, got {{min = 1, max = 4, typo = 2}}"),
        (True, f"expected {DIMS}, got true"),
        ([1, 2.5, 4], f"expected {DIMS}, got [1, 2.5, 4]"),
        ([4, 2, 1], "dim bounds must satisfy 0 <= min <= opt <= max, got min=4 opt=2 max=1"),
        (-1, "dim bounds must satisfy 0 <= min <= opt <= max, got min=-1 opt=-1 max=-1"),
    ],
)
def test_invalid_dims(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(dims={"b": raw})
    assert caught.value.message == f"model.toml: [dims] b: {message}"


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict(data, default_name="dflt")
    return caught.value.message


def test_unknown_keys_name_the_nearest_known_one() -> None:
    assert refused({"dimz": {}}) == "model.toml: [dimz]: unknown table; did you mean [dims]?"
    assert refused({"versoin": "2"}) == (
        "model.toml: versoin: unknown key; did you mean version (at the top of the file)?"
    )
    # A key of another table, written under this one, names that table.
    assert refused({"postprocess": {"top_k": 1, "max_batch": 4}}) == (
        "model.toml: [postprocess] max_batch: unknown key; did you mean [batching] max_batch?"
    )
    assert refused({"outputs": {"y": {"from_output": "x"}}}) == (
        "model.toml: [outputs.y] from_output: unknown key; did you mean [inputs.y] from_output?"
    )
    assert refused({"preprocess": {"kind": "image", "rate": 16000}}) == (
        "model.toml: [preprocess] rate: unknown key; did you mean [preprocess] rate "
        '(kind = "audio")?'
    )
    assert refused({"batching": {"zzzz": 1}}) == (
        "model.toml: [batching] zzzz: unknown key; known: max_batch, max_queue_delay_us, "
        "instances, threads"
    )


def test_bad_precision() -> None:
    assert refused({"precision": "int4"}) == (
        'model.toml: precision: expected one of "fp32", "fp16", "int8", got "int4"'
    )


def test_constant_input_needs_a_value() -> None:
    assert refused({"inputs": {"sr": {"kind": "constant"}}}) == (
        'model.toml: [inputs.sr] value: missing; a kind = "constant" input needs it'
    )
    config = parse(inputs={"sr": {"kind": "constant", "value": 0}})
    assert config.constants() == {"sr": 0}


def test_unknown_input_kind() -> None:
    assert refused({"inputs": {"x": {"kind": "streamed"}}}) == (
        'model.toml: [inputs.x] kind: expected one of "request", "constant", "carried", '
        '"windowed", got "streamed"'
    )


@pytest.mark.parametrize(
    ("rng", "message"),
    [
        ([1.0], "expected a list of 2 numbers, got [1.0]"),
        ([2.0, 1.0], "expected [low, high] with low < high, got [2.0, 1.0]"),
        ([0.0, 0.0], "expected [low, high] with low < high, got [0.0, 0.0]"),
        (["a", "b"], 'expected a list of 2 numbers, got ["a", "b"]'),
        (5, "expected a list of 2 numbers, got 5"),
    ],
)
def test_bad_input_range(rng: Any, message: str) -> None:
    assert refused({"inputs": {"x": {"range": rng}}}) == f"model.toml: [inputs.x] range: {message}"


def test_input_fields_kept() -> None:
    x = parse(inputs={"x": {"shape": ["batch", 4], "range": [-1, 1]}}).inputs["x"]
    assert (x.kind, x.shape, x.range) == ("request", ("batch", 4), (-1.0, 1.0))
    state = parse(inputs={"s": {"kind": "carried", "from_output": "sN", "initial": 0.5}})
    assert (state.inputs["s"].from_output, state.inputs["s"].initial) == ("sN", 0.5)


def test_keys_of_another_input_kind_are_refused() -> None:
    assert refused({"inputs": {"x": {"initial": 0.5}}}) == (
        'model.toml: [inputs.x] initial: applies to kind = "carried" inputs, not "request"'
    )
    assert refused({"inputs": {"x": {"kind": "carried", "from_output": "y", "chunk": 4}}}) == (
        'model.toml: [inputs.x] chunk: applies to kind = "windowed" inputs, not "carried"'
    )


@pytest.mark.parametrize("shape", [[1, -2], ["batch", ""], [1.5], "batch"])
def test_bad_input_shape(shape: Any) -> None:
    assert refused({"inputs": {"x": {"shape": shape}}}).startswith(
        "model.toml: [inputs.x] shape: expected a list of sizes and dim names, got "
    )


@pytest.mark.parametrize("labels", [[1, 2], ["a", None], 3])
def test_labels_must_be_strings(labels: Any) -> None:
    assert refused({"labels": labels}).startswith(
        "model.toml: labels: expected a list of strings, or the name of a labels file"
    )


def test_parity_override_fills_missing_side_from_precision() -> None:
    config = parse(precision="fp16", parity={"atol": 0.5})
    assert config.tolerance == Tolerance(atol=0.5, rtol=Tolerance.for_precision("fp16").rtol)


def test_parity_override_must_be_numbers() -> None:
    assert refused({"parity": {"atol": "tight"}}) == (
        'model.toml: [parity] atol: expected a number >= 0, got "tight"'
    )


@pytest.mark.parametrize("key", ["dims", "inputs", "parity", "preprocess"])
def test_sections_must_be_tables(key: str) -> None:
    assert refused({key: 3}) == f"model.toml: [{key}]: expected a table, got 3"


def test_input_entry_must_be_a_table() -> None:
    assert refused({"inputs": {"x": 3}}) == "model.toml: [inputs.x]: expected a table, got 3"


def test_tables_are_typed() -> None:
    config = parse(
        preprocess={"kind": "image", "size": [224, 224]},
        homeassistant={"device_class": "motion"},
    )
    assert isinstance(config.preprocess, ImageSection) and config.preprocess.size == (224, 224)
    assert config.homeassistant.device_class == "motion"
    assert config.batching == BatchingSection() and config.postprocess is None


def test_config_is_read_only() -> None:
    config = parse(dims={"b": 2})
    with pytest.raises(TypeError):
        config.dims["c"] = DimRange(1, 1, 1)  # type: ignore[index]


def test_input_format_is_checked() -> None:
    config = ModelConfig.from_dict({"inputs": {"x": {"format": "raw"}}}, default_name="m")
    assert config.inputs["x"].format == "raw"
    assert refused({"inputs": {"x": {"format": "gif"}}}) == (
        'model.toml: [inputs.x] format: expected one of "json", "raw", "npy", "jpeg", "png", '
        '"wav", got "gif"'
    )
    assert refused({"inputs": {"x": {"kind": "constant", "value": 1, "format": "raw"}}}) == (
        'model.toml: [inputs.x] format: applies to kind = "request" inputs, not "constant"'
    )


def test_labels_from_a_file_beside_model_toml(tmp_path: Path) -> None:
    (tmp_path / "model.toml").write_text('labels = "labels.txt"\n')
    (tmp_path / "labels.txt").write_text("background\nperson\n\ncat\n")
    assert ModelConfig.load(tmp_path).labels == ("background", "person", "cat")
    (tmp_path / "model.toml").write_text('labels = "missing.txt"\n')
    with pytest.raises(ConfigError) as caught:
        ModelConfig.load(tmp_path)
    assert caught.value.message == (
        f"{tmp_path / 'model.toml'}: labels: labels file {tmp_path / 'missing.txt'}: "
        "No such file or directory"
    )


def test_errors_name_the_file_as_given(tmp_path: Path) -> None:
    (tmp_path / "model.toml").write_text('[preprocess]\nkind = "image"\nresize = "crop"\n')
    with pytest.raises(ConfigError) as caught:
        ModelConfig.load(tmp_path)
    assert caught.value.message == (
        f'{tmp_path / "model.toml"}: [preprocess] resize: expected one of "stretch", '
        '"letterbox", got "crop"'
    )
