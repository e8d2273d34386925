"""Validation helpers shared by the pipeline sections (private)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from edgert.errors import ConfigError

__all__ = ["check_keys", "choice", "number", "numbers", "positive_int"]


def check_keys(section: Mapping[str, Any], known: Collection[str], where: str) -> None:
    """ConfigError naming the unknown keys of ``section`` and the known ones."""
    unknown = set(section) - set(known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(known))}"
        )


def choice(section: Mapping[str, Any], key: str, options: tuple[str, ...], where: str) -> str:
    """``section[key]`` (default: the first option), which must be one of ``options``."""
    value = section.get(key, options[0])
    if value not in options:
        raise ConfigError(f"{where}: {key} is {value!r}; one of {', '.join(options)}")
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(
    section: Mapping[str, Any],
    key: str,
    default: float,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
) -> float:
    """``section[key]`` as a float within [low, high]."""
    value = section.get(key, default)
    if (
        not _is_number(value)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        bounds = f" in [{low}, {high}]" if low is not None or high is not None else ""
        raise ConfigError(f"{where}: {key} must be a number{bounds}, got {value!r}")
    return float(value)


def positive_int(section: Mapping[str, Any], key: str, default: int | None, where: str) -> int:
    """``section[key]`` as an integer >= 1 (ConfigError when absent and ``default`` is None)."""
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def numbers(raw: Any, key: str, count: int | None, where: str) -> tuple[float, ...]:
    """A list of numbers (of length ``count`` when given)."""
    if (
        not isinstance(raw, list)
        or not raw
        or not all(_is_number(v) for v in raw)
        or (count is not None and len(raw) != count)
    ):
        size = f" of {count}" if count is not None else ""
        raise ConfigError(f"{where}: {key} must be a list{size} numbers, got {raw!r}")
    return tuple(float(v) for v in raw)
