"""The framework matrix: a seeded model from each framework, exported by the recipe of
docs/export.md, compiled by edgert, served by the daemon over a real mosquitto, and answering
what the framework itself predicts."""

from __future__ import annotations

import json
import queue
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgert import ModelCheckError, ModelDir, compile_model, open_model
from edgert.client import Client
from edgert.daemon.batcher import BatchPlan
from tests.daemon.conftest import Daemon
from tests.frameworks.conftest import Built
from tests.frameworks.exports import FEATURES, LABELS, OPSET, RECIPES, dataset

FRAMEWORKS = sorted(RECIPES)
# The first test also trains, exports and compiles six models (importing six frameworks): about
# a minute on two cores, up to 2.5 minutes under load; twice the suite's 300 s default leaves room.
pytestmark = pytest.mark.timeout(600)


def max_abs_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))


def catalogue(port: int, node: str) -> dict[str, Any]:
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.put(m.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(f"edgert/node/{node}/models", 1)
    client.loop_start()
    try:
        return dict(json.loads(got.get(timeout=10)))
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_export_follows_the_recipe(framework: str, built: Mapping[str, Built]) -> None:
    export, compiled = built[framework].get()
    model = onnx.load(str(export.directory / "model.onnx"))
    # TensorRT 8.6 parses opsets up to 17; a graph of ONNX-ML ops only may import no "" domain.
    assert {o.domain: o.version for o in model.opset_import}.get("", OPSET) <= OPSET
    assert [i.name for i in model.graph.input] == ["features"]
    assert sorted(o.name for o in model.graph.output) == sorted(export.expected)
    for value in (*model.graph.input, *model.graph.output):  # one named batch axis throughout
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert compiled.parity["passed"] is True
    loaded = open_model(ModelDir(export.directory))
    try:
        assert loaded.runner.io.inputs[0].shape == ("batch", FEATURES)
        # so the daemon stacks concurrent requests into one run, up to model.toml's bound
        assert BatchPlan.for_model(loaded.runner.io, loaded.constants).max_batch == 32
    finally:
        loaded.close()


def compare(
    got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], tolerance: float
) -> dict[str, float]:
    """Max abs error per output; fails on a missing output, a shape, a label or the tolerance."""
    assert set(got) == set(want)
    errors = {}
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        if np.issubdtype(expected.dtype, np.integer):  # class labels: exactly the framework's
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
        errors[name] = max_abs_error(got[name], expected)
        assert errors[name] <= tolerance, f"{name}: {errors[name]:.3g} > {tolerance:g}"
    return errors


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_daemon_answers_what_the_framework_predicts(
    framework: str, built: Mapping[str, Built], served: Daemon
) -> None:
    export, _ = built[framework].get()
    model, features = export.directory.name, export.inputs["features"]
    with Client(served.broker.url) as client, ThreadPoolExecutor(len(features)) as pool:
        reply = client.infer(model, export.inputs, timeout=30)
        # The same rows as concurrent one-row requests, which the daemon may stack into one run.
        rows = list(
            pool.map(
                lambda i: client.infer(model, {"features": features[i : i + 1]}, timeout=30),
                range(len(features)),
            )
        )
    errors = compare(reply.outputs, export.expected, export.tolerance)
    for i, row in enumerate(rows):
        want = {name: value[i : i + 1] for name, value in export.expected.items()}
        for name, error in compare(row.outputs, want, export.tolerance).items():
            errors[name] = max(errors[name], error)
    if "probabilities" in export.expected:  # model.toml's top_k = 1 over the class labels
        top = [LABELS[i] for i in export.expected["probabilities"].argmax(axis=1)]
        assert [item[0]["label"] for item in reply.result] == top
    print(
        f"\n{framework} {export.version}: max abs error {max(errors.values()):.3g} "
        f"(tolerance {export.tolerance:g}; {', '.join(f'{k} {v:.3g}' for k, v in errors.items())})"
    )


def test_daemon_serves_every_framework(built: Mapping[str, Built], served: Daemon) -> None:
    models = catalogue(served.broker.port, served.node)
    assert all(m["state"] == "ready" for m in models["models"]), models
    names = {m["name"] for m in models["models"]}
    assert names == {b.get()[0].directory.name for b in built.values()}
    assert all(m["parity"]["passed"] for m in models["models"])


def test_zipmap_classifier_is_refused_naming_the_output(tmp_path: Path) -> None:
    """skl2onnx's default ZipMap turns probabilities into a sequence of maps; edgert serves
    tensors only, so docs/export.md says zipmap=False, and compile says why it refuses."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = dataset()
    model = to_onnx(
        LogisticRegression().fit(x, y),
        initial_types=[("features", FloatTensorType([None, FEATURES]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    directory = tmp_path / "zipmap"
    directory.mkdir()
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "model.toml").write_text(
        '[dims]\nbatch = { min = 1, max = 8 }\n[inputs.features]\nshape = ["batch", 6]\n'
    )
    with pytest.raises(ModelCheckError, match="output_probability' is not a tensor"):
        compile_model(ModelDir(directory))
