"""Audio pre-processing: PCM16 or WAV bytes → float32 samples in [-1, 1].

No resampling: a WAV must already be mono 16-bit PCM at the model's rate, and says so otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgert.codec import PayloadError
from edgert.errors import ConfigError
from edgert.schema import located
from edgert.sections import AudioSection
from edgert.spec import DType, TensorSpec

__all__ = ["AudioPre", "decode_audio"]

_PCM = 1
_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True)
class AudioPre:
    """A validated ``[preprocess]`` section with ``kind = "audio"``: the model's sample ``rate``
    and what a device sends, ``pcm16`` (raw little-endian mono samples) or ``wav``."""

    rate: int
    format: Literal["pcm16", "wav"] = "pcm16"
    dtype: DType = DType.FLOAT32

    @classmethod
    def from_section(
        cls, section: AudioSection, spec: TensorSpec, where: str = "model.toml"
    ) -> AudioPre:
        """``[preprocess]`` checked against the input ``spec`` it feeds (``where``: the file)."""
        if not spec.shape or not spec.dtype.is_float:
            what = "a scalar" if not spec.shape else spec.dtype.value
            raise ConfigError(
                f"{located(where, 'preprocess', 'kind')}: audio input '{spec.name}' is {what}; "
                f"audio makes a float tensor of samples"
            )
        return cls(rate=section.rate, format=section.format, dtype=spec.dtype)


def decode_audio(payload: bytes, pre: AudioPre) -> np.ndarray:
    """Mono samples as a 1-D float array (PCM16 / 32768, so in [-1, 1)).

    PayloadError("bad_input") for an odd byte count, an empty payload, a malformed WAV, or a WAV
    that is not mono 16-bit PCM at ``pre.rate``.
    """
    pcm = _wav_pcm(payload, pre.rate) if pre.format == "wav" else payload
    if not pcm:
        raise PayloadError("bad_input", "audio payload has no samples")
    if len(pcm) % 2:
        raise PayloadError(
            "bad_input", f"PCM16 audio has {len(pcm)} bytes, an odd count (2 bytes a sample)"
        )
    samples: np.ndarray = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768)
    return samples.astype(pre.dtype.numpy, copy=False)


def _wav_pcm(payload: bytes, rate: int) -> bytes:
    """The data chunk of a RIFF/WAVE file, after checking its format."""
    if len(payload) < 12 or payload[:4] != b"RIFF" or payload[8:12] != b"WAVE":
        raise PayloadError("bad_input", "payload is not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(payload):
        chunk_id, size = payload[pos : pos + 4], struct.unpack_from("<I", payload, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + size > len(payload):
                raise PayloadError("bad_input", "WAV fmt chunk is truncated")
            tag, channels, srate, _, _, bits = struct.unpack_from("<HHIIHH", payload, body)
            if tag == _EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", payload, body + 24)[0]  # sub-format GUID's start
            fmt = (tag, channels, srate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise PayloadError("bad_input", "WAV data chunk comes before its fmt chunk")
            _check_format(*fmt, rate=rate)
            end = body + size
            if size in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                end = len(payload)
            elif end > len(payload):
                raise PayloadError(
                    "bad_input",
                    f"WAV is truncated: data chunk says {size} bytes, "
                    f"{len(payload) - body} present",
                )
            return payload[body:end]
        pos = body + size + (size & 1)  # chunks are padded to an even size
    raise PayloadError("bad_input", "WAV has no data chunk" if fmt else "WAV has no fmt chunk")


def _check_format(tag: int, channels: int, srate: int, bits: int, *, rate: int) -> None:
    problems = []
    if tag != _PCM or bits != 16:
        what = "PCM" if tag == _PCM else f"format tag {tag:#x} (not PCM)"
        problems.append(f"{what} {bits}-bit")
    if channels != 1:
        problems.append(f"{channels} channels")
    if srate != rate:
        problems.append(f"{srate} Hz")
    if problems:
        raise PayloadError(
            "bad_input",
            f"WAV is {', '.join(problems)}; the model takes mono 16-bit PCM at {rate} Hz "
            f"(no resampling is done)",
        )
