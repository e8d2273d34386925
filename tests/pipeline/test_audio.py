"""decode_audio: PCM16 and WAV (written here with the stdlib's wave module) → float samples."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from edgert.codec import PayloadError
from edgert.config import ModelConfig
from edgert.pipeline import AudioPre, Preprocess, decode_audio
from edgert.spec import DType, TensorSpec

SAMPLES = [0, 16384, -32768, 32767, -1]
EXPECTED = np.array([0.0, 0.5, -1.0, 32767 / 32768, -1 / 32768], np.float32)


def pcm(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def wav(samples: list[int], *, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        if width == 2:
            out.writeframes(pcm(samples))
        else:
            out.writeframes(bytes(128 + s // 256 for s in samples))
    return buf.getvalue()


def test_pcm16_to_float() -> None:
    out = decode_audio(pcm(SAMPLES), AudioPre(rate=16000))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, EXPECTED)


def test_wav_mono_pcm16_to_float() -> None:
    out = decode_audio(wav(SAMPLES), AudioPre(rate=16000, format="wav"))
    np.testing.assert_array_equal(out, EXPECTED)


def test_wav_with_extra_chunk_and_odd_padding() -> None:
    plain = wav(SAMPLES)
    # a LIST chunk of odd size (padded) between fmt and data
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\x00"
    data_at = plain.index(b"data")
    payload = plain[:data_at] + extra + plain[data_at:]
    payload = payload[:4] + struct.pack("<I", len(payload) - 8) + payload[8:]
    out = decode_audio(payload, AudioPre(rate=16000, format="wav"))
    np.testing.assert_array_equal(out, EXPECTED)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (wav(SAMPLES * 2, channels=2), "2 channels; the model takes mono 16-bit PCM at 16000 Hz"),
        (wav(SAMPLES, rate=8000), "8000 Hz; the model takes mono 16-bit PCM at 16000 Hz"),
        (wav(SAMPLES, width=1), "PCM 8-bit"),
        (wav(SAMPLES)[:-3], "truncated"),
        (pcm(SAMPLES), "not a WAV file"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no fmt chunk"),
    ],
    ids=["stereo", "8khz", "8bit", "truncated", "raw-pcm", "no-fmt"],
)
def test_bad_wavs_say_why(payload: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        decode_audio(payload, AudioPre(rate=16000, format="wav"))
    assert info.value.code == "bad_input"


@pytest.mark.parametrize(("payload", "match"), [(b"\x00\x01\x02", "odd"), (b"", "no samples")])
def test_bad_pcm16(payload: bytes, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        decode_audio(payload, AudioPre(rate=16000))


def test_preprocess_shapes_samples_to_the_input_rank() -> None:
    config = ModelConfig.from_dict(
        {"preprocess": {"kind": "audio", "rate": 16000, "format": "wav"}}, default_name="vad"
    )
    pre = Preprocess.of(config, TensorSpec("input", DType.FLOAT32, ("batch", "samples")))
    assert pre is not None
    tensor, transform = pre.decode(wav(SAMPLES))
    assert transform is None and tensor.shape == (1, 5)
    np.testing.assert_array_equal(tensor[0], EXPECTED)
