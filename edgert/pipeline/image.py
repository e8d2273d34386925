"""Image pre-processing: JPEG/PNG bytes → a model's image tensor, and the transform back.

Pillow is optional (the ``images`` extra) and imported only when an image is decoded. EXIF
orientation is ignored: the pixels are taken as stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgert.codec import PayloadError
from edgert.errors import BackendUnavailable, ConfigError
from edgert.schema import located
from edgert.sections import ImageSection
from edgert.spec import DimRange, DType, TensorSpec

__all__ = ["MAX_PIXELS", "ImagePre", "Transform", "decode_image"]

# The most pixels an image may have: an 8K frame. Checked against the header before decoding,
# since a small PNG can say 9000x9000 (~240 MB as RGB and seconds of CPU to decode).
MAX_PIXELS = 1 << 25
_FORMATS = ("JPEG", "PNG")  # no other Pillow plugin ever parses a payload
_OTHER_MAGIC = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}

Resize = Literal["stretch", "letterbox"]
Layout = Literal["nchw", "nhwc"]


@dataclass(frozen=True)
class Transform:
    """How the original image maps to the model's input: ``model = original * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int  # of the original image
    height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` x1, y1, x2, y2 boxes in model-input pixels → original pixels, clipped."""
        out: np.ndarray = np.array(boxes, dtype=np.float64)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.height)
        return out


@dataclass(frozen=True)
class ImagePre:
    """A validated ``[preprocess]`` section with ``kind = "image"``.

    The tensor is ``((pixel * scale) - mean) / std`` per channel (in ``color`` order), laid out as
    ``layout`` with a batch dim of 1, cast to ``dtype``. ``pad_value`` fills letterbox borders
    (in 0..255 pixel units, before scaling).
    """

    height: int
    width: int
    resize: Resize = "stretch"
    pad_value: int = 114
    color: Literal["rgb", "bgr"] = "rgb"
    layout: Layout = "nchw"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dtype: DType = DType.FLOAT32

    @classmethod
    def from_section(
        cls,
        section: ImageSection,
        spec: TensorSpec,
        where: str = "model.toml",
        dims: Mapping[str, DimRange] | None = None,
    ) -> ImagePre:
        """``[preprocess]`` checked against the input ``spec`` it feeds (rank 4, 3 channels);
        ``where``: the file, for errors; ``dims``: model.toml's bounds, where a named dim whose
        min is its max is a fixed size (an Ultralytics export leaves height and width dynamic)."""

        def problem(key: str, message: str) -> ConfigError:
            return ConfigError(f"{located(where, 'preprocess', key)}: {message}")

        if len(spec.shape) != 4:
            raise problem(
                "kind", f"image input '{spec.name}' must have rank 4, it is {spec.shape_text()}"
            )
        layout: Layout = section.layout or (
            "nhwc" if spec.shape[3] == 3 and spec.shape[1] != 3 else "nchw"
        )
        h_dim, w_dim, c_dim = (spec.shape[2], spec.shape[3], spec.shape[1])
        if layout == "nhwc":
            h_dim, w_dim, c_dim = spec.shape[1], spec.shape[2], spec.shape[3]
        if isinstance(c_dim, int) and c_dim != 3:
            raise problem(
                "layout",
                f"input '{spec.name}' {spec.shape_text()} has {c_dim} channels in layout "
                f"{layout}; image pre-processing makes 3",
            )
        bounds = dims or {}
        h_dim, w_dim = (_fixed(d, bounds) for d in (h_dim, w_dim))
        height, width = _size(section, spec, h_dim, w_dim, problem)
        dtype = DType(section.dtype) if section.dtype is not None else spec.dtype
        if not dtype.is_float and dtype is not DType.UINT8:
            raise problem(
                "dtype", f"input '{spec.name}' is {dtype.value}; an image tensor is float or uint8"
            )
        if not dtype.is_float and (
            section.scale != 1.0 or any(section.mean) or any(s != 1.0 for s in section.std)
        ):
            raise problem(
                "dtype", f"{dtype.value} takes raw pixels; scale, mean and std need a float dtype"
            )
        return cls(
            height=height,
            width=width,
            resize=section.resize,
            pad_value=section.pad_value,
            color=section.color,
            layout=layout,
            scale=section.scale,
            mean=section.mean,
            std=section.std,
            dtype=dtype,
        )


def _fixed(dim: int | str, dims: Mapping[str, DimRange]) -> int | str:
    bound = dims.get(dim) if isinstance(dim, str) else None
    return bound.min if bound is not None and bound.min == bound.max else dim


def _size(
    section: ImageSection,
    spec: TensorSpec,
    h_dim: int | str,
    w_dim: int | str,
    problem: Callable[[str, str], ConfigError],
) -> tuple[int, int]:
    """``size`` checked against the input's fixed height and width, or them."""
    if section.size is not None:
        for dim, size, what in zip((h_dim, w_dim), section.size, ("height", "width"), strict=True):
            if isinstance(dim, int) and dim != size:
                raise problem(
                    "size",
                    f"{list(section.size)} but input '{spec.name}' {spec.shape_text()} has "
                    f"{what} {dim}",
                )
        return section.size
    if isinstance(h_dim, int) and isinstance(w_dim, int):
        return h_dim, w_dim
    raise problem(
        "size",
        f"missing; input '{spec.name}' {spec.shape_text()} has a dynamic height or width: "
        f"set size = [height, width]",
    )


def _open_rgb(payload: bytes) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - the images extra is installed in dev
        raise BackendUnavailable(
            f"image pre-processing needs Pillow (pip install 'edgert[images]'): {exc}"
        ) from exc
    if not payload:
        raise PayloadError("bad_input", "image payload is empty")
    try:
        with Image.open(io.BytesIO(payload), formats=_FORMATS) as img:
            if img.format not in _FORMATS:  # a JPEG with MPO extensions, say
                raise PayloadError(
                    "bad_input",
                    f"image is {img.format or 'of an unknown format'}; send JPEG or PNG",
                )
            if img.width * img.height > MAX_PIXELS:
                raise PayloadError(
                    "too_large",
                    f"image is {img.width}x{img.height}; the limit is {MAX_PIXELS} pixels",
                )
            # Decoding happens here: a truncated file fails now, not later.
            return img.convert("RGB")
    except UnidentifiedImageError as exc:
        other = next((f for m, f in _OTHER_MAGIC.items() if payload.startswith(m)), None)
        if other is not None:
            raise PayloadError("bad_input", f"image is {other}; send JPEG or PNG") from exc
        raise PayloadError("bad_input", "payload is not a JPEG or PNG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PayloadError("bad_input", f"image cannot be decoded: {exc}") from exc
    # Pillow warns above 89M pixels, before MAX_PIXELS is checked; an error where warnings are.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadError("too_large", f"image is too large: {exc}") from exc


def _fit(img: Any, pre: ImagePre) -> tuple[Any, Transform]:
    from PIL import Image

    w, h = img.size
    if pre.resize == "stretch":
        out = (
            img
            if (w, h) == (pre.width, pre.height)
            else img.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
        )
        return out, Transform(pre.width / w, pre.height / h, 0.0, 0.0, w, h)
    gain = min(pre.width / w, pre.height / h)
    new_w, new_h = max(1, round(w * gain)), max(1, round(h * gain))
    pad_x, pad_y = (pre.width - new_w) // 2, (pre.height - new_h) // 2
    canvas = Image.new("RGB", (pre.width, pre.height), (pre.pad_value,) * 3)
    inner = (
        img if (w, h) == (new_w, new_h) else img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    )
    canvas.paste(inner, (pad_x, pad_y))
    return canvas, Transform(new_w / w, new_h / h, float(pad_x), float(pad_y), w, h)


def decode_image(payload: bytes, pre: ImagePre) -> tuple[np.ndarray, Transform]:
    """JPEG or PNG bytes → ``[1, 3, H, W]`` (or ``[1, H, W, 3]``) tensor, and its Transform.

    PayloadError("bad_input") when the payload is not a whole JPEG or PNG image.
    """
    fitted, transform = _fit(_open_rgb(payload), pre)
    return _tensor(np.asarray(fitted, dtype=np.uint8), pre), transform


def _tensor(pixels: np.ndarray, pre: ImagePre) -> np.ndarray:
    """``[H, W, 3]`` RGB pixels → the model's tensor. Laid out while still uint8, and scaled in
    one pass into the output; the mean and std passes only where they change a value."""
    if pre.color == "bgr":
        pixels = pixels[..., ::-1]
    if pre.layout == "nchw":
        pixels = pixels.transpose(2, 0, 1)
    if not pre.dtype.is_float:
        return np.ascontiguousarray(pixels[np.newaxis], dtype=pre.dtype.numpy)
    values = np.empty((1, *pixels.shape), dtype=np.float32)
    np.multiply(pixels, np.float32(pre.scale), out=values[0], dtype=np.float32)
    channels = (3, 1, 1) if pre.layout == "nchw" else (3,)
    if any(pre.mean):
        values -= np.asarray(pre.mean, np.float32).reshape(channels)
    if any(s != 1.0 for s in pre.std):
        values /= np.asarray(pre.std, np.float32).reshape(channels)
    return values if pre.dtype.numpy == np.float32 else values.astype(pre.dtype.numpy)
