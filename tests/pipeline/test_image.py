"""decode_image against references computed here with numpy (and PIL's resize where resized)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgert.codec import PayloadError
from edgert.config import ModelConfig
from edgert.pipeline import ImagePre, Preprocess, Transform, decode_image
from edgert.spec import DType, TensorSpec

W, H = 64, 48
RED, BLUE = (255, 0, 0), (0, 0, 255)
SQUARE = (16, 8, 32, 24)  # x1, y1, x2, y2 of the red square


def picture() -> np.ndarray:
    """[H, W, 3] uint8 RGB: blue with a red square."""
    pixels = np.zeros((H, W, 3), np.uint8)
    pixels[:] = BLUE
    x1, y1, x2, y2 = SQUARE
    pixels[y1:y2, x1:x2] = RED
    return pixels


def encode(pixels: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kw)
    return buf.getvalue()


def normalise(pixels: np.ndarray, scale: float, mean: list[float], std: list[float]) -> np.ndarray:
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out: np.ndarray = (pixels.astype(np.float32) * np.float32(scale) - m) / s
    return out.astype(np.float32)


def test_png_at_input_size_is_exact_nchw() -> None:
    pre = ImagePre(height=H, width=W, scale=1 / 255)
    tensor, transform = decode_image(encode(picture(), "PNG"), pre)
    assert tensor.shape == (1, 3, H, W) and tensor.dtype == np.float32
    expected = np.zeros((1, 3, H, W), np.float32)
    expected[0, 2] = 1.0  # blue everywhere ...
    x1, y1, x2, y2 = SQUARE
    expected[0, :, y1:y2, x1:x2] = 0.0
    expected[0, 0, y1:y2, x1:x2] = 1.0  # ... but the square
    np.testing.assert_array_equal(tensor, expected)
    assert transform == Transform(1.0, 1.0, 0.0, 0.0, W, H)


def test_png_bgr_nhwc_mean_std_is_exact() -> None:
    mean, std = [0.5, 0.25, 0.125], [0.5, 2.0, 4.0]
    pre = ImagePre(
        height=H,
        width=W,
        color="bgr",
        layout="nhwc",
        scale=1 / 255,
        mean=(0.5, 0.25, 0.125),
        std=(0.5, 2.0, 4.0),
    )
    tensor, _ = decode_image(encode(picture(), "PNG"), pre)
    expected = normalise(picture()[..., ::-1], 1 / 255, mean, std)[np.newaxis]
    assert tensor.shape == (1, H, W, 3)
    np.testing.assert_array_equal(tensor, expected)
    # the square's pixel in BGR: channel 2 is red
    assert tensor[0, 10, 20, 2] == pytest.approx((1.0 - 0.125) / 4.0)


def test_png_stretch_matches_pil_bilinear() -> None:
    pre = ImagePre(height=30, width=40, scale=1 / 255)
    tensor, transform = decode_image(encode(picture(), "PNG"), pre)
    ref = Image.fromarray(picture()).resize((40, 30), Image.Resampling.BILINEAR)
    expected = normalise(np.asarray(ref), 1 / 255, [0, 0, 0], [1, 1, 1]).transpose(2, 0, 1)
    np.testing.assert_array_equal(tensor[0], expected)
    assert transform == Transform(40 / W, 30 / H, 0.0, 0.0, W, H)


def test_letterbox_without_resize_pads_top_and_bottom() -> None:
    pre = ImagePre(height=64, width=64, resize="letterbox", pad_value=114, layout="nhwc")
    tensor, transform = decode_image(encode(picture(), "PNG"), pre)
    expected = np.full((64, 64, 3), 114, np.float32)
    expected[8:56] = picture()  # (64 - 48) / 2 = 8 rows of padding above and below
    np.testing.assert_array_equal(tensor[0], expected)
    assert transform == Transform(1.0, 1.0, 0.0, 8.0, W, H)


def test_letterbox_downscale_places_the_resized_image() -> None:
    # 64x48 into 32 wide, 48 high: gain 0.5 → 32x24, 12 rows of padding above and below.
    pre = ImagePre(height=48, width=32, resize="letterbox", pad_value=0, layout="nhwc")
    tensor, transform = decode_image(encode(picture(), "PNG"), pre)
    inner = np.asarray(Image.fromarray(picture()).resize((32, 24), Image.Resampling.BILINEAR))
    expected = np.zeros((48, 32, 3), np.float32)
    expected[12:36] = inner
    np.testing.assert_array_equal(tensor[0], expected)
    assert transform == Transform(0.5, 0.5, 0.0, 12.0, W, H)
    # the square's centre (24, 16) lands at x 24/2, y 16/2 + 12, and is pure red
    assert tuple(tensor[0, 8 + 12, 12]) == (255.0, 0.0, 0.0)
    # a box drawn round the square in model pixels maps back to the square exactly
    box = np.array([[8.0, 4.0 + 12, 16.0, 12.0 + 12]])
    np.testing.assert_array_equal(transform.to_original(box), [SQUARE])


def test_jpeg_within_tolerance() -> None:
    pre = ImagePre(height=H, width=W, scale=1 / 255)
    payload = encode(picture(), "JPEG", quality=95, subsampling=0)
    assert payload[:2] == b"\xff\xd8"
    tensor, _ = decode_image(payload, pre)
    expected = normalise(picture(), 1 / 255, [0, 0, 0], [1, 1, 1]).transpose(2, 0, 1)
    diff = np.abs(tensor[0] - expected)
    assert diff.mean() < 0.01
    # away from the square's edges JPEG is near exact
    x1, y1, x2, y2 = SQUARE
    assert diff[:, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].max() < 4 / 255
    assert diff[:, :, 40:].max() < 4 / 255


def test_grey_and_rgba_pngs_become_rgb() -> None:
    pre = ImagePre(height=2, width=2, layout="nhwc")
    grey = encode(np.full((2, 2), 7, np.uint8), "PNG")
    np.testing.assert_array_equal(decode_image(grey, pre)[0], np.full((1, 2, 2, 3), 7.0))
    rgba = encode(np.full((2, 2, 4), 9, np.uint8), "PNG")
    np.testing.assert_array_equal(decode_image(rgba, pre)[0], np.full((1, 2, 2, 3), 9.0))


def test_uint8_dtype_keeps_raw_pixels() -> None:
    pre = ImagePre(height=H, width=W, dtype=DType.UINT8, layout="nhwc")
    tensor, _ = decode_image(encode(picture(), "PNG"), pre)
    assert tensor.dtype == np.uint8
    np.testing.assert_array_equal(tensor[0], picture())


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"", "empty"),
        (b"hello, not an image", "not a JPEG or PNG"),
        (encode(picture(), "PNG")[:60], "cannot be decoded"),
        (encode(picture(), "JPEG")[:300], "cannot be decoded"),
        (encode(picture(), "GIF"), "GIF; send JPEG or PNG"),
    ],
    ids=["empty", "garbage", "truncated-png", "truncated-jpeg", "gif"],
)
def test_bad_images_are_bad_input(payload: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        decode_image(payload, ImagePre(height=4, width=4))
    assert info.value.code == "bad_input"


def test_preprocess_of_takes_size_and_layout_from_the_spec() -> None:
    config = ModelConfig.from_dict(
        {"preprocess": {"kind": "image", "resize": "letterbox", "scale": 1 / 255}},
        default_name="det",
    )
    pre = Preprocess.of(config, TensorSpec("images", DType.FLOAT32, ("batch", 3, 32, 48)))
    assert pre is not None and isinstance(pre.step, ImagePre)
    assert (pre.step.height, pre.step.width, pre.step.layout) == (32, 48, "nchw")
    nhwc = Preprocess.of(config, TensorSpec("x", DType.FLOAT16, (1, 24, 24, 3)))
    assert nhwc is not None and isinstance(nhwc.step, ImagePre)
    assert (nhwc.step.layout, nhwc.step.dtype) == ("nhwc", DType.FLOAT16)
    tensor, transform = nhwc.decode(encode(picture(), "PNG"))
    assert tensor.shape == (1, 24, 24, 3) and tensor.dtype == np.float16
    assert transform == Transform(24 / 64, 18 / 48, 0.0, 3.0, W, H)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.FLOAT16])
@pytest.mark.parametrize(
    ("mean", "std"),
    [((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ((0.485, 0.456, 0.406), (0.229, 1, 0.225))],
)
def test_tensor_equals_the_formula_bit_for_bit(
    layout: str, color: str, dtype: DType, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    """Every layout, channel order, dtype and normalisation gives exactly
    ``(pixel * scale - mean) / std`` in float32, then the dtype, C-contiguous."""
    pixels = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    pre = ImagePre(
        height=H,
        width=W,
        layout=layout,
        color=color,
        scale=1 / 255,  # type: ignore[arg-type]
        mean=mean,
        std=std,
        dtype=dtype,  # type: ignore[arg-type]
    )
    tensor, _ = decode_image(encode(pixels, "PNG"), pre)
    ordered = pixels[..., ::-1] if color == "bgr" else pixels
    expected = normalise(ordered, 1 / 255, list(mean), list(std))
    if layout == "nchw":
        expected = expected.transpose(2, 0, 1)
    expected = expected[np.newaxis].astype(dtype.numpy)
    assert tensor.dtype == expected.dtype and tensor.flags.c_contiguous
    assert tensor.tobytes() == expected.tobytes()
