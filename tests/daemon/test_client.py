"""``edgert.Client`` against the real daemon: what its catalogue declares is what a reply holds."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from edgert import Client
from edgert.client import RemoteError
from tests.daemon.conftest import Daemon

READING = [[22.5, 45.0, 480.0, 1150.0]]


def test_wait_ready_then_outputs_in_the_served_dtypes(daemon: Daemon) -> None:
    with Client(daemon.broker.url) as client:
        assert client.wait_ready("occupancy", 30) == daemon.node
        reply = client.infer("occupancy", np.array(READING, np.float32))
    assert set(reply.outputs) and all(o.dtype == np.float32 for o in reply.outputs.values())


def test_infer_payload_sends_a_devices_wav_on_its_stream(daemon: Daemon) -> None:
    """Chunks sent as WAV files (content type audio/wav, the stream in a user property) advance
    silero's state exactly as the same samples sent as JSON on another stream."""
    rng = np.random.default_rng(7)
    pcm = np.rint(rng.standard_normal(5 * 512) * 3000).astype("<i2")
    json_out, wav_out = [], []
    with Client(daemon.broker.url) as client:
        client.wait_ready("silero_vad", 30)
        for i in range(5):
            chunk = pcm[i * 512 : (i + 1) * 512]
            floats = (chunk.astype(np.float32) / 32768)[None]
            reply = client.infer("silero_vad", {"input": floats}, stream="as-json")
            json_out.append(reply.outputs["output"])
            body = io.BytesIO()
            with wave.open(body, "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
                w.writeframes(chunk.tobytes())
            reply = client.infer_payload(
                "silero_vad", body.getvalue(), "audio/wav", stream="as-wav", request_id=f"w{i}"
            )
            assert reply.id == f"w{i}"
            wav_out.append(reply.outputs["output"])
        with pytest.raises(RemoteError) as refused:  # occupancy has no [preprocess]
            client.infer_payload("occupancy", body.getvalue(), "audio/wav")
    assert refused.value.code == "bad_request"
    np.testing.assert_allclose(np.concatenate(wav_out), np.concatenate(json_out), atol=1e-6)
    assert len({round(float(o[0, 0]), 6) for o in json_out}) > 1  # the state did advance
