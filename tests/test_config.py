"""edgert.config: model.toml parsing, defaults and validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgert.config import ModelConfig, Tolerance
from edgert.errors import ConfigError
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


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ([1, 2], r"dims\.b must be a size, \[min, opt, max\]"),
        ({"min": 1}, r"dims\.b must be a size"),
        ({"min": 1, "max": 4, "typo": 2}, r"dims\.b must be a size"),
        (True, r"dims\.b must be a size"),
        ([1, 2.5, 4], r"dims\.b bounds must be integers"),
        ([4, 2, 1], r"dims\.b: dim bounds must satisfy"),
        (-1, r"dims\.b: dim bounds must satisfy"),
    ],
)
def test_invalid_dims(raw: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(dims={"b": raw})


def test_unknown_top_level_key_lists_known_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) dimz; known: .*dims.*precision"):
        parse(dimz={})


def test_bad_precision() -> None:
    with pytest.raises(ConfigError, match=r"precision is 'int4'; one of \('fp32', 'fp16', 'int8'"):
        parse(precision="int4")


def test_constant_input_needs_a_value() -> None:
    with pytest.raises(ConfigError, match=r"inputs\.sr is constant but has no value"):
        parse(inputs={"sr": {"kind": "constant"}})
    config = parse(inputs={"sr": {"kind": "constant", "value": 0}})
    assert config.constants() == {"sr": 0}


def test_unknown_input_kind() -> None:
    with pytest.raises(ConfigError, match=r"inputs\.x\.kind is 'streamed'"):
        parse(inputs={"x": {"kind": "streamed"}})


@pytest.mark.parametrize("rng", [[1.0], [2.0, 1.0], [0.0, 0.0], ["a", "b"], 5])
def test_bad_input_range(rng: Any) -> None:
    with pytest.raises(ConfigError, match=r"inputs\.x\.range must be \[low, high\]"):
        parse(inputs={"x": {"range": rng}})


def test_input_fields_and_extras_kept() -> None:
    x = parse(inputs={"x": {"shape": ["batch", 4], "range": [-1, 1], "initial": 0.5}}).inputs["x"]
    assert (x.kind, x.shape, x.range) == ("request", ("batch", 4), (-1.0, 1.0))
    assert dict(x.extra) == {"initial": 0.5}


@pytest.mark.parametrize("shape", [[1, -2], ["batch", ""], [1.5], "batch"])
def test_bad_input_shape(shape: Any) -> None:
    with pytest.raises(ConfigError, match=r"inputs\.x\.shape must be a list of sizes"):
        parse(inputs={"x": {"shape": shape}})


@pytest.mark.parametrize("labels", ["a,b", [1, 2], ["a", None]])
def test_labels_must_be_strings(labels: Any) -> None:
    with pytest.raises(ConfigError, match="labels must be a list of strings"):
        parse(labels=labels)


def test_parity_override_fills_missing_side_from_precision() -> None:
    config = parse(precision="fp16", parity={"atol": 0.5})
    assert config.tolerance == Tolerance(atol=0.5, rtol=Tolerance.for_precision("fp16").rtol)


def test_parity_override_must_be_numbers() -> None:
    with pytest.raises(ConfigError, match=r"parity\.atol/rtol must be numbers"):
        parse(parity={"atol": "tight"})


@pytest.mark.parametrize("key", ["dims", "inputs", "parity", "preprocess"])
def test_sections_must_be_tables(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key} must be a table"):
        parse(**{key: 3})


def test_input_entry_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"inputs\.x must be a table"):
        parse(inputs={"x": 3})


def test_raw_sections_kept_verbatim() -> None:
    config = parse(preprocess={"resize": [224, 224]}, homeassistant={"device_class": "motion"})
    assert dict(config.sections["preprocess"]) == {"resize": [224, 224]}
    assert dict(config.sections["homeassistant"]) == {"device_class": "motion"}
    assert "batching" not in config.sections


def test_config_is_read_only() -> None:
    config = parse(dims={"b": 2})
    with pytest.raises(TypeError):
        config.dims["c"] = DimRange(1, 1, 1)  # type: ignore[index]


def test_input_format_is_checked() -> None:
    config = ModelConfig.from_dict({"inputs": {"x": {"format": "raw"}}}, default_name="m")
    assert config.inputs["x"].format == "raw" and "format" not in config.inputs["x"].extra
    with pytest.raises(ConfigError, match="format is 'gif'"):
        ModelConfig.from_dict({"inputs": {"x": {"format": "gif"}}}, default_name="m")
    with pytest.raises(ConfigError, match="a request input's format"):
        ModelConfig.from_dict(
            {"inputs": {"x": {"kind": "constant", "value": 1, "format": "raw"}}},
            default_name="m",
        )


def test_labels_from_a_file_beside_model_toml(tmp_path: Path) -> None:
    (tmp_path / "model.toml").write_text('labels = "labels.txt"\n')
    (tmp_path / "labels.txt").write_text("background\nperson\n\ncat\n")
    assert ModelConfig.load(tmp_path).labels == ("background", "person", "cat")
    (tmp_path / "model.toml").write_text('labels = "missing.txt"\n')
    with pytest.raises(ConfigError, match=r"labels file .*missing\.txt"):
        ModelConfig.load(tmp_path)
