"""What one TensorRT engine build needs, as plain values: no ``tensorrt`` import, so the settings
can be made (and cross into the build process) where TensorRT is not loaded. Re-exported by
:mod:`edgert.backends.trt_compat`, which builds with them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BuildSettings", "Shape"]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BuildSettings:
    """What one engine build needs, all plain values (it crosses into the build process)."""

    precision: str  # fp32 | fp16 | int8
    profiles: Mapping[str, tuple[Shape, Shape, Shape]]  # dynamic input → (min, opt, max)
    workspace_bytes: int | None = None
    optimization_level: int | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
