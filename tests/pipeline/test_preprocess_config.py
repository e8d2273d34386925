"""[preprocess] validation, and the package's exported names."""

from __future__ import annotations

from typing import Any

import pytest

import edgert.pipeline
from edgert.config import ModelConfig
from edgert.errors import ConfigError
from edgert.pipeline import Preprocess
from edgert.pipeline.image import ImagePre
from edgert.spec import DType, TensorSpec

IMAGE = TensorSpec("images", DType.FLOAT32, ("batch", 3, 64, 64))
DYNAMIC = TensorSpec("images", DType.FLOAT32, ("batch", 3, "h", "w"))
AUDIO = TensorSpec("input", DType.FLOAT32, ("batch", "samples"))


def _refused(section: dict[str, Any], spec: TensorSpec) -> str:
    """The one line a [preprocess] table is refused with, read or checked against ``spec``."""
    with pytest.raises(ConfigError) as caught:
        Preprocess.of(ModelConfig.from_dict({"preprocess": section}, default_name="m"), spec)
    message = caught.value.message
    assert message.startswith("model.toml: [preprocess]"), message
    return message.removeprefix("model.toml: [preprocess]")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kind": "image", "mean": [0.5]}, " mean: expected a list of 3 numbers, got [0.5]"),
        (
            {"kind": "image", "resize": "crop"},
            ' resize: expected one of "stretch", "letterbox", got "crop"',
        ),
        (
            {"kind": "image", "colour": "rgb"},
            " colour: unknown key; did you mean [preprocess] color?",
        ),
        ({"kind": "image", "std": [1, 0, 1]}, " std: must not contain 0, got [1.0, 0.0, 1.0]"),
        ({"kind": "image", "pad_value": 300}, " pad_value: expected an integer in 0..255, got 300"),
        (
            {"kind": "image", "dtype": "int32"},
            ' dtype: expected one of "float32", "float16", "float64", "uint8", got "int32"',
        ),
        (
            {"kind": "image", "size": [64, 0]},
            " size: expected a list of 2 integers >= 1, got [64, 0]",
        ),
        ({"kind": "video"}, ' kind: expected one of "image", "audio", got "video"'),
        ({"size": [64, 64]}, ' kind: missing; expected one of "image", "audio"'),
        ({"kind": "audio"}, " rate: missing; expected an integer >= 1"),
        (
            {"kind": "audio", "rate": 16000, "format": "mp3"},
            ' format: expected one of "pcm16", "wav", got "mp3"',
        ),
        (
            {"kind": "audio", "rate": 16000, "size": 3},
            ' size: unknown key; did you mean [preprocess] size (kind = "image")?',
        ),
        ({"kind": "audio", "rate": 0}, " rate: expected an integer >= 1, got 0"),
        ({"kind": "audio", "rate": 16000.0}, " rate: expected an integer >= 1, got 16000.0"),
        ({"kind": "image", "scale": float("nan")}, " scale: expected a finite number, got nan"),
    ],
)
def test_file_errors(section: dict[str, Any], message: str) -> None:
    """Refused when model.toml is read, whatever the input."""
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict({"preprocess": section}, default_name="m")
    assert caught.value.message == f"model.toml: [preprocess]{message}"


@pytest.mark.parametrize(
    ("section", "spec", "message"),
    [
        (
            {"kind": "image", "size": [32, 32]},
            IMAGE,
            " size: [32, 32] but input 'images' [batch, 3, 64, 64] has height 64",
        ),
        (
            {"kind": "image"},
            DYNAMIC,
            " size: missing; input 'images' [batch, 3, h, w] has a dynamic height or width: "
            "set size = [height, width]",
        ),
        (
            {"kind": "image", "dtype": "uint8", "scale": 0.5},
            IMAGE,
            " dtype: uint8 takes raw pixels; scale, mean and std need a float dtype",
        ),
        (
            {"kind": "image"},
            TensorSpec("x", DType.INT32, (1, 3, 8, 8)),
            " dtype: input 'x' is int32; an image tensor is float or uint8",
        ),
        (
            {"kind": "image"},
            TensorSpec("x", DType.FLOAT32, (1, 4, 8, 8)),
            " layout: input 'x' [1, 4, 8, 8] has 4 channels in layout nchw; image "
            "pre-processing makes 3",
        ),
        (
            {"kind": "image"},
            AUDIO,
            " kind: image input 'input' must have rank 4, it is [batch, samples]",
        ),
        (
            {"kind": "audio", "rate": 16000},
            TensorSpec("x", DType.INT16, (1, 512)),
            " kind: audio input 'x' is int16; audio makes a float tensor of samples",
        ),
    ],
)
def test_errors_against_the_input(section: dict[str, Any], spec: TensorSpec, message: str) -> None:
    """Refused when the model loads: they need the input's spec."""
    assert _refused(section, spec) == message


def test_dynamic_dims_take_size() -> None:
    config = ModelConfig.from_dict(
        {"preprocess": {"kind": "image", "size": [48, 32]}}, default_name="m"
    )
    pre = Preprocess.of(config, DYNAMIC)
    assert pre is not None and pre.input == "images"


def test_dims_fixed_in_model_toml_give_the_size() -> None:
    """[dims] h = 48 fixes a dynamic dim as if the ONNX had: no size needed; a size that
    disagrees with it, or bounds that leave it open, are refused."""
    config = ModelConfig.from_dict(
        {"dims": {"h": 48, "w": [32, 32, 32]}, "preprocess": {"kind": "image"}}, default_name="m"
    )
    pre = Preprocess.of(config, DYNAMIC)
    assert pre is not None and isinstance(pre.step, ImagePre)
    assert (pre.step.height, pre.step.width) == (48, 32)
    wrong = ModelConfig.from_dict(
        {"dims": {"h": 48, "w": 32}, "preprocess": {"kind": "image", "size": [32, 32]}},
        default_name="m",
    )
    with pytest.raises(ConfigError, match=r"size: \[32, 32\] but input .* has height 48"):
        Preprocess.of(wrong, DYNAMIC)
    open_ = ModelConfig.from_dict(
        {"dims": {"h": [32, 48, 64], "w": 32}, "preprocess": {"kind": "image"}}, default_name="m"
    )
    with pytest.raises(ConfigError, match="size: missing; input 'images'"):
        Preprocess.of(open_, DYNAMIC)


def test_no_section_is_none() -> None:
    assert Preprocess.of(ModelConfig(name="m"), IMAGE) is None


def test_exported_names() -> None:
    assert sorted(edgert.pipeline.__all__) == sorted(
        [
            "DETECT_LAYOUTS",
            "AudioPre",
            "Detect",
            "ImagePre",
            "Postprocess",
            "Preprocess",
            "Transform",
            "decode_audio",
            "decode_head",
            "decode_image",
            "nms",
            "softmax",
            "threshold",
            "top_k",
        ]
    )
    assert all(hasattr(edgert.pipeline, name) for name in edgert.pipeline.__all__)
