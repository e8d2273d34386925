"""scripts/bench --soak: one edgert serve under a steady load for minutes, sampled per window.

The broker, the temporary model repository, the server start, the readiness probe and the load
generator are the bench's own (``runner.Bench``, ``loadgen.LoadGenerator``). Each workload gets a
load generator of its own, so the sensor MLP and the CNN run side by side, each at a fixed
concurrency. A window is one point of each generator; at its end the daemon's RSS is read
(VmRSS of the ``python -m edgert.daemon`` process that ``edgert serve`` execs into, same pid).
Between windows the load pauses while the generators report (a reply's time, plus 50 ms).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.loadgen import LoadGenerator
from benchlib.probe import Probe
from benchlib.procs import Server, cpu_seconds, rss_mib
from benchlib.runner import SERVERS, Bench, Options, machine_busy, summarise_load
from benchlib.workloads import WORKLOADS, prepare_repository

__all__ = ["LOAD", "SERVER", "SoakOptions", "plan", "run"]

# Concurrency per workload by default: the sensor MLP at a moderate load, and a share of CNN.
LOAD = {"mlp": 8, "cnn": 2}
SERVER = "edgert_events_on"  # the daemon's default config: every result also on the events topic
MIN_WINDOWS = 12  # windows are shortened (from 10 s) so that a short soak still has this many
_START_DELAY = 0.05  # s from sending a window's specs to its first requests


@dataclass(frozen=True)
class SoakOptions:
    minutes: float  # load measured, after the warm-up
    window: float  # s per window
    windows: int  # measured windows (the warm-up is one more)
    warmup: float  # s of load before the first measured window
    load: dict[str, int]  # workload key -> concurrency
    generators: int  # load generator processes in all
    qos: int
    timeout: float  # s before a request is counted as timed out and sent again
    out: Path


def plan(minutes: float, window: float | None, warmup: float | None) -> tuple[float, int, float]:
    """(window s, measured windows, warm-up s) for a soak of ``minutes``: windows of 10 s, or
    shorter for at least MIN_WINDOWS of them (never under 1 s); a warm-up of a tenth of the
    soak, 10 to 60 s (the allocators settle first). ValueError when fewer than 2 windows
    would fit."""
    seconds = minutes * 60
    if window is None:
        window = max(1.0, min(10.0, seconds / MIN_WINDOWS))
    windows = round(seconds / window)
    if windows < 2:
        raise ValueError(f"a {seconds:g} s soak holds {windows} window(s) of {window:g} s; need 2")
    if warmup is None:
        warmup = max(10.0, min(60.0, seconds / 10))
    return window, windows, warmup


def _processes(load: dict[str, int], total: int) -> dict[str, int]:
    """Generator processes per workload: one each, the rest to the first (the MLP's, whose
    replies cost the generator most), never more than its concurrency."""
    spare = max(0, total - len(load))
    shares = {key: 1 + (spare if i == 0 else 0) for i, key in enumerate(load)}
    return {key: min(n, load[key]) for key, n in shares.items()}


class _Soak:
    def __init__(self, bench: Bench, options: SoakOptions) -> None:
        self.bench = bench
        self.options = options
        self.say = bench.say
        self.gens: dict[str, LoadGenerator] = {}

    def close(self) -> None:
        for gen in self.gens.values():
            gen.close()

    def window(self, server: Server, index: int, length: float, began: float) -> dict[str, Any]:
        """One window of every workload's load; its readings."""
        start = time.monotonic() + _START_DELAY
        end = start + length
        for key, gen in self.gens.items():
            spec = self.bench.point_spec(WORKLOADS[key], start, start, end)
            gen.start(spec, self.options.load[key])
        pids = [self.bench.broker.pid, *(p for gen in self.gens.values() for p in gen.pids)]
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0, ours0, busy0 = cpu_seconds(server.pid), sum(map(cpu_seconds, pids)), machine_busy()
        time.sleep(max(0.0, end - time.monotonic()))
        rss = rss_mib(server.pid)
        cpu1, ours1, busy1 = cpu_seconds(server.pid), sum(map(cpu_seconds, pids)), machine_busy()
        machine = (os.cpu_count() or 1) * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        collect_within = length + 2 * self.options.timeout + 30
        loads = {
            key: summarise_load(gen.collect(collect_within), length)
            for key, gen in self.gens.items()
        }
        server.check_alive()
        return {
            "window": index,
            "warmup": index == 0,
            "t_s": round(end - began, 2),
            "length_s": length,
            "rss_mib": round(rss, 2),
            "daemon_cores": round((cpu1 - cpu0) / length, 3),
            # CPU of everything but the daemon, the broker and the generators: a busier machine
            # explains latency drift that edgert does not.
            "others_cores": round(max(0.0, machine - (cpu1 - cpu0 + ours1 - ours0) / length), 3),
            "errors": sum(v["errors"] for v in loads.values()),
            "timeouts": sum(v["timeouts"] for v in loads.values()),
            "workloads": loads,
        }

    def _report(self, row: dict[str, Any]) -> None:
        label = "warm-up" if row["warmup"] else f"{row['window']:>7}"
        parts = [f"{label} t={row['t_s']:7.1f} s  RSS {row['rss_mib']:7.1f} MiB"]
        for key, load in row["workloads"].items():
            parts.append(
                f"{key} {load['throughput_rps']:7.1f} req/s p50 {load['p50_ms']:6.2f} "
                f"p99 {load['p99_ms']:7.2f} ms"
            )
        if row["errors"] or row["timeouts"]:
            parts.append(f"errors {row['errors']} timeouts {row['timeouts']}")
        self.say("  " + "  ".join(parts))
        samples = [v["error_sample"] for v in row["workloads"].values() if v["error_sample"]]
        sample = samples[0] if samples else ""
        if sample:
            self.say(f"    first error reply: {sample[:200]}")

    def run(self) -> dict[str, Any]:
        bench, opts = self.bench, self.options
        models = [WORKLOADS[key].model for key in opts.load]
        self.say(f"compiling {', '.join(models)} into a temporary repository")
        prepare_repository(bench.repo, models, bench.logs / "compile.log")
        bench.probe = Probe(bench.broker.port, bench.tag)
        server = bench.start_server(SERVER, models)
        try:
            began = time.monotonic()
            for key in opts.load:
                bench.probe.ask(WORKLOADS[key], server)
            self.say(f"{server.name}: answering after {time.monotonic() - began:.1f} s")
            time.sleep(0.5)
            idle = rss_mib(server.pid)
            cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().replace(b"\0", b" ")
            daemon = f"pid {server.pid}: {cmdline.decode(errors='replace').strip()}"
            self.say(f"  idle RSS {idle:.1f} MiB ({daemon})")
            processes = _processes(opts.load, opts.generators)
            for key, count in processes.items():
                port = bench.broker.port
                self.gens[key] = LoadGenerator(count, "127.0.0.1", port, f"{bench.tag}{key}")
            total = opts.warmup + opts.windows * opts.window
            self.say(
                f"soak: {opts.warmup:g} s warm-up, then {opts.windows} windows of "
                f"{opts.window:g} s (about {total / 60:.1f} min)"
            )
            windows: list[dict[str, Any]] = []
            began = time.monotonic()
            for index in range(opts.windows + 1):
                length = opts.warmup if index == 0 else opts.window
                windows.append(self.window(server, index, length, began))
                self._report(windows[-1])
        finally:
            server.stop()
        return {
            "meta": {
                "cores": os.cpu_count(),
                "minutes": opts.minutes,
                "window_s": opts.window,
                "windows": opts.windows,
                "warmup_s": opts.warmup,
                "generators": sum(processes.values()),
                "qos": opts.qos,
                "mosquitto": bench.broker.version(),
                "server": SERVERS[SERVER],
                "models": models,
                "daemon": daemon,
                "idle_rss_mib": round(idle, 2),
                "load": {
                    key: {
                        "title": WORKLOADS[key].title,
                        "concurrency": opts.load[key],
                        "processes": processes[key],
                    }
                    for key in opts.load
                },
            },
            "windows": windows,
        }


def run(options: SoakOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak; meta and every window's readings (the first is the warm-up)."""
    bench_options = Options(
        workloads=list(options.load),
        concurrency=sorted(set(options.load.values())),
        duration=options.window,
        warmup=options.warmup,
        generators=options.generators,
        qos=options.qos,
        timeout=options.timeout,
        out=options.out,
        quick=False,
    )
    with tempfile.TemporaryDirectory(prefix="edgert-soak-") as tmp:
        bench = Bench(bench_options, Path(tmp), say)
        soak = _Soak(bench, options)
        try:
            return soak.run()
        finally:
            soak.close()
            bench.close()
