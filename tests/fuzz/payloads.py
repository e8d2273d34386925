"""Byte-level builders for fuzzed payloads: ``.npy`` files and hand-made headers, images and WAVs
(whole, or a header claiming any size in front of any body), and mutations of valid bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = [
    "JPEG_SOI",
    "bitflip",
    "image_bytes",
    "jpeg_claiming",
    "npy_bytes",
    "npy_header",
    "png_claiming",
    "splice",
    "wav_bytes",
]

JPEG_SOI = b"\xff\xd8\xff"


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npy_header(header: str, version: tuple[int, int] = (1, 0)) -> bytes:
    """``\\x93NUMPY`` + version + a header dict given as text (any text at all), padded as numpy
    pads it; the caller appends the data."""
    text = header.encode("latin-1", "replace")
    size_bytes = 2 if version[0] == 1 else 4
    prefix = 6 + 2 + size_bytes
    text += b" " * ((64 - (prefix + len(text) + 1) % 64) % 64) + b"\n"
    size = struct.pack("<H" if size_bytes == 2 else "<I", len(text) % (1 << (8 * size_bytes)))
    return b"\x93NUMPY" + bytes(version) + size + text


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, body: bytes, *, color: int = 2) -> bytes:
    """A PNG signature and a valid IHDR saying ``width`` x ``height``, then ``body``: an IDAT of
    whatever ``body`` is (zlib or not) and IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int, body: bytes) -> bytes:
    """A JPEG start and a baseline SOF0 saying ``width`` x ``height`` (3 components), then
    ``body`` where the tables and scan would be."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return JPEG_SOI[:2] + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + body


def image_bytes(width: int, height: int, fmt: str, mode: str = "RGB", seed: int = 0) -> bytes:
    """A real ``fmt`` (JPEG or PNG) image of noise, ``mode`` L, RGB, RGBA, P, I;16 or CMYK."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    else:
        rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        img = rgb.convert(mode)
    if fmt == "JPEG" and img.mode not in ("L", "RGB", "CMYK"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def wav_bytes(
    data: bytes,
    *,
    rate: int = 16000,
    channels: int = 1,
    bits: int = 16,
    tag: int = 1,
    fmt_size: int = 16,
    data_size: int | None = None,
    riff_size: int | None = None,
) -> bytes:
    """A RIFF/WAVE file with a fmt chunk saying what the arguments say (true or not), and a data
    chunk whose stated size is ``data_size`` (default: the truth)."""
    byte_rate = rate * channels * bits // 8 % (1 << 32)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, 2, bits)
    fmt = fmt.ljust(min(fmt_size, 64), b"\0")[:fmt_size]  # the stated size may be a lie
    chunks = b"fmt " + struct.pack("<I", fmt_size % (1 << 32)) + fmt
    size = len(data) if data_size is None else data_size
    chunks += b"data" + struct.pack("<I", size % (1 << 32)) + data
    riff = len(chunks) + 4 if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff % (1 << 32)) + b"WAVE" + chunks


def bitflip(data: bytes, positions: list[int]) -> bytes:
    """``data`` with one bit flipped at each of ``positions`` (taken modulo its bit length)."""
    if not data:
        return data
    out = bytearray(data)
    for p in positions:
        p %= 8 * len(out)
        out[p // 8] ^= 1 << (p % 8)
    return bytes(out)


def splice(data: bytes, at: int, junk: bytes, cut: int = 0) -> bytes:
    """``data`` with ``cut`` bytes at ``at`` (modulo its length) replaced by ``junk``."""
    at = at % (len(data) + 1)
    return data[:at] + junk + data[at + cut :]
