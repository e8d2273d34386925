"""End-to-end fuzz: a few hundred hostile requests through a real mosquitto to a real daemon
(random bytes, bad JSON, bad tensors, broken images and WAVs, odd MQTT 5 properties; pooled and
node topics; QoS 0 and 1; MQTT 5 and 3.1.1), after which the daemon is alive, answered every
request that named an allowed reply topic, published nowhere else, logged no traceback, and
answers a valid request exactly as the model does when run directly."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgert import ModelDir, open_model
from edgert.pipeline import Preprocess
from edgert.protocol import ErrorCode
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon
from tests.fuzz.models import build_repository
from tests.fuzz.payloads import (
    bitflip,
    image_bytes,
    jpeg_claiming,
    npy_bytes,
    npy_header,
    png_claiming,
    splice,
    wav_bytes,
)

NODE = "fuzznode"
MODELS = ["occupancy", "silero_vad", "person", "bytesum", "loudness", "multi", "tokens"]
CODES = {c.value for c in ErrorCode}
CASES = 400


@dataclass
class Case:
    index: int
    topic: str
    payload: bytes
    qos: int
    v5: bool
    response_topic: str | None = None
    correlation: bytes | None = None
    content_type: str | None = None
    user: list[tuple[str, str]] | None = None

    @property
    def key(self) -> str | None:
        """The topic's ``<key>`` level, if it is a request topic with one."""
        levels = self.topic.split("/")
        pinned = levels[1] == "node"
        return levels[5 if pinned else 3] if len(levels) == (6 if pinned else 4) else None

    @property
    def received(self) -> bool:
        """Whether the daemon gets it: a request topic, pinned or for a model it serves (pooled
        topics are subscribed per served model)."""
        levels = self.topic.split("/")
        size = len(levels) - (3 if levels[1] == "node" else 0)
        return size in (3, 4) and (levels[1] == "node" or levels[2] in MODELS)

    @property
    def expects_reply(self) -> bool:
        """Whether the daemon must answer: a keyed request always can (under its key); an
        unkeyed one when its Response Topic is allowed."""
        if not self.received:
            return False
        if self.key is not None:
            return True
        return self.response_topic is not None and self.response_topic.startswith("edgert/reply/c")

    def owns(self, reply_topic: str) -> bool:
        """Whether a reply on ``reply_topic`` answers this case (its level after edgert/reply/
        is this case's key or its c<index>)."""
        level = reply_topic.split("/")[2]
        return level in (f"c{self.index}", self.key)


def _junk_json(rng: random.Random, i: int) -> bytes:
    def value(depth: int = 0) -> object:
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return rng.randint(-(2**70), 2**70)
        if kind == 3:
            return rng.choice([float("nan"), float("inf"), 1e300, -0.0, 0.5, 2**40, 2**64, -1])
        if kind in (4, 5):
            return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(6)))
        if kind == 6:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        if kind == 7:
            return {str(rng.randrange(9)): value(depth + 1) for _ in range(rng.randrange(3))}
        return [[value(depth + 1)] * 4]

    doc: dict[str, object] = {}
    for key in ("id", "reply_to", "deadline_ms", "stream", "reset", "compact", "v", "inputs"):
        if rng.random() < 0.6:
            doc[key] = value()
    if rng.random() < 0.5:
        doc["id"] = f"j{i}"
    if rng.random() < 0.2:
        doc["reply_to"] = rng.choice([f"edgert/reply/c{i}/json", "elsewhere/x", "edgert/reply/+"])
    return json.dumps(doc).encode()


def _bad_tensor(rng: random.Random, i: int) -> bytes:
    name = rng.choice(["readings", "input", "image", "bytes", "audio", "a", "ids", "state", "sr"])
    tensor: object = rng.choice(
        [
            {"dtype": rng.choice(["float32", "int64", "object", "float128", "bool"]),
             "shape": rng.choice([[1, 4], [2**40], [0, 2**64], [-1, 4], [1] * 40, "x"]),
             "b64": rng.choice(["AAAA", "!!!!", "", base64.b64encode(bytes(16)).decode()])},
            [[float("nan")] * 4],
            [[1, 2, 3]],
            [[[[[[1]]]]]],
            [[1e300] * 4],
            [[2**64, 1, 2, 3]],
            [[1, "2", 3, 4]],
            [[1.5] * 512] * 17,
        ]
    )  # fmt: skip
    doc = {"id": f"t{i}", "inputs": rng.choice([{name: tensor}, tensor])}
    if rng.random() < 0.3:
        doc.update(stream=f"s{i}", reset=rng.random() < 0.5)
    return json.dumps(doc).encode()


def _payload(rng: random.Random, i: int) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return rng.randbytes(rng.randrange(64))
    if kind == 1:
        return _junk_json(rng, i)
    if kind == 2:
        return _bad_tensor(rng, i)
    if kind == 3:  # deep nesting
        depth = rng.choice([65, 1000, 5000, 50_000])
        return ('{"inputs": ' + "[" * depth + "]" * depth + "}").encode()
    if kind == 4:
        array = np.random.default_rng(i).standard_normal(
            rng.choice([(1, 4), (2, 4), (1, 512), (3,)])
        )
        payload = npy_bytes(array.astype(rng.choice(["<f4", ">f4", "f8", "i8", "u1"])))
        return rng.choice(
            [
                payload,
                payload[: rng.randrange(len(payload))],
                bitflip(payload, [rng.randrange(800)]),
            ]
        )
    if kind == 5:
        shape = rng.choice(["(2**40,)", "(0, 18446744073709551616)", "(1, 4)", "(-1,)"]).replace(
            "2**40", str(2**40)
        )
        descr = rng.choice(["<f4", "|O", "<U3", "[('a', '<f4')]"])
        descr = descr if descr.startswith("[") else repr(descr)
        return npy_header(
            f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"
        ) + bytes(16)
    if kind == 6:
        img = image_bytes(
            rng.randint(1, 64), rng.randint(1, 64), rng.choice(["JPEG", "PNG"]), seed=i
        )
        return rng.choice(
            [img, img[: rng.randrange(len(img))], bitflip(img, [rng.randrange(8 * len(img))]),
             splice(img, rng.randrange(4, 100), rng.randbytes(8)),
             png_claiming(65535, 65535, bytes(32)), jpeg_claiming(9000, 9000, bytes(32))]
        )  # fmt: skip
    if kind == 7:
        data = np.zeros(rng.choice([0, 1, 512, 513]), "<i2").tobytes()
        return wav_bytes(
            data,
            rate=rng.choice([16000, 8000]),
            channels=rng.choice([1, 2]),
            data_size=rng.choice([None, 0xFFFFFFFF, 10**6]),
        )[: rng.choice([None, 30, 44])]
    if kind == 8:
        return rng.randbytes(rng.choice([15, 16, 17, 0]))  # raw, near bytesum's 16
    return b"x" * ((1 << 20) + 1)  # beyond the default payload limit


def make_cases(seed: int = 7) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for i in range(CASES):
        model = rng.choice([*MODELS, "nosuchmodel"])
        pinned = rng.random() < 0.4
        root = f"edgert/node/{NODE}/infer" if pinned else "edgert/infer"
        key = rng.choice([f"k{i}", f"k{i}", None, f"k{i}x" + "k" * 300])
        topic = f"{root}/{model}" + (f"/{key}" if key else "")
        if rng.random() < 0.05:
            topic += "/extra/levels"  # not a request topic: ignored
        case = Case(i, topic, _payload(rng, i), rng.choice([0, 1]), v5=rng.random() < 0.85)
        if case.v5:
            if rng.random() < 0.6:
                case.response_topic = rng.choice(
                    [f"edgert/reply/c{i}/r", f"edgert/reply/c{i}/r", "elsewhere/x",
                     "edgert/replyx/y", "edgert/reply/../x", "edgert/reply/"]
                )  # fmt: skip
            if rng.random() < 0.5:
                case.correlation = rng.choice([f"c{i}".encode(), bytes(65535), b""])
            if rng.random() < 0.5:
                case.content_type = rng.choice(
                    ["application/json", "application/x-npy", "application/octet-stream",
                     "image/jpeg", "image/png", "audio/wav", "text/plain", "x" * 300, ""]
                )  # fmt: skip
            if rng.random() < 0.4:
                case.user = rng.sample(
                    [("id", f"u{i}"), ("id", "x" * 200), ("stream", f"s{i}"), ("stream", ""),
                     ("reset", "yes"), ("zz", "1")], rng.randint(1, 3)
                )  # fmt: skip
        cases.append(case)
    return cases


class Recorder:
    """Everything published on the broker, from a client subscribed to '#'."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[tuple[str, bytes, bytes | None]] = []
        self.lock = threading.Lock()
        self.client = broker.client()
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("#", 1)
        self.client.loop_start()
        assert ready.wait(5)

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), correlation))

    def on(self, prefix: str) -> list[tuple[str, bytes, bytes | None]]:
        with self.lock:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publisher(broker: Mosquitto, v5: bool) -> paho.Client:
    client = broker.client(paho.MQTTv5 if v5 else paho.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def _send(client: paho.Client, case: Case) -> None:
    props = None
    if case.v5:
        props = Properties(PacketTypes.PUBLISH)
        if case.response_topic is not None:
            props.ResponseTopic = case.response_topic
        if case.correlation is not None:
            props.CorrelationData = case.correlation
        if case.content_type is not None:
            props.ContentType = case.content_type
        if case.user:
            props.UserProperty = case.user
    info = client.publish(case.topic, case.payload, qos=case.qos, properties=props)
    if case.qos:
        info.wait_for_publish(10)


def test_fuzzed_requests_through_the_broker(broker: Mosquitto, tmp_path: Path) -> None:
    repository = build_repository(tmp_path / "engines")
    daemon = Daemon(broker, repository, tmp_path / "daemon", node=NODE, queue_size=512).start()
    recorder = Recorder(broker)
    publishers = {True: _publisher(broker, True), False: _publisher(broker, False)}
    cases = make_cases()
    try:
        for case in cases:
            _send(publishers[case.v5], case)
        expected = [c for c in cases if c.expects_reply]

        def replies(case: Case) -> list[tuple[str, bytes, bytes | None]]:
            return [m for m in recorder.on("edgert/reply/") if case.owns(m[0])]

        end = time.monotonic() + 60
        while time.monotonic() < end and not all(replies(c) for c in expected):
            time.sleep(0.2)
        time.sleep(0.5)  # stragglers: anything published twice or elsewhere shows up now

        # (a) alive
        assert daemon.process is not None and daemon.process.poll() is None
        # (b) every request that named an allowed reply topic got one structured reply
        codes: Counter[str] = Counter()
        missing = []
        for case in expected:
            got = replies(case)
            if not got:
                missing.append(case)
                continue
            assert len(got) == 1 or case.qos == 1, (case.index, got)
            _, payload, correlation = got[0]
            reply = json.loads(payload)
            assert isinstance(reply["ok"], bool) and "id" in reply
            if case.v5 and case.correlation:
                assert correlation == case.correlation
            if reply["ok"]:
                codes["ok"] += 1
            else:
                assert reply["error"]["code"] in CODES and reply["error"]["message"], reply
                codes[reply["error"]["code"]] += 1
        assert not missing, [
            (c.index, c.topic[-40:], c.response_topic, c.content_type, c.user, c.payload[:40])
            for c in missing
        ]
        # Nothing outside the reply prefix, and nothing but replies under it.
        ours = ("edgert/infer/", f"edgert/node/{NODE}/", "edgert/reply/", "homeassistant/")
        strays = [m[0] for m in recorder.on("") if not m[0].startswith(ours)]
        assert not strays, strays
        escaped = [
            m[0] for m in recorder.on("edgert/reply/") if not any(c.owns(m[0]) for c in cases)
        ]
        assert not escaped, escaped
        print(
            f"\nfuzz e2e: sent {len(cases)}, expected replies {len(expected)}, answered "
            f"{sum(codes.values())}, codes {dict(sorted(codes.items()))}"
        )

        # (c) a valid request afterwards is answered as the model answers it directly
        _check_valid_requests(recorder, publishers[True], repository)
        # (d) no traceback
        assert daemon.process.poll() is None
        log = daemon.log.read_text()
        assert "Traceback" not in log, log[-4000:]
        assert "Logging error" not in log
    finally:
        for client in publishers.values():
            client.disconnect()
            client.loop_stop()
        recorder.close()
        daemon.stop()


def _ask(recorder: Recorder, client: paho.Client, model: str, key: str, payload: bytes) -> dict:
    client.publish(f"edgert/infer/{model}/{key}", payload, qos=1).wait_for_publish(10)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        got = recorder.on(f"edgert/reply/{key}/{model}")
        if got:
            return dict(json.loads(got[0][1]))
        time.sleep(0.05)
    raise AssertionError(f"no reply from {model}")


def _check_valid_requests(recorder: Recorder, client: paho.Client, repository: Path) -> None:
    readings = np.array([[21.5, 40.0, 300.0, 800.0], [19.0, 55.0, 0.0, 420.0]], np.float32)
    reply = _ask(recorder, client, "occupancy", "valid1", json.dumps(
        {"inputs": readings.tolist()}).encode())  # fmt: skip
    assert reply["ok"] is True, reply
    occupancy = open_model(ModelDir(repository / "occupancy"), "onnxruntime")
    try:
        want = occupancy.infer({"readings": readings})["probabilities"]
    finally:
        occupancy.close()
    np.testing.assert_allclose(
        np.array(reply["outputs"]["probabilities"], np.float32), want, rtol=1e-6
    )

    picture = image_bytes(48, 40, "JPEG", seed=3)
    reply = _ask(recorder, client, "person", "valid2", picture)
    assert reply["ok"] is True, reply
    person = open_model(ModelDir(repository / "person"), "onnxruntime")
    try:
        pre = Preprocess.of(person.config, person.io.inputs[0])
        assert pre is not None
        want = person.infer({"image": pre.decode(picture)[0]})["probs"]
    finally:
        person.close()
    np.testing.assert_allclose(np.array(reply["outputs"]["probs"], np.float32), want, rtol=1e-6)

    payload = bytes(range(100, 116))
    reply = _ask(recorder, client, "bytesum", "valid3", payload)
    assert reply["ok"] is True and reply["outputs"]["sum"] == [float(sum(payload))], reply
