"""Per-device request budgets: a token bucket per device, on the network thread.

A device is the first level of its reply topic under the reply prefix (``edgert/reply/<key>/…``):
the broker does not tell subscribers who published, and the ACL template in ``device/mosquitto``
makes each device's user name that key, so a device cannot spend another's budget.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """``rate`` requests per second per device, with bursts up to ``burst``.

    Not thread-safe: only the network thread calls :meth:`take`. At most ``devices`` buckets are
    kept; the least recently seen goes first (a full bucket, since it was idle longest).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        devices: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.devices = devices
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, device: str) -> float:
        """Spend one request of ``device``'s budget: 0.0 if it may run, else the seconds until
        it may."""
        now = self._clock()
        tokens, when = self._buckets.pop(device, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens >= 1:
            tokens -= 1
            wait = 0.0
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[device] = (tokens, now)
        if len(self._buckets) > self.devices:
            self._buckets.popitem(last=False)
        return wait
