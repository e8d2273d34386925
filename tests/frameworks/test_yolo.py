"""A real detector: YOLO11n as Ultralytics builds it (``YOLO("yolo11n.yaml")``) and exports it
(its own ONNX exporter, dynamic batch), compiled by edgert and served with ``detect = "yolov8"``,
against Ultralytics' own post-processing (``non_max_suppression``, then ``scale_boxes`` back to
the original image) run on the very raw outputs edgert post-processed.

The export is scripts/make-cnn-model's (loaded as a module), the bench's model: seeded weights
made to score a few dozen anchors per picture, so there are boxes to compare. Pictures are
seeded scenes of several aspect ratios, letterboxed by edgert to 320x320.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import queue
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from PIL import Image

from edgert import CompileOptions, InputError, LoadedModel, ModelDir, compile_model, open_model
from edgert.daemon.batcher import BatchPlan
from edgert.pipeline import Preprocess
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon
from tests.frameworks.yolo import (
    IOU,
    MAX_BATCH,
    MAX_DET,
    NAME,
    PICTURE_SEED,
    REPO,
    SCORE,
    SHAPES,
    SIZE,
    Exported,
    assert_same_detections,
    coco_names,
    load_recipe,
    picture_size,
    run,
    ultralytics_detections,
)
from tests.trt.emulation import emulate, purge

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_recipe()


@pytest.fixture(scope="module")
def exported(recipe: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The export, once per module, into a repository of its own, compiled by edgert; every
    socket connect refused (and recorded) meanwhile, so a network attempt cannot hang."""
    recipe.offline(tmp_path_factory.mktemp("ultralytics-settings"))
    connects: list[object] = []

    def refuse(sock: socket.socket, address: object) -> None:
        connects.append(address)
        raise OSError("this test has no network")

    directory = tmp_path_factory.mktemp("engines") / NAME
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        # Ultralytics' exporter calls torch's TorchScript-based ONNX export, which torch 2.9+
        # deprecates with several warnings: this is the export as Ultralytics does it.
        warnings.simplefilter("ignore", DeprecationWarning)
        patch.setattr(socket.socket, "connect", refuse)
        labels = coco_names()
        recipe.export(directory / "model.onnx")
    recipe.write_samples(directory)
    (directory / "labels.txt").write_text("\n".join(labels) + "\n")
    toml = recipe.MODEL_TOML.replace(f"max = {recipe.MAX_BATCH}", f"max = {MAX_BATCH}")
    toml = toml.replace('name = "cnn"', f'name = "{NAME}"\nlabels = "labels.txt"')
    toml += f"score_threshold = {SCORE}\niou_threshold = {IOU}\nmax_detections = {MAX_DET}\n"
    (directory / "model.toml").write_text(toml)
    compile_model(ModelDir(directory))
    return Exported(directory, labels, connects)


@pytest.fixture(scope="module")
def loaded(exported: Exported) -> Iterator[LoadedModel]:
    model = open_model(ModelDir(exported.directory))
    yield model
    model.close()


@pytest.fixture(scope="module")
def pictures(recipe: ModuleType) -> list[bytes]:
    """One seeded JPEG per shape of SHAPES."""
    out = []
    for height, width in SHAPES:
        buffer = io.BytesIO()
        pixels = recipe.scene(np.random.default_rng(PICTURE_SEED), height, width)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def test_export_is_ultralytics_yolo11n_with_a_dynamic_batch(
    exported: Exported, loaded: LoadedModel
) -> None:
    model = onnx.load(str(exported.directory / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["author"] == "Ultralytics" and meta["task"] == "detect", meta
    assert meta["head"] == "Detect" and "YOLO11n" in meta["description"], meta
    assert {o.domain: o.version for o in model.opset_import}[""] <= 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]  # Ultralytics' dynamic=True
    assert exported.connects == []  # offline switches held: no connection was even tried
    assert loaded.io.inputs[0].shape == ("batch", 3, "height", "width")
    bounds = {name: (d.min, d.max) for name, d in loaded.io.dims.items()}
    assert bounds == {"batch": (1, MAX_BATCH), "height": (SIZE, SIZE), "width": (SIZE, SIZE)}
    assert BatchPlan.for_model(loaded.io, loaded.constants).max_batch == MAX_BATCH
    assert loaded.artifact.manifest.parity["passed"] is True


def test_a_batch_gives_each_picture_its_own_outputs(
    loaded: LoadedModel, pictures: list[bytes]
) -> None:
    together, _ = run(loaded, pictures[:3])
    for picture, batched in zip(pictures[:3], together, strict=True):
        (alone,), _ = run(loaded, [picture])
        np.testing.assert_allclose(alone.raw, batched.raw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("version", ["8.6.1", "11.4.0.106"])
def test_tensorrt_builds_it_with_the_batch_profile(
    exported: Exported,
    loaded: LoadedModel,
    pictures: list[bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    version: str,
) -> None:
    """Through the TensorRT path (the emulator of DEVELOPERS.md: the real API's names and call
    order, outputs from ONNX Runtime): JetPack 6.0's 8.6 and the strongly typed 11."""
    directory = tmp_path / NAME
    shutil.copytree(exported.directory, directory, ignore=shutil.ignore_patterns("build"))
    emulate(monkeypatch, version)
    try:
        model = ModelDir(directory)
        result = compile_model(model, CompileOptions(backend="tensorrt"))
        assert result.artifact.manifest.key.backend == "tensorrt" and result.parity["passed"]
        engine = open_model(model, backend="tensorrt")
        try:
            for batch in (1, MAX_BATCH):  # the profile's bounds
                some = (pictures * MAX_BATCH)[:batch]
                (want, _), (got, _) = run(loaded, some), run(engine, some)
                for a, b in zip(want, got, strict=True):
                    np.testing.assert_allclose(b.raw, a.raw, rtol=1e-3, atol=1e-3)
            with pytest.raises(InputError, match="outside the engine's profile"):
                x = np.zeros((MAX_BATCH + 1, 3, SIZE, SIZE), np.float32)
                engine.infer({"images": x}, check=False)
        finally:
            engine.close()
    finally:
        monkeypatch.undo()
        purge()


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{w}x{h}" for h, w in SHAPES])
def test_letterbox_puts_the_picture_where_ultralytics_does(
    recipe: ModuleType, loaded: LoadedModel, shape: tuple[int, int]
) -> None:
    """The same scaled size and padding as Ultralytics' LetterBox (pixels differ: Pillow and
    OpenCV resample differently), so the Transform back is Ultralytics' too."""
    from ultralytics.data.augment import LetterBox

    pixels = recipe.scene(np.random.default_rng(5), *shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    pre = Preprocess.of(loaded.config, loaded.io.inputs[0])
    assert pre is not None
    tensor, _ = pre.decode(buffer.getvalue())
    theirs = LetterBox((SIZE, SIZE), auto=False)(image=pixels[..., ::-1])  # OpenCV is BGR

    def picture_area(is_pad: np.ndarray) -> tuple[int, int, int, int]:
        rows, cols = np.nonzero(~is_pad.all(axis=1))[0], np.nonzero(~is_pad.all(axis=0))[0]
        return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])

    mine = np.rint(tensor[0].transpose(1, 2, 0) * 255).astype(np.uint8)
    assert theirs.shape == mine.shape == (SIZE, SIZE, 3)
    assert picture_area((mine == 114).all(axis=2)) == picture_area((theirs == 114).all(axis=2))


def test_detections_are_ultralytics_own(
    exported: Exported, loaded: LoadedModel, pictures: list[bytes]
) -> None:
    runs, post = run(loaded, pictures)
    counts, clipped = [], 0
    for item in runs:
        want = ultralytics_detections(item.raw, item.original)
        got = post.apply({"output0": item.raw[np.newaxis]}, item.transform)
        assert_same_detections(got, want, exported.labels)
        counts.append(len(got))
        # Something to compare: boxes of several classes, some clipped to the picture's edge.
        assert len(got) >= 3 and len({d["label"] for d in got}) >= 2, got
        height, width = item.original
        clipped += sum(d["box"][0] == 0 or d["box"][3] == height for d in got)
        assert all(0 <= d["box"][0] < d["box"][2] <= width for d in got)
    assert clipped > 0
    print(f"\nyolo11n: {counts} boxes per picture {SHAPES}, all as Ultralytics'")


def test_a_pixel_off_or_another_iou_is_caught(
    exported: Exported, loaded: LoadedModel, pictures: list[bytes]
) -> None:
    """The comparison can fail: a letterbox un-scaling one pixel off, or NMS at another IoU."""
    runs, post = run(loaded, pictures)
    assert post.detect is not None
    looser = dataclasses.replace(post, detect=dataclasses.replace(post.detect, iou_threshold=0.6))
    iou_caught = 0
    for item in runs:
        want = ultralytics_detections(item.raw, item.original)
        head = {"output0": item.raw[np.newaxis]}
        shifted = dataclasses.replace(item.transform, pad_x=item.transform.pad_x + 1)
        with pytest.raises(AssertionError, match="px off"):
            assert_same_detections(post.apply(head, shifted), want, exported.labels)
        try:
            assert_same_detections(looser.apply(head, item.transform), want, exported.labels)
        except AssertionError:
            iou_caught += 1
    assert iou_caught >= len(runs) // 2


def test_daemon_replies_what_ultralytics_post_processes(
    exported: Exported, pictures: list[bytes], tmp_path: Path
) -> None:
    """End to end: a camera's JPEG over MQTT, edgert serve's reply; Ultralytics post-processes
    the reply's own raw outputs into the reply's result. The raw head is ~2 MB of JSON: a device
    asks for the result alone (user property compact), which is the same."""
    broker = Mosquitto(tmp_path).start()
    daemon = Daemon(
        broker, exported.directory.parent, tmp_path / "daemon", node="yolo", max_payload=4 << 20
    )
    replies: queue.Queue[paho.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: replies.put(m)
    client.on_subscribe = lambda *_: subscribed.set()

    def ask(key: str, picture: bytes, compact: bool) -> tuple[dict[str, Any], int]:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "image/jpeg"
        props.ResponseTopic = f"edgert/reply/{key}/{NAME}"
        props.UserProperty = [("id", key)] + ([("compact", "true")] if compact else [])
        client.publish(f"edgert/infer/{NAME}", picture, qos=1, properties=props)
        message = replies.get(timeout=60)
        reply = json.loads(message.payload)
        assert reply["ok"] is True and reply["id"] == key, reply
        return reply, len(message.payload)

    try:
        daemon.start()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.subscribe(f"edgert/reply/+/{NAME}", 1)
        assert subscribed.wait(10)
        for i in (0, 4):  # landscape and odd-sided portrait
            full, _ = ask(f"full{i}", pictures[i], compact=False)
            raw = np.asarray(full["outputs"]["output0"], np.float32)[0]
            want = ultralytics_detections(raw, picture_size(pictures[i]))
            assert_same_detections(full["result"], want, exported.labels)
            assert len(full["result"]) >= 3
            compact, size = ask(f"compact{i}", pictures[i], compact=True)
            assert compact["result"] == full["result"] and "outputs" not in compact
            assert size < 8192, size
    finally:
        client.loop_stop()
        client.disconnect()
        daemon.stop()
        broker.kill()


def test_a_camera_on_mqtt_311_gets_its_detections_at_the_daemons_defaults(
    exported: Exported, loaded: LoadedModel, pictures: list[bytes], tmp_path: Path
) -> None:
    """A camera on MQTT 3.1.1 publishes a bare JPEG under its key: it has no user property to
    ask for compact with, and the full reply (the raw head) is over the default payload limit,
    so the daemon sends the result alone rather than ``too_large``."""
    broker = Mosquitto(tmp_path).start()
    daemon = Daemon(broker, exported.directory.parent, tmp_path / "daemon", node="yolo")
    replies: queue.Queue[paho.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)  # paho's default: MQTT 3.1.1
    client.on_message = lambda c, u, m: replies.put(m)
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        daemon.start()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.subscribe(f"edgert/reply/cam1/{NAME}", 1)
        assert subscribed.wait(10)
        client.publish(f"edgert/infer/{NAME}/cam1", pictures[0], qos=1)
        reply = json.loads(replies.get(timeout=60).payload)
        assert reply["ok"] is True and reply["id"] == "cam1", reply
        assert "outputs" not in reply and len(reply["result"]) >= 3, reply
        (item,), _ = run(loaded, pictures[0:1])
        want = ultralytics_detections(item.raw, item.original)
        assert_same_detections(reply["result"], want, exported.labels)
    finally:
        client.loop_stop()
        client.disconnect()
        daemon.stop()
        broker.kill()


def test_the_bench_plain_loop_boxes_as_ultralytics(
    exported: Exported, loaded: LoadedModel, pictures: list[bytes], tmp_path: Path
) -> None:
    """scripts/plain-loop, the bench's peer for this model, post-processes as Ultralytics does
    (else the bench would compare edgert with something that does less)."""
    (item,), _ = run(loaded, pictures[4:5])
    want = ultralytics_detections(item.raw, item.original)
    broker = Mosquitto(tmp_path).start()
    with (tmp_path / "plain.log").open("wb") as log:
        loop = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "scripts" / "plain-loop"),
                str(exported.directory / "model.onnx"),
                "--name",
                NAME,
                "--broker",
                broker.url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    replies: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: replies.put(m.payload)
    try:
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.subscribe("edgert/reply/plain", 1)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "edgert/reply/plain"
        props.UserProperty = [("id", "p1")]
        reply = None
        for _ in range(60):  # until the loop has subscribed (it says nothing when it has)
            assert loop.poll() is None, (tmp_path / "plain.log").read_text()
            client.publish(f"edgert/infer/{NAME}", pictures[4], qos=1, properties=props)
            with contextlib.suppress(queue.Empty):
                reply = json.loads(replies.get(timeout=0.5))
                break
        assert reply is not None and reply["ok"] is True, reply
        numbered = [str(i) for i in range(len(exported.labels))]
        assert_same_detections(reply["result"], want, numbered)
    finally:
        client.loop_stop()
        client.disconnect()
        loop.terminate()
        loop.wait(10)
        broker.kill()
