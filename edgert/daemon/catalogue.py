"""The retained catalogue's entries: every repository model with its state.

``ready`` (with what a device needs: version, backend, precision, the inputs it sends, the
outputs, parity), ``loading`` (building or being opened; its requests are held), or ``failed``
with the ``reason``. A model served and failed at once (a rebuild that failed) is ``ready``: its
old version still answers. This is the one place that says which state a model is in (the
health endpoints read it too).

A build in progress adds ``building: {"backend", "progress", "stage"}`` to a ``loading`` entry,
or to a ``ready`` one whose interim backend serves meanwhile; a build that failed while another
backend serves adds ``build_failed: {"backend", "reason"}``. An interim measured at load has
``latency_ms`` (one sample request) and ``slow``: whether that is over ``[serve]
interim_budget_ms`` (it is served all the same; requests' deadlines apply).
"""

from __future__ import annotations

from typing import Any

from edgert.daemon.models import Models, Served

__all__ = ["model_labels", "model_states"]


def model_states(models: Models) -> list[dict[str, Any]]:
    """One entry per model ``models`` knows of, in any state."""
    entries: dict[str, dict[str, Any]] = {}
    for name in models.held.loading():
        entries[name] = {"name": name, "state": "loading"}
    with models.lock:
        for name, reason in models.failed.items():
            entries.setdefault(name, {"name": name, "state": "failed", "reason": reason})
        for name, entry in models.served.items():
            entries[name] = _ready(name, entry, models.config.interim_budget_ms)
    for name, found in entries.items():
        build = models.builds.state(name)
        if build is None or found["state"] == "failed":
            continue
        if build.failed is None:
            found["building"] = build.to_dict()
        elif found["state"] == "ready":
            found["build_failed"] = build.to_dict()
    return list(entries.values())


def _ready(name: str, entry: Served, budget_ms: float) -> dict[str, Any]:
    loaded = entry.worker.loaded
    manifest = loaded.artifact.manifest
    found: dict[str, Any] = {
        "name": name,
        "state": "ready",
        "version": loaded.config.version,
        "backend": manifest.key.backend,
        "precision": manifest.key.precision,
        "inputs": [s.to_dict() for s in entry.specs],  # what a device sends
        "outputs": [
            s.to_dict()
            for s in loaded.runner.io.outputs
            if entry.worker.streams is None
            or s.name not in entry.worker.streams.plan.internal_outputs
        ],
        "stateful": entry.worker.streams is not None,
        "parity": manifest.parity,
    }
    if manifest.fallback:  # why not the preferred backend (e.g. ONNX-ML ops)
        found["fallback"] = manifest.fallback
    if entry.measured_ms is not None:
        found["latency_ms"] = round(entry.measured_ms, 3)
        found["slow"] = entry.measured_ms > budget_ms
    return found


def model_labels(models: Models, name: str) -> tuple[str, str] | None:
    """(name, served version) of a repository model (version "" while none is served); None
    for a name the repository does not have."""
    served = models.get(name)
    if served is not None:
        return name, served.version
    if name in models.failed or models.held.is_loading(name):
        return name, ""
    return None
