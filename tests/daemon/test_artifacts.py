"""Broken artifacts at serve time: each is refused with a clear reason (log, catalogue, no_model
replies) and the other models are served."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgert.client import Client, RemoteError
from tests.broker import Mosquitto
from tests.daemon.conftest import Daemon
from tests.daemon.test_reload_limits import READING, Catalogue


def _copy(compiled: Path, repository: Path, name: str) -> Path:
    model = repository / name
    shutil.copytree(compiled / "occupancy", model)
    toml = model / "model.toml"
    toml.write_text(re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', toml.read_text()))
    return model


def _manifest(model: Path) -> Path:
    (found,) = model.glob("build/*/manifest.json")
    return found


def _edit_manifest(model: Path, change: dict[str, object], where: str = "key") -> None:
    path = _manifest(model)
    data = json.loads(path.read_text())
    data[where].update(change)
    path.write_text(json.dumps(data))


# What each breakage is, and a fragment of the reason the daemon gives.
BROKEN = {
    "corrupt_ort": "sha256",  # the artifact's bytes changed: its manifest's hash no longer matches
    "wrong_hash": "sha256",  # the manifest's recorded hash changed
    "foreign": "built for backend version 0.0.1",  # another runtime version: another machine
    "bad_manifest": "manifest",  # not JSON
    "truncated_onnx": "truncated",  # the source itself, nothing built
}


def _failed(catalogue: Catalogue) -> dict[str, str]:
    return {
        m["name"]: m["reason"] for m in catalogue.latest.get("models", []) if m["state"] == "failed"
    }


def test_broken_artifacts_are_refused_and_the_rest_served(
    broker: Mosquitto, compiled_repository: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "engines"
    _copy(compiled_repository, repository, "good")
    models = {name: _copy(compiled_repository, repository, name) for name in BROKEN}
    ort = next(models["corrupt_ort"].glob("build/*/model.ort"))
    data = bytearray(ort.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ort.write_bytes(bytes(data))
    path = _manifest(models["wrong_hash"])
    path.write_text(re.sub(r'"sha256": "[0-9a-f]{8}', '"sha256": "00000000', path.read_text()))
    _edit_manifest(models["foreign"], {"backend_version": "0.0.1"})
    _manifest(models["bad_manifest"]).write_text("{not json")
    shutil.rmtree(models["truncated_onnx"] / "build")
    source = models["truncated_onnx"] / "model.onnx"
    source.write_bytes(source.read_bytes()[:200])

    daemon = Daemon(broker, repository, tmp_path / "daemon").start()
    catalogue = Catalogue(broker.port)
    try:
        catalogue.wait_for("good", "1")
        with catalogue.changed:  # the truncated source's build fails in a child: wait for it
            catalogue.changed.wait_for(lambda: set(_failed(catalogue)) == set(BROKEN), timeout=60)
        failed = _failed(catalogue)
        with Client(broker.url, node="testnode") as client:
            good = client.infer("good", np.array(READING, np.float32))
            refusals = {}
            for name in BROKEN:
                with pytest.raises(RemoteError) as error:
                    client.infer(name, np.array(READING, np.float32), timeout=5)
                refusals[name] = (error.value.code, error.value.remote_message)
    finally:
        catalogue.close()
        daemon.stop()
    assert catalogue.versions() == {"good": "1"}
    assert good.outputs["probabilities"].shape == (1, 2)
    for name, fragment in BROKEN.items():
        print(f"{name}: {failed[name]}")
        assert fragment in failed[name], (name, failed[name])
        code, message = refusals[name]
        assert code == "no_model" and fragment in message, (name, message)
    log = daemon.log.read_text()
    assert "Traceback" not in log
    assert all(f"{name}: not served" in log for name in BROKEN)
