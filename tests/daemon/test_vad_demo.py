"""scripts/demo's audio part (scripts/vad-demo) against a real daemon and a real mosquitto: a
sentence spoken by espeak-ng, streamed as WAV chunks, and silero VAD firing where the voice is."""

from __future__ import annotations

import importlib.util
import io
import sys
import wave
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.daemon.conftest import Daemon, broker, compiled_repository, daemon  # noqa: F401

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vad-demo"


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    loader = SourceFileLoader("vad_demo", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # its dataclass looks its module up there
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clip(demo: ModuleType) -> object:
    return demo.speak()


def test_the_sentence_is_16_khz_speech_between_seconds_of_silence(
    demo: ModuleType, clip: object
) -> None:
    pcm, start, end = clip.pcm, clip.start, clip.end  # type: ignore[attr-defined]
    assert pcm.dtype == np.dtype("<i2")
    # espeak-ng's own lead-in is a few milliseconds; the sentence lasts seconds.
    assert 1.0 <= start < 1.1
    assert end - start > 2.0
    assert len(pcm) / demo.RATE - end >= 0.9
    assert not pcm[: demo.RATE].any() and not pcm[-demo.RATE :].any()
    with wave.open(io.BytesIO(demo.wav_bytes(pcm[:512])), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.readframes(512) == pcm[:512].tobytes()


def test_silero_fires_inside_the_spoken_span_and_not_in_the_silence(
    demo: ModuleType,
    clip: object,
    daemon: Daemon,  # noqa: F811
) -> None:
    probs = demo.listen(daemon.broker.url, clip)
    assert len(probs) == len(clip.pcm) // demo.CHUNK  # type: ignore[attr-defined]
    assert demo.problems(probs, clip) == []
    rows = demo.timeline(probs, clip)
    assert any("voice" in row and "#" in row for row in rows[1:])
    first_voice = next(i for i, row in enumerate(rows) if "voice" in row)
    assert all("#" not in row for row in rows[1:first_voice])  # the second before it


def test_the_check_fails_on_silence_or_on_speech_in_the_silence(
    demo: ModuleType, clip: object
) -> None:
    seconds = demo.CHUNK / demo.RATE
    count = len(clip.pcm) // demo.CHUNK  # type: ignore[attr-defined]
    inside = [clip.start <= i * seconds < clip.end for i in range(count)]  # type: ignore[attr-defined]
    good = [0.9 if spoken else 0.01 for spoken in inside]
    assert demo.problems(good, clip) == []
    assert "chunks inside the spoken span" in demo.problems([0.01] * count, clip)[0]
    early = [0.9, *good[1:]]
    assert demo.problems(early, clip) == ["speech in the silence before the voice (P = 0.90)"]
    late = [*good[:-1], 0.7]
    assert demo.problems(late, clip) == ["speech in the silence after the voice (P = 0.70)"]
