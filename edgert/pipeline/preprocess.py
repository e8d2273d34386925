"""Pre-processing from model.toml's ``[preprocess]``: a device's image or audio bytes → a tensor.

::

    [preprocess]                  # image (JPEG or PNG in)
    kind = "image"
    size = [640, 640]             # [height, width]; default: the input's fixed dims (or
                                  # [dims] bounds with min = max)
    resize = "letterbox"          # stretch (default) | letterbox (keeps aspect, pads)
    pad_value = 114               # letterbox border, 0..255
    color = "rgb"                 # rgb | bgr
    layout = "nchw"               # nchw | nhwc; default: from the input's shape
    scale = 0.00392156862745098   # 1/255
    mean = [0.485, 0.456, 0.406]  # after scale, per channel in color order
    std = [0.229, 0.224, 0.225]
    dtype = "float32"             # default: the input's dtype (float or uint8)

    [preprocess]                  # audio
    kind = "audio"
    rate = 16000                  # the model's sample rate (required)
    format = "wav"                # pcm16 (raw little-endian, default) | wav (mono PCM16 at rate)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgert.pipeline.audio import AudioPre, decode_audio
from edgert.pipeline.image import ImagePre, Transform, decode_image
from edgert.sections import ImageSection

if TYPE_CHECKING:
    from edgert.config import ModelConfig
    from edgert.spec import TensorSpec

__all__ = ["Preprocess"]


@dataclass(frozen=True)
class Preprocess:
    """A validated ``[preprocess]`` section for one input; :meth:`decode` applies it."""

    input: str
    step: ImagePre | AudioPre
    rank: int

    @classmethod
    def of(cls, config: ModelConfig, spec: TensorSpec) -> Preprocess | None:
        """The pre-processing of input ``spec``, or None when model.toml has no ``[preprocess]``."""
        section = config.preprocess
        if section is None:
            return None
        if isinstance(section, ImageSection):
            step: ImagePre | AudioPre = ImagePre.from_section(
                section, spec, config.where, config.dims
            )
        else:
            step = AudioPre.from_section(section, spec, config.where)
        return cls(spec.name, step, len(spec.shape))

    def decode(self, payload: bytes) -> tuple[np.ndarray, Transform | None]:
        """The input tensor for ``payload``, and for images the Transform that maps boxes back.

        Audio samples are shaped to the input's rank with leading axes of 1 (``[1, N]`` for a
        ``[batch, samples]`` input).
        """
        if isinstance(self.step, ImagePre):
            return decode_image(payload, self.step)
        samples = decode_audio(payload, self.step)
        return samples.reshape((1,) * (self.rank - 1) + (-1,)), None
