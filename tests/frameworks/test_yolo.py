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
import importlib.util
import io
import json
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.machinery import SourceFileLoader
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

from edgert import LoadedModel, ModelDir, compile_model, open_model
from edgert.daemon.batcher import BatchPlan
from edgert.pipeline import Postprocess, Preprocess
from edgert.pipeline.image import Transform
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make-cnn-model"
NAME = "yolo11n"
COCO = "cfg/datasets/coco.yaml"
SIZE = 320
MAX_BATCH = 8
# Ultralytics' predict defaults are conf 0.25, iou 0.7, max_det 300; these are edgert's (model.toml
# states them, and Ultralytics is called with the same).
SCORE, IOU, MAX_DET = 0.25, 0.45, 100
BOX_PX = 0.5  # edgert rounds boxes to 0.1 px; a letterbox off by one pixel is 1 px or more
SCORE_TOLERANCE = 1e-4  # edgert rounds scores to 4 decimals
# (height, width): landscape, portrait, square (scaled up), a wide strip, odd sides whose scaled
# size rounds, and a 1080p frame.
SHAPES = [(480, 640), (640, 480), (300, 300), (200, 700), (777, 333), (1080, 1920)]
# Scenes of this seed score 12 to 51 boxes in each shape (some seeds' backgrounds score none).
PICTURE_SEED = 107
pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Exported:
    directory: Path
    labels: tuple[str, ...]
    connects: list[object]  # network connections Ultralytics tried while building and exporting


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    """scripts/make-cnn-model as a module (it has no .py suffix)."""
    loader = SourceFileLoader("make_cnn_model", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(recipe: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The export, once per module, into a repository of its own, compiled by edgert; every
    socket connect refused (and recorded) meanwhile, so a network attempt cannot hang."""
    pytest.importorskip("torch")
    recipe.offline(tmp_path_factory.mktemp("ultralytics-settings"))
    connects: list[object] = []

    def refuse(sock: socket.socket, address: object) -> None:
        connects.append(address)
        raise OSError("this test has no network")

    directory = tmp_path_factory.mktemp("engines") / NAME
    with pytest.MonkeyPatch.context() as patch:
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


def coco_names() -> tuple[str, ...]:
    """The 80 class names of Ultralytics' COCO dataset file, in class order."""
    import yaml

    names = yaml.safe_load((resources.files("ultralytics") / COCO).read_text())["names"]
    return tuple(names[i] for i in range(len(names)))


def ultralytics_detections(raw: np.ndarray, original: tuple[int, int]) -> np.ndarray:
    """Ultralytics' post-processing of one picture's ``[84, anchors]`` head: ``[n, 6]`` rows of
    x1, y1, x2, y2 (in ``original`` (height, width) pixels), score, class; best first."""
    import torch
    from ultralytics.utils import nms, ops

    (found,) = nms.non_max_suppression(
        torch.from_numpy(np.ascontiguousarray(raw[np.newaxis], np.float32)),
        conf_thres=SCORE,
        iou_thres=IOU,
        max_det=MAX_DET,
    )
    found[:, :4] = ops.scale_boxes((SIZE, SIZE), found[:, :4], original)
    return np.asarray(found.numpy(), np.float64)


def assert_same_detections(
    got: Sequence[Mapping[str, Any]], want: np.ndarray, labels: Sequence[str]
) -> None:
    """edgert's ``result`` holds Ultralytics' boxes: the same count, classes, scores and boxes
    within BOX_PX. Ties in score are put in class order on both sides."""
    assert len(got) == len(want), f"edgert found {len(got)} boxes, Ultralytics {len(want)}"
    index = {label: i for i, label in enumerate(labels)}
    mine = sorted(got, key=lambda d: (-d["score"], index[d["label"]], d["box"][0]))
    theirs = sorted(want.tolist(), key=lambda r: (-round(r[4], 4), r[5], r[0]))
    for n, (det, row) in enumerate(zip(mine, theirs, strict=True)):
        assert det["label"] == labels[int(row[5])], (n, det, row)
        assert abs(det["score"] - row[4]) <= SCORE_TOLERANCE, (n, det, row)
        off = max(abs(a - b) for a, b in zip(det["box"], row[:4], strict=True))
        assert off <= BOX_PX, f"box {n} is {off:.2f} px off: edgert {det['box']}, {row[:4]}"


def _size(picture: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(picture)) as img:
        return img.height, img.width


@dataclass(frozen=True)
class Run:
    raw: np.ndarray  # the head's [84, anchors] for this picture
    transform: Transform
    original: tuple[int, int]


def run(loaded: LoadedModel, pictures: Sequence[bytes]) -> tuple[list[Run], Postprocess]:
    """Every picture pre-processed by edgert and run as one batch."""
    pre = Preprocess.of(loaded.config, loaded.io.inputs[0])
    post = Postprocess.of(loaded.config, loaded.io)
    assert pre is not None and post is not None
    decoded = [pre.decode(p) for p in pictures]
    batch = np.concatenate([tensor for tensor, _ in decoded])
    raw = loaded.infer({pre.input: batch})["output0"]
    anchors = sum((SIZE // stride) ** 2 for stride in (8, 16, 32))
    assert raw.shape == (len(pictures), 84, anchors)
    runs = []
    for head, (_, transform), picture in zip(raw, decoded, pictures, strict=True):
        assert transform is not None
        runs.append(Run(head, transform, _size(picture)))
    return runs, post


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
            want = ultralytics_detections(raw, _size(pictures[i]))
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
