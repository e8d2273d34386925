"""Prometheus ``/metrics``: the daemon's own counters, read when scraped (a custom collector,
prometheus-client's documented API), so the request path pays nothing for them.

Names follow NVIDIA Triton's (``nv_inference_*`` as ``edgert_inference_*``), so a Triton
dashboard reads them: replies by outcome (:mod:`edgert.daemon.counts`; failures by ``reason``,
the reply's error code), the requests run and the backend runs that ran them, cumulative queue
and compute durations, and requests pending in each model's queue, labelled by model and
version. Beside them: the process's RSS and CPU (prometheus-client's process collector), the
GPU's memory where a model runs on TensorRT (the CUDA context exists then; a CPU-only daemon is
not made to create one), and on a Jetson the GPU's load and the temperatures ``tegrastats``
reports. Counters of a model start again from zero when a new version of it is swapped in, as
Prometheus expects of a counter that resets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgert.daemon.counts import ReplyCounts
from edgert.daemon.models import Models
from edgert.daemon.tegrastats import Tegrastats
from edgert.errors import EdgertError

__all__ = ["DaemonCollector", "registry"]

log = logging.getLogger("edgert.daemon")

_MODEL = ["model", "version"]


class DaemonCollector(Collector):
    """The serving metrics of ``models`` and ``counts``, and the host's GPU, when scraped."""

    def __init__(
        self, models: Models, counts: ReplyCounts, tegrastats: Tegrastats | None = None
    ) -> None:
        self.models = models
        self.counts = counts
        self.tegrastats = tegrastats
        self._cuda: Any = None  # edgert.backends.cuda.Cuda, opened at the first scrape needing it
        self._no_gpu = False  # said once why there are no GPU figures

    def collect(self) -> Iterator[Metric]:
        yield from self._replies()
        yield from self._served()
        yield from self._gpu()
        if self.tegrastats is not None and self.tegrastats.latest is not None:
            yield from _jetson(self.tegrastats)

    def _replies(self) -> Iterator[Metric]:
        success = CounterMetricFamily(
            "edgert_inference_request_success", "Successful replies.", labels=_MODEL
        )
        failure = CounterMetricFamily(
            "edgert_inference_request_failure",
            "Error replies, by reason (the reply's error code).",
            labels=[*_MODEL, "reason"],
        )
        for (model, version, code), count in sorted(
            self.counts.snapshot().items(), key=lambda item: (item[0][:2], item[0][2] or "")
        ):
            if code is None:
                success.add_metric([model, version], count)
            else:
                failure.add_metric([model, version, code], count)
        yield success
        yield failure

    def _served(self) -> Iterator[Metric]:
        count = CounterMetricFamily(
            "edgert_inference_count",
            "Requests run (each request of a batch counts).",
            labels=_MODEL,
        )
        runs = CounterMetricFamily(
            "edgert_inference_exec_count", "Backend runs (batches).", labels=_MODEL
        )
        queue = CounterMetricFamily(
            "edgert_inference_queue_duration_us",
            "Cumulative time answered requests waited in the queue, in microseconds.",
            labels=_MODEL,
        )
        compute = CounterMetricFamily(
            "edgert_inference_compute_infer_duration_us",
            "Cumulative time answered requests took to run, in microseconds.",
            labels=_MODEL,
        )
        request = CounterMetricFamily(
            "edgert_inference_request_duration_us",
            "Cumulative time from receipt to result of answered requests, in microseconds.",
            labels=_MODEL,
        )
        pending = GaugeMetricFamily(
            "edgert_inference_pending_request_count",
            "Requests queued, not yet run.",
            labels=_MODEL,
        )
        for entry in self.models.entries():
            labels = [entry.worker.name, entry.version]
            requests, batches, queue_s, compute_s = entry.worker.stats.totals()
            count.add_metric(labels, requests)
            runs.add_metric(labels, batches)
            queue.add_metric(labels, round(queue_s * 1e6))
            compute.add_metric(labels, round(compute_s * 1e6))
            request.add_metric(labels, round((queue_s + compute_s) * 1e6))
            pending.add_metric(labels, entry.worker.depth)
        yield from (count, runs, request, queue, compute, pending)

    def _gpu(self) -> Iterator[Metric]:
        tensorrt = any(
            e.worker.loaded.artifact.manifest.key.backend == "tensorrt"
            for e in self.models.entries()
        )
        if not tensorrt or self._no_gpu:
            return
        try:
            if self._cuda is None:
                from edgert.backends.cuda import Cuda

                self._cuda = Cuda(0)
            free, total = self._cuda.mem_info()
        except (EdgertError, ImportError) as exc:
            self._no_gpu = True
            log.warning("metrics: no GPU memory figures: %s", exc)
            return
        used = GaugeMetricFamily(
            "edgert_gpu_memory_used_bytes", "GPU memory used, in bytes.", labels=["gpu"]
        )
        used.add_metric(["0"], total - free)
        whole = GaugeMetricFamily(
            "edgert_gpu_memory_total_bytes", "GPU memory, in bytes.", labels=["gpu"]
        )
        whole.add_metric(["0"], total)
        yield from (used, whole)


def _jetson(tegrastats: Tegrastats) -> Iterator[Metric]:
    """The last tegrastats line's figures."""
    sample = tegrastats.latest
    assert sample is not None
    if sample.gpu_load is not None:
        yield GaugeMetricFamily(
            "edgert_gpu_utilization", "GPU load (0 to 1; tegrastats' GR3D_FREQ).", sample.gpu_load
        )
    if sample.ram_used is not None and sample.ram_total is not None:
        yield GaugeMetricFamily(
            "edgert_jetson_ram_used_bytes", "RAM used, shared by CPU and GPU.", sample.ram_used
        )
        yield GaugeMetricFamily("edgert_jetson_ram_total_bytes", "RAM.", sample.ram_total)
    temperatures = GaugeMetricFamily(
        "edgert_jetson_temperature_celsius", "Temperatures tegrastats reports.", labels=["sensor"]
    )
    for sensor, celsius in sorted(sample.temperatures.items()):
        temperatures.add_metric([sensor], celsius)
    yield temperatures


def registry(collector: DaemonCollector) -> CollectorRegistry:
    """A registry of this daemon's own (not the process-global one, which a test or a second
    service in the process would share): ``collector`` and the process's RSS and CPU."""
    found = CollectorRegistry()
    found.register(collector)
    ProcessCollector(registry=found)
    return found
