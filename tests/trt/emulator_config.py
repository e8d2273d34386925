"""The emulated builder configuration: IBuilderConfig, optimization profiles, timing caches and
the IProgressMonitor base class.

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

import json
from typing import Any

from tests.trt.emulator_core import (
    Dims,
    State,
    api_error,
    as_dims,
    check_arg,
    check_initialized,
    emit,
    new_object,
    to_int,
)
from tests.trt.emulator_plan import host_memory

__all__ = ["ConfigClasses"]

_CACHE_MAGIC = b"EDGERT-EMULATED-TRT-TIMING-CACHE\x00"


class ConfigClasses:
    """Namespace of the full (all-version) configuration classes; see ParseClasses."""

    class IOptimizationProfile:
        _rt: State

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            shapes = [as_dims(s, "set_shape") for s in (min, opt, max)]
            lo, mid, hi = shapes
            if any(d < 0 for d in lo):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            if len(mid) != len(lo) or any(o < m for o, m in zip(mid, lo, strict=True)):
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            if len(hi) != len(mid) or any(h < o for h, o in zip(hi, mid, strict=True)):
                raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
            self._shapes[str(input)] = shapes

        def get_shape(self, input: str) -> list[Dims]:
            return list(self._shapes.get(str(input), []))

    class ITimingCache:
        _rt: State

        def serialize(self) -> Any:
            blob = json.dumps(
                {"version": self._version, "sm": self._sm, "entries": sorted(self._entries)}
            ).encode()
            return host_memory(self._rt, _CACHE_MAGIC + blob)

        def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
            check_arg(input_cache, self._rt.trt.ITimingCache, "combine", "input_cache")
            same = (input_cache._version, input_cache._sm) == (self._version, self._sm)
            if not (same or ignore_mismatch):
                return False
            self._entries |= input_cache._entries
            return True

        def reset(self) -> bool:
            self._entries.clear()
            return True

    class IProgressMonitor:
        _rt: State

        def __init__(self) -> None:
            self._trt_initialized = True

    class IBuilderConfig:
        _rt: State

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            check_arg(pool, self._rt.trt.MemoryPoolType, "set_memory_pool_limit", "pool")
            self._pools[pool.name] = to_int(pool_size, "set_memory_pool_limit")

        def get_memory_pool_limit(self, pool: Any) -> int:
            check_arg(pool, self._rt.trt.MemoryPoolType, "get_memory_pool_limit", "pool")
            return int(self._pools.get(pool.name, _default_pool(pool.name)))

        def set_flag(self, flag: Any) -> None:
            check_arg(flag, self._rt.trt.BuilderFlag, "set_flag", "flag")
            self._flags.add(flag.name)

        def clear_flag(self, flag: Any) -> None:
            check_arg(flag, self._rt.trt.BuilderFlag, "clear_flag", "flag")
            self._flags.discard(flag.name)

        def get_flag(self, flag: Any) -> bool:
            check_arg(flag, self._rt.trt.BuilderFlag, "get_flag", "flag")
            return flag.name in self._flags

        def add_optimization_profile(self, profile: Any) -> int:
            trt = self._rt.trt
            check_arg(profile, trt.IOptimizationProfile, "add_optimization_profile", "profile")
            if not profile._shapes:
                return -1  # an empty profile is not valid
            self._profiles.append({k: [list(s) for s in v] for k, v in profile._shapes.items()})
            return len(self._profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self._profiles)

        @property
        def builder_optimization_level(self) -> int:
            return self._opt_level

        @builder_optimization_level.setter
        def builder_optimization_level(self, value: int) -> None:
            self._opt_level = to_int(value, "builder_optimization_level")

        @property
        def default_device_type(self) -> Any:
            return self._device_type

        @default_device_type.setter
        def default_device_type(self, value: Any) -> None:
            self._device_type = check_arg(value, self._rt.trt.DeviceType, "setter", "value")

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            self._dla_core = to_int(value, "DLA_core")

        @property
        def hardware_compatibility_level(self) -> Any:
            return self._hw_level

        @hardware_compatibility_level.setter
        def hardware_compatibility_level(self, value: Any) -> None:
            level = self._rt.trt.HardwareCompatibilityLevel
            self._hw_level = check_arg(value, level, "setter", "value")

        @property
        def progress_monitor(self) -> Any:
            return self._monitor

        @progress_monitor.setter
        def progress_monitor(self, value: Any) -> None:
            if value is not None:
                check_initialized(value, self._rt.trt.IProgressMonitor, "progress_monitor")
            self._monitor = value

        def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
            rt = self._rt
            blob = bytes(memoryview(serialized_timing_cache))
            cache = new_object(
                rt.trt.ITimingCache, _version=rt.version, _sm=rt.current_sm(), _entries=set()
            )
            if not blob:
                return cache
            try:
                if not blob.startswith(_CACHE_MAGIC):
                    raise ValueError("magic tag")
                data = json.loads(blob[len(_CACHE_MAGIC) :])
                cache._version, cache._sm = str(data["version"]), str(data["sm"])
                cache._entries = {str(e) for e in data["entries"]}
            except (ValueError, KeyError, TypeError):
                emit(
                    self._logger,
                    rt,
                    "ERROR",
                    api_error(1, "Serialization", "timingCache", "corrupted timing cache blob"),
                )
                return None
            return cache

        def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
            rt = self._rt
            check_arg(cache, rt.trt.ITimingCache, "set_timing_cache", "cache")
            if (cache._version, cache._sm) != (rt.version, rt.current_sm()):
                what = (
                    f"timing cache from TensorRT {cache._version} on {cache._sm}, this is "
                    f"{rt.version} on {rt.current_sm()}"
                )
                if not ignore_mismatch:
                    emit(
                        self._logger,
                        rt,
                        "ERROR",
                        api_error(3, "API Usage Error", "setTimingCache", what),
                    )
                    return False
                emit(self._logger, rt, "WARNING", f"Mismatched {what}; entries may not be used")
            self._timing_cache = cache
            return True

        def get_timing_cache(self) -> Any:
            return self._timing_cache


def _default_pool(name: str) -> int:
    return {"WORKSPACE": 1 << 62}.get(name, 0)
