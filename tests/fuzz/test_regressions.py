"""Inputs the fuzzing found that escaped as other exceptions or were decoded unbounded; each
now gets its structured error."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from edgert.codec import PayloadError, decode_b64, decode_npy
from edgert.pipeline.image import ImagePre, decode_image
from tests.fuzz.payloads import npy_header, png_claiming

PRE = ImagePre(height=32, width=32, resize="letterbox", scale=1 / 255)


@pytest.mark.parametrize("shape", [[0, 2**64], [0, 2**63], [0, 2**62], [2**40, 0]])
def test_zero_size_b64_shape_with_a_huge_dim_is_too_large(shape: list[int]) -> None:
    # Was ValueError("Maximum allowed dimension exceeded") / ("array is too big") from np.zeros.
    with pytest.raises(PayloadError) as info:
        decode_b64({"dtype": "float32", "shape": shape, "b64": ""}, "x")
    assert info.value.code == "too_large"


@pytest.mark.parametrize("shape", [(0, 2**70), (0, 2**63), (2**62, 0)])
@pytest.mark.parametrize("fortran", [False, True])
def test_zero_size_npy_shape_with_a_huge_dim_is_too_large(
    shape: tuple[int, ...], fortran: bool
) -> None:
    header = f"{{'descr': '<f4', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    with pytest.raises(PayloadError) as info:
        decode_npy(npy_header(header))
    assert info.value.code == "too_large"


def test_a_small_png_claiming_9000x9000_is_refused_before_decoding() -> None:
    # 81M pixels in 236 KB of zlib: was decoded (~240 MB of RGB, seconds of CPU) then resized.
    width = height = 9000
    rows = zlib.compress(b"\0" * ((3 * width + 1) * height), 9)
    start = time.monotonic()
    with pytest.raises(PayloadError) as info:
        decode_image(png_claiming(width, height, rows), PRE)
    assert info.value.code == "too_large" and "9000x9000" in info.value.message
    assert time.monotonic() - start < 0.5


def test_pillows_bomb_warning_is_too_large_where_warnings_are_errors() -> None:
    # 100M pixels: Pillow warns (DecompressionBombWarning) before edgert sees the size; under
    # warnings-as-errors the warning escaped decode_image as an exception of its own.
    payload = png_claiming(10_000, 10_000, bytes(16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PayloadError) as info:
            decode_image(payload, PRE)
    assert info.value.code == "too_large"


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "GIF"])
def test_other_image_formats_are_named_and_never_parsed(fmt: str) -> None:
    # Pillow's TIFF parser warned (UserWarning: Corrupt EXIF data...) on bit-flipped TIFFs,
    # escaping under warnings-as-errors; only the JPEG and PNG plugins see payloads now.
    out = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out, format=fmt)
    corrupt = out.getvalue()[:40] + struct.pack("<I", 0xFFFFFFFF) + out.getvalue()[44:]
    for payload in (out.getvalue(), corrupt):
        with pytest.raises(PayloadError, match=f"{fmt}; send JPEG or PNG") as info:
            decode_image(payload, PRE)
        assert info.value.code == "bad_input"
