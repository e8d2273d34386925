"""[preprocess] validation, and the package's exported names."""

from __future__ import annotations

from typing import Any

import pytest

import edgert.pipeline
from edgert.config import ModelConfig
from edgert.errors import ConfigError
from edgert.pipeline import Preprocess
from edgert.spec import DType, TensorSpec

IMAGE = TensorSpec("images", DType.FLOAT32, ("batch", 3, 64, 64))
DYNAMIC = TensorSpec("images", DType.FLOAT32, ("batch", 3, "h", "w"))
AUDIO = TensorSpec("input", DType.FLOAT32, ("batch", "samples"))


@pytest.mark.parametrize(
    ("section", "spec", "match"),
    [
        ({"kind": "image", "mean": [0.5]}, IMAGE, "mean must be a list of 3 numbers"),
        ({"kind": "image", "resize": "crop"}, IMAGE, "resize is 'crop'; one of stretch, letterbox"),
        ({"kind": "image", "colour": "rgb"}, IMAGE, "unknown key.*colour; known: .*color"),
        ({"kind": "image", "size": [32, 32]}, IMAGE, "size \\[32, 32\\] but .* has height 64"),
        ({"kind": "image"}, DYNAMIC, "dynamic height or width; set size"),
        ({"kind": "image", "std": [1, 0, 1]}, IMAGE, "std must not contain 0"),
        ({"kind": "image", "pad_value": 300}, IMAGE, "pad_value must be an integer in 0..255"),
        ({"kind": "image", "dtype": "uint8", "scale": 0.5}, IMAGE, "need a float dtype"),
        ({"kind": "image", "dtype": "int32"}, IMAGE, "float or uint8"),
        ({"kind": "image"}, TensorSpec("x", DType.FLOAT32, (1, 4, 8, 8)), "4 channels"),
        ({"kind": "image"}, AUDIO, "must have rank 4"),
        ({"kind": "video"}, IMAGE, "kind is 'video'; one of image, audio"),
        ({"size": [64, 64]}, IMAGE, "needs kind"),
        ({"kind": "audio"}, AUDIO, "audio needs rate"),
        ({"kind": "audio", "rate": 16000, "format": "mp3"}, AUDIO, "format is 'mp3'"),
        ({"kind": "audio", "rate": 16000, "size": 3}, AUDIO, "unknown key.*size; known: "),
        ({"kind": "audio", "rate": 0}, AUDIO, "rate must be a positive integer"),
        (
            {"kind": "audio", "rate": 16000},
            TensorSpec("x", DType.INT16, (1, 512)),
            "audio makes floats",
        ),
    ],
)
def test_config_errors(section: dict[str, Any], spec: TensorSpec, match: str) -> None:
    config = ModelConfig.from_dict({"preprocess": section}, default_name="m")
    with pytest.raises(ConfigError, match=match):
        Preprocess.of(config, spec)


def test_dynamic_dims_take_size() -> None:
    config = ModelConfig.from_dict(
        {"preprocess": {"kind": "image", "size": [48, 32]}}, default_name="m"
    )
    pre = Preprocess.of(config, DYNAMIC)
    assert pre is not None and pre.input == "images"


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
