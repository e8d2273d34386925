"""Pure pre- and post-processing declared in model.toml (no I/O): image and audio payloads into
tensors, and outputs into small JSON-able results (top-k, binary state, detections)."""

from edgert.pipeline.audio import AudioPre, decode_audio
from edgert.pipeline.detect import DETECT_LAYOUTS, Detect, decode_head, nms
from edgert.pipeline.image import ImagePre, Transform, decode_image
from edgert.pipeline.post import Postprocess, softmax, threshold, top_k
from edgert.pipeline.preprocess import Preprocess

__all__ = [
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
