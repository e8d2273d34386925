"""Stateful streams: silero VAD's state and context kept per stream id by the daemon."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edgert import ModelDir, open_model
from edgert.client import Client
from edgert.config import ModelConfig
from edgert.daemon.streams import StreamPlan, StreamStates
from edgert.errors import ConfigError, InputError
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon

CHUNK, CONTEXT, RATE = 512, 64, 16000


def _silero_reference(model: Path, audio: np.ndarray) -> list[float]:
    """silero-vad's own OnnxWrapper (its authors' loop: 512-sample chunks at 16 kHz, 64 samples
    of context, state carried) run on the stream alone: the probability of each chunk."""
    import torch
    from silero_vad.utils_vad import OnnxWrapper

    wrapper = OnnxWrapper(str(model), force_onnx_cpu=True)
    wrapper.reset_states()
    chunks = range(0, len(audio) - CHUNK + 1, CHUNK)
    return [float(wrapper(torch.from_numpy(audio[s : s + CHUNK].copy()), RATE)) for s in chunks]


def _audio(seed: int, chunks: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(chunks * CHUNK) / RATE
    tone = 0.5 * np.sin(2 * np.pi * (150 + 50 * seed) * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return (tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_three_interleaved_streams_match_silero_run_alone(
    daemon: Daemon, compiled_repository: Path
) -> None:
    chunks = 100
    audios = {f"mic{n}": _audio(n, chunks) for n in range(3)}
    source = compiled_repository / "silero_vad" / "model.onnx"
    expected = {name: _silero_reference(source, audio) for name, audio in audios.items()}
    got: dict[str, list[float]] = {name: [] for name in audios}
    with Client(daemon.broker.url) as client:
        for i in range(chunks):
            for name, audio in audios.items():  # interleaved, chunk by chunk
                chunk = audio[None, i * CHUNK : (i + 1) * CHUNK]
                reply = client.infer(
                    "silero_vad", {"input": chunk}, stream=name, reset=i == 0, timeout=10
                )
                got[name].append(float(reply.outputs["output"][0, 0]))
    for name in audios:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4)
    # The streams differ, so one stream's state leaking into another would show.
    assert np.abs(np.subtract(expected["mic0"], expected["mic1"])).max() > 1e-3


def _silero(compiled_repository: Path) -> tuple[StreamPlan, StreamStates]:
    loaded = open_model(ModelDir(compiled_repository / "silero_vad"))
    plan = StreamPlan.of(loaded.config, loaded.io)
    loaded.close()
    return plan, StreamStates(plan, loaded.io, ttl=0.5, cap=2)


def test_state_per_stream_reset_ttl_and_cap(compiled_repository: Path) -> None:
    plan, states = _silero(compiled_repository)
    assert [c.name for c in plan.carried] == ["state"] and plan.internal_outputs == {"stateN"}
    chunk = {"input": np.ones((1, CHUNK), np.float32)}
    first = states.feeds("a", False, chunk)
    assert first["input"].shape == (1, CHUNK + CONTEXT) and not first["input"][:, :CONTEXT].any()
    assert first["state"].shape == (2, 1, 128) and not first["state"].any()
    states.update("a", first, {"stateN": np.full((2, 1, 128), 7, np.float32)})
    second = states.feeds("a", False, chunk)
    assert (second["state"] == 7).all() and (second["input"][:, :CONTEXT] == 1).all()
    assert not states.feeds("a", True, chunk)["state"].any()  # reset starts over
    assert not states.feeds(None, False, chunk)["state"].any()  # no stream: initial state
    with pytest.raises(InputError, match="send reset"):
        states.update("a", second, {"stateN": np.full((2, 1, 128), 7, np.float32)})
        states.feeds("a", False, {"input": np.ones((2, CHUNK), np.float32)})
    states.feeds("b", False, chunk)
    states.feeds("c", False, chunk)
    assert len(states) == 2  # the cap: the least recently used went
    time.sleep(0.6)
    states.feeds("d", False, chunk)
    assert len(states) == 1  # the others idled past the TTL


def test_stream_config_is_checked(compiled_repository: Path) -> None:
    loaded = open_model(ModelDir(compiled_repository / "silero_vad"))
    loaded.close()
    base = {"inputs": {"input": {"kind": "windowed", "context": 64, "chunk": 512}}}
    bad_output = {"inputs": {"state": {"kind": "carried", "from_output": "nope"}}}
    bad_window = {"inputs": {"input": {"kind": "windowed", "context": 64, "chunk": 500}}}
    assert StreamPlan.of(ModelConfig.from_dict(base, default_name="v"), loaded.io).windowed
    with pytest.raises(ConfigError) as caught:
        StreamPlan.of(ModelConfig.from_dict(bad_output, default_name="v"), loaded.io)
    assert caught.value.message == (
        "model.toml: [inputs.state] from_output: expected an output (output, stateN), got 'nope'"
    )
    with pytest.raises(ConfigError) as caught:
        StreamPlan.of(ModelConfig.from_dict(bad_window, default_name="v"), loaded.io)
    assert caught.value.message == (
        "model.toml: [inputs.input] chunk: context 64 + chunk 500 must be the input's last dim, 576"
    )
    axis = {"inputs": {"state": {"kind": "carried", "from_output": "stateN", "batch_axis": 3}}}
    with pytest.raises(ConfigError) as caught:
        StreamPlan.of(ModelConfig.from_dict(axis, default_name="v"), loaded.io)
    assert caught.value.message == (
        "model.toml: [inputs.state] batch_axis: 3 is past the input's rank, 3"
    )


def test_state_table_sets_the_ttl_and_the_cap(compiled_repository: Path) -> None:
    loaded = open_model(ModelDir(compiled_repository / "silero_vad"))
    loaded.close()
    config = ModelConfig.from_dict({"state": {"ttl": 5, "max_streams": 3}}, default_name="v")
    plan = StreamPlan.of(config, loaded.io)
    states = StreamStates(plan, loaded.io)
    assert (plan.ttl, plan.cap, states.ttl, states.cap) == (5.0, 3, 5.0, 3)
    default = StreamStates(StreamPlan.of(ModelConfig(name="v"), loaded.io), loaded.io)
    assert (default.ttl, default.cap) == (300.0, 256)


def test_streams_are_batched_together_and_stay_in_order(compiled_repository: Path) -> None:
    """Chunks of 3 streams queued interleaved: each run takes one chunk of each stream (stacked
    along state's batch axis 1 and input's axis 0), and every stream still equals silero's loop
    run on it alone."""
    from edgert.daemon.ledger import RequestLedger, Waiter
    from edgert.daemon.stats import ModelStats
    from edgert.daemon.worker import Job, ModelWorker
    from tests.daemon.test_batcher import Replies

    loaded = open_model(ModelDir(compiled_repository / "silero_vad"))
    plan = StreamPlan.of(loaded.config, loaded.io)
    replies = Replies()
    worker = ModelWorker(
        loaded,
        RequestLedger(),
        replies.publish,
        ModelStats(),
        256,
        streams=StreamStates(plan, loaded.io),
        stream_rows=16,
    )
    chunks, names = 20, ("a", "b", "c")
    audios = {name: _audio(n, chunks) for n, name in enumerate(names)}
    for i in range(chunks):
        for name in names:
            waiter = Waiter(f"r/{name}/{i}", None, 0)
            feeds = {"input": audios[name][None, i * CHUNK : (i + 1) * CHUNK]}
            job = Job(f"{name}{i}", None, waiter, feeds, time.monotonic(), None, False, name)
            assert worker.submit(job)
    calls = loaded.runner.infer_count
    worker.start()
    replies.wait_for(chunks * len(names))
    assert loaded.runner.infer_count - calls <= chunks + 2  # ~3 streams per run, not 60 runs
    import json

    source = compiled_repository / "silero_vad" / "model.onnx"
    for name in names:
        got = [
            json.loads(replies.by_topic[f"r/{name}/{i}"])["outputs"]["output"][0][0]
            for i in range(chunks)
        ]
        np.testing.assert_allclose(got, _silero_reference(source, audios[name]), atol=1e-4)
    worker.stop()


def test_wav_chunks_from_a_microphone_stream_over_mqtt(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    """A microphone sending each 32 ms as a WAV file (content type audio/wav, stream id in a user
    property): [preprocess] kind = "audio" decodes it, the daemon keeps the stream's state."""
    import io
    import json
    import shutil
    import wave

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from tests.daemon.test_broker_features import Observer

    repository = tmp_path / "engines"
    # engines/silero_vad/model.toml declares [preprocess] kind = "audio", format = "wav".
    shutil.copytree(compiled_repository / "silero_vad", repository / "silero_vad")
    audio = _audio(5, 12)
    pcm = np.clip(np.rint(audio * 32768), -32768, 32767).astype("<i2")
    daemon = Daemon(broker, repository, tmp_path / "daemon", node="mic").start()
    watch = Observer(broker, "edgert/reply/#")
    try:
        for i in range(12):
            body = io.BytesIO()
            with wave.open(body, "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
                w.writeframes(pcm[i * CHUNK : (i + 1) * CHUNK].tobytes())
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "audio/wav"
            props.ResponseTopic = "edgert/reply/mic1/silero_vad"
            props.UserProperty = [("id", f"w{i}"), ("stream", "kitchen-mic")]
            watch.client.publish(
                "edgert/infer/silero_vad", body.getvalue(), qos=1, properties=props
            ).wait_for_publish(5)
            watch.wait(lambda n=i: len(watch.on("edgert/reply/mic1/")) > n, 10, f"reply {i}")
        replies = [json.loads(m.payload) for m in watch.on("edgert/reply/mic1/")]
        assert [r["id"] for r in replies] == [f"w{i}" for i in range(12)]
        got = [r["outputs"]["output"][0][0] for r in replies]
        # The reference takes the samples the WAV carried (PCM16 / 32768).
        reference = _silero_reference(
            compiled_repository / "silero_vad" / "model.onnx", pcm.astype(np.float32) / 32768
        )
        np.testing.assert_allclose(got, reference, atol=1e-4)
        assert replies[0]["result"]["state"] in (True, False)  # [postprocess] threshold
    finally:
        watch.close()
        daemon.stop()
