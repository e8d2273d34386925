"""Parity: sample inputs for a model, and how far an artifact's outputs are from the reference.

This is the project's promise of consistent behaviour: every artifact is compared with the FP32
ONNX source run on ONNX Runtime's CPU provider before it is kept.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgert.config import InputConfig, ModelConfig, Tolerance
from edgert.errors import ConfigError, InputError, ParityError
from edgert.spec import DType, ModelIO, TensorSpec, concrete_shape

__all__ = [
    "OutputParity",
    "ParityReport",
    "compare",
    "constant_value",
    "load_samples",
    "random_samples",
    "sample_inputs",
]

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def constant_value(spec: TensorSpec, value: Any, io: ModelIO) -> np.ndarray:
    """A model.toml constant as an array of the input's dtype and (opt) shape."""
    shape = concrete_shape(spec.shape, io.dims)
    try:
        array: np.ndarray = np.array(
            np.broadcast_to(np.asarray(value, dtype=spec.dtype.numpy), shape)
        )
        return array
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"constant value {value!r} for input '{spec.name}' does not fit {spec.shape_text()} "
            f"{spec.dtype.value}: {exc}"
        ) from exc


def _random_tensor(
    spec: TensorSpec, shape: tuple[int, ...], conf: InputConfig | None, rng: np.random.Generator
) -> np.ndarray:
    low, high = conf.range if conf and conf.range else (0.0, 1.0)
    if conf is not None and conf.kind == "carried" and conf.initial is not None:
        return np.full(shape, conf.initial, dtype=spec.dtype.numpy)
    if spec.dtype is DType.BOOL:
        return rng.integers(0, 2, size=shape).astype(bool)
    if spec.dtype.is_float:
        return rng.uniform(low, high, size=shape).astype(spec.dtype.numpy)
    info = np.iinfo(spec.dtype.numpy)
    lo = max(int(np.ceil(low)), int(info.min))
    hi = min(int(np.floor(high)), int(info.max))
    if lo > hi:
        raise ConfigError(
            f"inputs.{spec.name}.range [{low:g}, {high:g}] holds no {spec.dtype.value} value"
        )
    return rng.integers(lo, hi + 1, size=shape, dtype=spec.dtype.numpy)


def random_samples(io: ModelIO, config: ModelConfig, seed: int = 0) -> list[Feeds]:
    """Seeded random inputs within the spec: one set at each dynamic dim's opt, min and max."""
    rng = np.random.default_rng(seed)
    which_list: list[str] = ["opt", "min", "max"] if io.dims else ["opt", "opt"]
    samples: list[Feeds] = []
    for which in which_list:
        feeds: Feeds = {}
        for spec in io.inputs:
            conf = config.inputs.get(spec.name)
            if conf is not None and conf.kind == "constant":
                feeds[spec.name] = constant_value(spec, conf.value, io)
                continue
            shape = concrete_shape(spec.shape, io.dims, which)  # type: ignore[arg-type]
            feeds[spec.name] = _random_tensor(spec, shape, conf, rng)
        samples.append(feeds)
    return samples


def load_samples(directory: Path, io: ModelIO, config: ModelConfig) -> list[Feeds]:
    """Samples from ``samples/*.json`` (name → nested list) and ``*.npz``; constants filled in."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".json", ".npz"))
    samples = []
    for path in files:
        raw: dict[str, Any]
        if path.suffix == ".json":
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: not readable JSON: {exc}") from exc
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: must be a JSON object of input name -> values")
        else:
            # Our own handle: np.load leaks it when the zip is corrupt.
            try:
                with path.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
                    raw = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ConfigError(f"{path}: not a readable .npz: {exc}") from exc
        feeds: Feeds = {}
        for spec in io.inputs:
            conf = config.inputs.get(spec.name)
            if spec.name in raw:
                # The request path's rules: no silent float → int truncation or int overflow.
                try:
                    feeds[spec.name] = spec.coerce(raw[spec.name])
                except InputError as exc:
                    raise ConfigError(f"{path}: {exc.message}") from exc
            elif conf is not None and conf.kind == "constant":
                feeds[spec.name] = constant_value(spec, conf.value, io)
            else:
                raise ConfigError(f"{path}: no value for input '{spec.name}'")
        samples.append(feeds)
    return samples


def sample_inputs(model_dir: Path, io: ModelIO, config: ModelConfig) -> tuple[list[Feeds], str]:
    """The model's own samples if it has a samples/ dir, else seeded random ones; and which."""
    samples_dir = model_dir / "samples"
    if samples_dir.is_dir():
        samples = load_samples(samples_dir, io, config)
        if samples:
            return samples, f"{len(samples)} from {samples_dir.name}/"
    return random_samples(io, config), "seeded random"


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    max_rel: float
    worst_index: tuple[int, ...]
    passed: bool


@dataclass(frozen=True)
class ParityReport:
    tolerance: Tolerance
    samples: int
    source: str
    outputs: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
            "samples": self.samples,
            "inputs": self.source,
            "outputs": {
                o.name: {"max_abs": o.max_abs, "max_rel": o.max_rel, "passed": o.passed}
                for o in self.outputs
            },
        }

    def summary(self) -> str:
        parts = [f"{o.name} max|Δ|={o.max_abs:.3g} rel={o.max_rel:.3g}" for o in self.outputs]
        return f"{'passed' if self.passed else 'FAILED'} on {self.samples} sample(s): " + (
            ", ".join(parts)
        )

    def raise_if_failed(self) -> None:
        failed = [o for o in self.outputs if not o.passed]
        if failed:
            worst = failed[0]
            raise ParityError(
                f"parity check failed: output '{worst.name}' differs from the FP32 reference by "
                f"{worst.max_abs:.4g} (relative {worst.max_rel:.4g}) at index "
                f"{list(worst.worst_index)}; tolerance atol={self.tolerance.atol} "
                f"rtol={self.tolerance.rtol}. Nothing was kept."
            )


def compare(
    run: RunFn, reference: RunFn, samples: list[Feeds], tolerance: Tolerance, source: str
) -> ParityReport:
    """Run both on every sample; worst absolute/relative error per output, and pass/fail."""
    per_output: dict[str, list[OutputParity]] = {}
    for feeds in samples:
        got, want = run(feeds), reference(feeds)
        for name, expected in want.items():
            if name not in got:
                raise ParityError(f"parity check: the artifact has no output '{name}'")
            result = _compare_one(name, np.asarray(got[name]), np.asarray(expected), tolerance)
            per_output.setdefault(name, []).append(result)
    outputs = []
    for name, results in per_output.items():
        failing = [r for r in results if not r.passed]
        worst = max(failing or results, key=lambda r: r.max_abs)
        outputs.append(
            OutputParity(
                name,
                max(r.max_abs for r in results),
                max(r.max_rel for r in results),
                worst.worst_index,
                not failing,
            )
        )
    return ParityReport(tolerance, len(samples), source, tuple(outputs))


def _compare_one(name: str, got: np.ndarray, want: np.ndarray, tol: Tolerance) -> OutputParity:
    if got.shape != want.shape:
        raise ParityError(
            f"parity check: output '{name}' has shape {list(got.shape)}, the reference "
            f"{list(want.shape)}"
        )
    if want.size == 0:
        return OutputParity(name, 0.0, 0.0, (), True)
    if want.dtype.kind in "biu" and got.dtype.kind in "biu":
        # Integer and boolean outputs (ids, classes, masks) must match exactly.
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        return OutputParity(name, float(diff.max()), 0.0, index, not diff.any())
    a, b = got.astype(np.float64), want.astype(np.float64)
    # Equal infinities (masked logits, log(0)) and NaN in both count as agreeing.
    same = (np.isnan(a) & np.isnan(b)) | (a == b)
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(a - b))
        err = np.where(np.isnan(err), np.inf, err)
        rel = np.where(same, 0.0, err / np.maximum(np.abs(b), 1e-12))
        rel = np.where(np.isnan(rel), np.inf, rel)
    bad = err > tol.atol + tol.rtol * np.abs(np.nan_to_num(b))
    index_flat = int(np.argmax(np.where(bad, err, -1.0))) if bad.any() else int(np.argmax(err))
    index = tuple(int(i) for i in np.unravel_index(index_flat, err.shape))
    return OutputParity(name, float(err.max()), float(rel.max()), index, not bad.any())
