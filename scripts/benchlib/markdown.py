"""Markdown pieces the reports share."""

from __future__ import annotations

import math

__all__ = ["fmt", "table"]


def fmt(value: float | None, digits: int = 2) -> str:
    """``value`` to ``digits`` decimals; "n/a" for None or NaN."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
