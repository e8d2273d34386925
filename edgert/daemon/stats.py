"""Serving statistics per model (counts, error codes, latency percentiles) for the stats topic."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from edgert.daemon.ledger import RequestLedger

__all__ = ["ModelStats", "Rates"]


class ModelStats:
    """Thread-safe counters for one model; latencies over a bounded recent window."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.inferences = 0  # backend runs: fewer than ok replies when requests batch
        self.batched = 0
        self.errors: Counter[str] = Counter()
        # Sums over every ok reply, in seconds (Prometheus' cumulative durations).
        self.queue_s = 0.0
        self.compute_s = 0.0
        self._total: deque[float] = deque(maxlen=window)
        self._infer: deque[float] = deque(maxlen=window)

    def record_request(self) -> None:
        with self._lock:
            self.requests += 1

    def record_ok(self, total_s: float, infer_s: float) -> None:
        with self._lock:
            self.ok += 1
            self.queue_s += total_s - infer_s
            self.compute_s += infer_s
            self._total.append(total_s * 1000)
            self._infer.append(infer_s * 1000)

    def record_batch(self, requests: int) -> None:
        """One backend run that answered ``requests`` requests."""
        with self._lock:
            self.inferences += 1
            self.batched += requests

    def record_error(self, code: str) -> None:
        with self._lock:
            self.errors[code] += 1

    def totals(self) -> tuple[int, int, float, float]:
        """(requests run, backend runs, queue seconds, compute seconds) since the worker began:
        Triton's inference count, execution count and cumulative durations."""
        with self._lock:
            return self.batched, self.inferences, self.queue_s, self.compute_s

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "ok": self.ok,
                "inferences": self.inferences,
                "mean_batch": round(self.batched / self.inferences, 2) if self.inferences else None,
                "errors": dict(self.errors),
                "queue": queue_depth,
                "latency_ms": {
                    "p50": _percentile(self._total, 50),
                    "p99": _percentile(self._total, 99),
                    "infer_p50": _percentile(self._infer, 50),
                },
            }


def _percentile(values: deque[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))
    return round(ordered[index], 3)


class Rates:
    """The stats topic's payload, each model's request rate since the previous one."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}  # model -> (when, requests) last time

    def node_stats(
        self, node: str, models: dict[str, dict[str, Any]], ledger: RequestLedger
    ) -> dict[str, Any]:
        """``models``' snapshots (each given its ``rate``) with the node and ledger counts."""
        now = time.monotonic()
        for name, snapshot in models.items():
            when, before = self._last.get(name, (now, snapshot["requests"]))
            elapsed = now - when
            rate = (snapshot["requests"] - before) / elapsed if elapsed > 0 else 0.0
            snapshot["rate"] = round(rate, 3)  # requests per second since the last stats
            self._last[name] = (now, snapshot["requests"])
        return {
            "v": 1,
            "node": node,
            "time": time.time(),
            "models": models,
            "joined": ledger.joined,
            "replayed": ledger.replayed,
            "in_flight": ledger.in_flight(),
        }
