"""One export recipe per framework, as docs/export.md gives it: train a small seeded model, export
it to ONNX the way edgert wants it (named inputs and outputs, a dynamic batch axis, opset <= 17
so TensorRT 8.6's parser takes it), write its model.toml, and keep the framework's own prediction
on a held-out batch to compare the served outputs with.

Each framework is imported inside its recipe, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx.tools.update_model_dims import update_inputs_outputs_dims

__all__ = ["FEATURES", "LABELS", "OPSET", "RECIPES", "Export", "dataset"]

OPSET = 17  # TensorRT 8.6 (JetPack 6.0) parses ONNX opsets up to 17
FEATURES = 6
CLASSES = 3
SEED = 0
BATCH = 8  # the held-out batch sent through the daemon: above 1, so the batch axis is exercised

# Every model here names its batch axis "batch" on its input and its outputs (the daemon batches
# requests together only when they share one named axis 0); model.toml bounds it.
MODEL_TOML = """\
name = "{name}"
version = "1"
description = "{description}"
{labels}
[dims]
batch = {{ min = 1, opt = 1, max = 32 }}
"""

# A classifier's reply carries its top class in "result", read from the probabilities output.
CLASSIFIER = """
[postprocess]
output = "probabilities"
top_k = 1
"""
LABELS = ("north", "east", "south")  # one per class of dataset()


@dataclass(frozen=True)
class Export:
    """A framework's model exported into ``directory``, and its own outputs on ``inputs``."""

    framework: str
    version: str
    directory: Path
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]  # output name → what the framework itself predicted
    tolerance: float  # max abs error allowed between the served outputs and ``expected``


def dataset(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A seeded 3-class problem on 6 float32 features, the same for every framework."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    score = np.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 3], 0.5 * x[:, 4] * x[:, 5]], axis=1)
    return x, score.argmax(axis=1).astype(np.int64)


def held_out() -> np.ndarray:
    return np.random.default_rng(SEED + 1).normal(size=(BATCH, FEATURES)).astype(np.float32)


def write_model(directory: Path, model: onnx.ModelProto, name: str, description: str) -> None:
    directory.mkdir(parents=True)
    onnx.save(model, str(directory / "model.onnx"))
    classifier = any(o.name == "probabilities" for o in model.graph.output)
    labels = f"labels = {json.dumps(list(LABELS))}\n" if classifier else ""
    toml = MODEL_TOML.format(name=name, description=description, labels=labels)
    if classifier:
        toml += CLASSIFIER
    (directory / "model.toml").write_text(toml)


def export_pytorch(directory: Path) -> Export:
    import torch

    torch.manual_seed(SEED)
    x, y = dataset()
    net = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 32),
        torch.nn.LayerNorm(32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, CLASSES),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(features), labels).backward()
        optimizer.step()
    model = torch.nn.Sequential(net, torch.nn.Softmax(dim=-1)).eval()

    batch = torch.export.Dim("batch", min=1, max=32)
    with warnings.catch_warnings():
        # torch's own exporter internals use a pytree API that torch itself deprecates.
        warnings.filterwarnings("ignore", "`isinstance.treespec, LeafSpec.`", FutureWarning)
        program = torch.onnx.export(
            model,
            (features[:2],),
            input_names=["features"],
            output_names=["probabilities"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,  # torch 2.9+ defaults to 18; converted down to 17
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    name = "torch_mlp"
    write_model(directory / name, program.model_proto, name, "PyTorch MLP (LayerNorm)")
    sample = held_out()
    with torch.no_grad():
        expected = model(torch.from_numpy(sample)).numpy()
    return Export(
        "pytorch",
        torch.__version__,
        directory / name,
        {"features": sample},
        {"probabilities": expected},
        1e-5,
    )


def export_sklearn(directory: Path) -> Export:
    import sklearn
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = dataset()
    pipeline = make_pipeline(
        StandardScaler(), RandomForestClassifier(n_estimators=10, max_depth=5, random_state=SEED)
    ).fit(x, y)
    model = to_onnx(
        pipeline,
        initial_types=[("features", FloatTensorType([None, FEATURES]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        options={"zipmap": False},  # probabilities as a tensor, not a sequence of maps
    )
    # skl2onnx takes no dim names: name the batch axis (None above) on the input and outputs.
    model = update_inputs_outputs_dims(
        model,
        {"features": ["batch", FEATURES]},
        {"label": ["batch"], "probabilities": ["batch", CLASSES]},
    )
    name = "sklearn_forest"
    write_model(directory / name, model, name, "scikit-learn scaler + random forest")
    sample = held_out()
    return Export(
        "scikit-learn",
        sklearn.__version__,
        directory / name,
        {"features": sample},
        {"label": pipeline.predict(sample), "probabilities": pipeline.predict_proba(sample)},
        1e-5,
    )


def export_lightgbm(directory: Path) -> Export:
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = dataset()
    target = x[:, 0] * 2.0 - x[:, 3] + y
    regressor = lightgbm.LGBMRegressor(
        n_estimators=30, num_leaves=8, random_state=SEED, deterministic=True, verbose=-1
    ).fit(x, target)
    model = convert_lightgbm(
        regressor,
        initial_types=[("features", FloatTensorType([None, FEATURES]))],
        target_opset=15,  # the highest onnxmltools' LightGBM converter emits
    )
    model = update_inputs_outputs_dims(
        model, {"features": ["batch", FEATURES]}, {"variable": ["batch", 1]}
    )
    name = "lightgbm_trees"
    write_model(directory / name, model, name, "LightGBM regressor")
    sample = held_out()
    return Export(
        "lightgbm",
        lightgbm.__version__,
        directory / name,
        {"features": sample},
        {"variable": regressor.predict(sample).reshape(-1, 1)},
        1e-5,
    )


def export_xgboost(directory: Path) -> Export:
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    x, y = dataset()
    classifier = xgboost.XGBClassifier(
        n_estimators=20, max_depth=3, random_state=SEED, n_jobs=1, tree_method="exact"
    ).fit(x, y)
    model = convert_xgboost(
        classifier,
        initial_types=[("features", FloatTensorType([None, FEATURES]))],
        target_opset=15,
    )
    model = update_inputs_outputs_dims(
        model,
        {"features": ["batch", FEATURES]},
        {"label": ["batch"], "probabilities": ["batch", CLASSES]},
    )
    name = "xgboost_trees"
    write_model(directory / name, model, name, "XGBoost classifier")
    sample = held_out()
    return Export(
        "xgboost",
        xgboost.__version__,
        directory / name,
        {"features": sample},
        {"label": classifier.predict(sample), "probabilities": classifier.predict_proba(sample)},
        1e-5,
    )


def export_keras(directory: Path) -> Export:
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(SEED)
    x, y = dataset()
    inputs = tf.keras.Input(shape=(FEATURES,), name="features")
    hidden = tf.keras.layers.Dense(32, activation="relu")(inputs)
    outputs = tf.keras.layers.Dense(CLASSES, activation="softmax", name="probabilities")(hidden)
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, shuffle=False)

    signature = (tf.TensorSpec((None, FEATURES), tf.float32, name="features"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    # tf2onnx names the None axis "unk__N", a different name on the input and the output.
    onnx_model = update_inputs_outputs_dims(
        onnx_model, {"features": ["batch", FEATURES]}, {"probabilities": ["batch", CLASSES]}
    )
    name = "keras_mlp"
    write_model(directory / name, onnx_model, name, "Keras MLP")
    sample = held_out()
    return Export(
        "tensorflow",
        tf.__version__,
        directory / name,
        {"features": sample},
        {"probabilities": model.predict(sample, verbose=0)},
        1e-5,
    )


def export_jax(directory: Path) -> Export:
    import jax
    import jax.numpy as jnp
    from jax2onnx import to_onnx

    x, y = dataset()
    k1, k2 = jax.random.split(jax.random.key(SEED))
    params = {
        "w1": jax.random.normal(k1, (FEATURES, 32)) * 0.3,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, CLASSES)) * 0.3,
        "b2": jnp.zeros(CLASSES),
    }

    def logits(p: dict[str, jax.Array], features: jax.Array) -> jax.Array:
        return jax.nn.gelu(features @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p: dict[str, jax.Array]) -> jax.Array:
        log_probs = jax.nn.log_softmax(logits(p, jnp.asarray(x)))
        return -jnp.take_along_axis(log_probs, jnp.asarray(y)[:, None], axis=1).mean()

    step = jax.jit(jax.grad(loss))
    for _ in range(30):
        params = jax.tree.map(lambda w, g: w - 0.5 * g, params, step(params))

    def predict(features: jax.Array) -> jax.Array:
        return jax.nn.softmax(logits(params, features), axis=-1)

    model = to_onnx(
        predict,
        [("batch", FEATURES)],  # a str dim is a dynamic axis of that name
        opset=OPSET,
        input_names=["features"],
        output_names=["probabilities"],
    )
    name = "jax_mlp"
    write_model(directory / name, model, name, "JAX MLP (GELU)")
    sample = held_out()
    return Export(
        "jax",
        jax.__version__,
        directory / name,
        {"features": sample},
        {"probabilities": np.asarray(predict(jnp.asarray(sample)))},
        1e-5,
    )


RECIPES: dict[str, Callable[[Path], Export]] = {
    "pytorch": export_pytorch,
    "scikit-learn": export_sklearn,
    "lightgbm": export_lightgbm,
    "xgboost": export_xgboost,
    "tensorflow": export_keras,
    "jax": export_jax,
}
