"""One bench run: per workload, each server in turn under every concurrency; then idle RSS."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchlib.loadgen import LoadGenerator, PointSpec, WorkerResult
from benchlib.probe import Probe, outputs_agree, reply_outputs
from benchlib.procs import Broker, Server, cpu_seconds, peak_rss_mib, reset_peak_rss, rss_mib
from benchlib.workloads import (
    REPO,
    WORKLOADS,
    Workload,
    available,
    daemon_config,
    inference_ms,
    prepare_repository,
)

__all__ = [
    "EDGERT_EVENTS",
    "SERVERS",
    "TARGET_SERVER",
    "Bench",
    "Options",
    "machine_busy",
    "run",
    "sleep_until",
    "summarise_load",
    "summarise_point",
]

# Every server measured at every point, in this order: key -> the name the report gives it.
SERVERS = {
    "floor": "echo floor",
    "plain": "plain loop",
    "edgert_events_off": "edgert serve (events off)",
    "edgert_events_on": "edgert serve (events on)",
}
# edgert's [serve] events per edgert server: on, every result is published twice (the reply,
# and a QoS 0 copy to edgert/node/<node>/events/<model>); on is the daemon's default.
EDGERT_EVENTS = {"edgert_events_off": False, "edgert_events_on": True}
TARGET_SERVER = "edgert_events_off"  # the edgert the targets compare with the plain loop
STATS_INTERVAL = 1.0  # s between edgert's stats messages: the bench reads its mean batch there


@dataclass(frozen=True)
class Options:
    workloads: list[str]
    concurrency: list[int]
    duration: float  # s measured per point
    warmup: float  # s of load before each measured window
    generators: int  # load generator processes
    qos: int
    timeout: float  # s before a request is counted as timed out and sent again
    out: Path
    quick: bool


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def _model_counts(stats: dict[str, Any] | None, model: str) -> tuple[int, int] | None:
    """(ok replies, backend runs) of ``model`` in an edgert stats message."""
    entry = (stats or {}).get("models", {}).get(model) or {}
    if "ok" not in entry or "inferences" not in entry:
        return None
    return int(entry["ok"]), int(entry["inferences"])


class Bench:
    def __init__(self, options: Options, tmp: Path, say: Callable[[str], None]) -> None:
        self.options = options
        self.tmp = tmp
        self.say = say
        self.logs = options.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.repo = tmp / "repo"
        self.tag = uuid.uuid4().hex[:8]
        self.point_no = 0
        self.starts = 0
        self.nodes: dict[int, str] = {}  # edgert server pid -> its node id
        self.broker = Broker(tmp)
        self.probe: Probe | None = None
        self.gen: LoadGenerator | None = None

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
        if self.probe is not None:
            self.probe.close()
        self.broker.stop()
        log = self.tmp / "mosquitto.log"
        if log.exists():
            (self.logs / "mosquitto.log").write_bytes(log.read_bytes())

    def start_server(self, kind: str, models: list[str]) -> Server:
        self.starts += 1
        label = f"{kind}-{'+'.join(models)}-{self.starts}"
        python, url = sys.executable, self.broker.url
        node = ""
        name = f"{SERVERS[kind]} with {' + '.join(models)}"
        if kind == "floor":
            command = [python, str(REPO / "scripts/echo-floor"), models[0], "--broker", url]
        elif kind == "plain":
            onnx = self.repo / models[0] / "model.onnx"
            command = [python, str(REPO / "scripts/plain-loop"), str(onnx), "--broker", url]
        else:
            node = f"bench{self.tag}n{self.starts}"
            config = daemon_config(
                self.tmp / f"{label}.toml",
                url,
                node,
                self.repo,
                models,
                STATS_INTERVAL,
                events=EDGERT_EVENTS[kind],
            )
            command = [python, "-m", "edgert", "serve", "--config", str(config)]
        server = Server(name, command, self.logs / f"{label}.log")
        if node:
            self.nodes[server.pid] = node
        return server

    def point_spec(self, workload: Workload, start: float, measure: float, end: float) -> PointSpec:
        """The next point's spec for ``workload`` (times are time.monotonic()); the load
        generator fills in the clients per process."""
        self.point_no += 1
        return PointSpec(
            point=self.point_no,
            topic=f"edgert/infer/{workload.model}",
            content_type=workload.content_type,
            json_head=workload.json_head,
            json_tail=workload.json_tail,
            npy=b"" if workload.is_json else workload.npy,
            qos=self.options.qos,
            clients=0,
            start=start,
            measure=measure,
            end=end,
            timeout=self.options.timeout,
            user=workload.user,
        )

    def measure_point(
        self, workload: Workload, kind: str, server: Server, concurrency: int
    ) -> dict[str, Any]:
        assert self.gen is not None and self.probe is not None
        opts = self.options
        start = time.monotonic() + 0.2
        measure = start + opts.warmup
        end = measure + opts.duration
        spec = self.point_spec(workload, start, measure, end)
        node = self.nodes.get(server.pid)
        reset_peak_rss(server.pid)
        self.gen.start(spec, concurrency)
        pids = {"server": [server.pid], "broker": [self.broker.pid], "gen": self.gen.pids}
        sleep_until(measure)
        cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        busy0 = machine_busy()
        stats0 = self.probe.stats(node) if node else None
        sleep_until(end)
        cpu1 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        busy1 = machine_busy()
        peak = peak_rss_mib(server.pid)
        results = self.gen.collect(opts.warmup + opts.duration + 2 * opts.timeout + 30)
        stats1 = self.probe.stats(node, after=end, timeout=2 * STATS_INTERVAL) if node else None
        server.check_alive()
        point: dict[str, Any] = {
            "workload": workload.key,
            "server": kind,
            "concurrency": concurrency,
            **summarise_point(results, opts.duration, cpu0, cpu1),
            "peak_rss_mib": round(peak, 1),
            "machine_busy_pct": round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1),
            "mean_batch": None,
        }
        before, after = _model_counts(stats0, workload.model), _model_counts(stats1, workload.model)
        if before and after and after[1] > before[1]:
            # Replies per backend run between two stats messages around the window (1 s apart).
            point["mean_batch"] = round((after[0] - before[0]) / (after[1] - before[1]), 2)
        return point

    def run_server(
        self, workload: Workload, kind: str, info: dict[str, Any], points: list[dict[str, Any]]
    ) -> dict[str, np.ndarray] | None:
        """Start one server, measure it at every concurrency into ``points``; its outputs for
        the probe request (None for the echo floor)."""
        assert self.probe is not None
        server = self.start_server(kind, [workload.model])
        try:
            began = time.monotonic()
            reply = self.probe.ask(workload, server)
            ready = time.monotonic() - began
            answer = reply_outputs(reply) if kind != "floor" else None
            time.sleep(0.5)
            idle = rss_mib(server.pid)
            info["servers"][kind] = {"ready_s": round(ready, 2), "idle_rss_mib": round(idle, 1)}
            self.say(f"  {SERVERS[kind]}: answering after {ready:.1f} s, idle RSS {idle:.1f} MiB")
            for concurrency in self.options.concurrency:
                p = self.measure_point(workload, kind, server, concurrency)
                points.append(p)
                self.say(
                    f"    c={concurrency:<3} {p['throughput_rps']:8.1f} req/s  "
                    f"p50 {p['p50_ms']:7.2f} ms  p99 {p['p99_ms']:7.2f} ms  "
                    f"CPU {p['cpu_s_per_1k']:6.3f} s/1k  peak {p['peak_rss_mib']:6.1f} MiB"
                    + (f"  batch {p['mean_batch']}" if p["mean_batch"] else "")
                    + (f"  errors {p['errors']}" if p["errors"] else "")
                    + (f"  timeouts {p['timeouts']}" if p["timeouts"] else "")
                )
                if p["error_sample"]:
                    self.say(f"      first error reply: {p['error_sample'][:200]}")
            return answer
        finally:
            server.stop()

    def run_workload(self, workload: Workload) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        points: list[dict[str, Any]] = []
        info: dict[str, Any] = {"title": workload.title, "model": workload.model, "servers": {}}
        answers: dict[str, dict[str, np.ndarray] | None] = {}
        for kind in SERVERS:
            try:
                answers[kind] = self.run_server(workload, kind, info, points)
            except RuntimeError as exc:  # one server failing must not lose the others' figures
                info["servers"].setdefault(kind, {})["error"] = str(exc)
                self.say(f"  {SERVERS[kind]}: FAILED: {str(exc).splitlines()[0]}")
        info["outputs_agree"] = {
            kind: outputs_agree(answers.get("plain"), answers.get(kind)) for kind in EDGERT_EVENTS
        }
        return points, info

    def idle_rss(self) -> list[dict[str, Any]]:
        """RSS of each server after loading and answering one request per bench model; edgert
        with the README's example models (occupancy + silero_vad, the idle RSS target's) both
        with the events topic off and on."""
        assert self.probe is not None
        cases = [
            ("floor", ["occupancy"]),
            ("plain", ["occupancy"]),
            ("plain", ["cnn"]),
            (TARGET_SERVER, ["occupancy"]),
            (TARGET_SERVER, ["cnn"]),
            (TARGET_SERVER, ["occupancy", "cnn"]),
        ]
        if (self.repo / "silero_vad").is_dir():
            cases += [(kind, ["occupancy", "silero_vad"]) for kind in EDGERT_EVENTS]
        rows = []
        for kind, models in cases:
            server = self.start_server(kind, models)
            row: dict[str, Any] = {"server": kind, "models": models, "rss_mib": None}
            try:
                for model in models:
                    workload = next((w for w in WORKLOADS.values() if w.model == model), None)
                    if workload is not None:
                        self.probe.ask(workload, server)
                time.sleep(1.0)
                row["rss_mib"] = round(rss_mib(server.pid), 1)
                self.say(f"  {server.name}: {row['rss_mib']:.1f} MiB")
            except RuntimeError as exc:
                row["error"] = str(exc)
                self.say(f"  {server.name}: FAILED: {str(exc).splitlines()[0]}")
            finally:
                server.stop()
            rows.append(row)
        return rows

    def run(self) -> dict[str, Any]:
        opts = self.options
        models = ["occupancy", "cnn"]  # both, whatever the workloads: idle RSS needs them
        if available("silero_vad"):
            models.append("silero_vad")
        self.say(f"compiling {', '.join(models)} into a temporary repository")
        prepare_repository(self.repo, models, self.logs / "compile.log")
        costs = {}
        for key in opts.workloads:
            workload = WORKLOADS[key]
            onnx = self.repo / workload.model / "model.onnx"
            costs[key] = inference_ms(onnx, workload.feed, 50 if opts.quick else 300)
            self.say(
                f"ONNX Runtime alone, {workload.model}: {costs[key]['1_thread']} ms per request "
                f"on 1 thread, {costs[key]['default_threads']} ms on the default threads"
            )
        self.probe = Probe(self.broker.port, self.tag)
        self.gen = LoadGenerator(opts.generators, "127.0.0.1", self.broker.port, self.tag)
        points: list[dict[str, Any]] = []
        workloads: dict[str, Any] = {}
        for key in opts.workloads:
            workload = WORKLOADS[key]
            self.say(f"{key}: {workload.title}")
            found, info = self.run_workload(workload)
            points += found
            workloads[key] = info | {"onnxruntime_ms_per_request": costs[key]}
        self.say("idle RSS")
        return {
            "servers": {
                kind: {
                    "name": name,
                    "events": EDGERT_EVENTS.get(kind),
                    "targets": kind == TARGET_SERVER,
                }
                for kind, name in SERVERS.items()
            },
            "points": points,
            "workloads": workloads,
            "idle_rss": self.idle_rss(),
            "mosquitto": self.broker.version(),
        }


def summarise_load(results: list[WorkerResult], duration: float) -> dict[str, Any]:
    """What the generator processes saw in one window of ``duration`` s: replies, errors,
    timeouts, throughput and latency percentiles (ms; NaN without a reply)."""
    latencies = np.array([x for r in results for x in r.latencies]) * 1000
    ok = sum(r.ok for r in results)

    def pct(q: float) -> float:
        return round(float(np.percentile(latencies, q)), 3) if ok else float("nan")

    return {
        "duration_s": duration,
        "ok": ok,
        "errors": sum(r.errors for r in results),
        "timeouts": sum(r.timeouts for r in results),
        "error_sample": next((r.error_sample for r in results if r.error_sample), ""),
        "throughput_rps": round(ok / duration, 2),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": round(float(latencies.mean()), 3) if ok else float("nan"),
    }


def summarise_point(
    results: list[WorkerResult], duration: float, cpu0: dict[str, float], cpu1: dict[str, float]
) -> dict[str, Any]:
    """:func:`summarise_load` and the CPU seconds per 1,000 replies of the server, the generator
    and the broker (``cpu0``/``cpu1``: their CPU seconds at the window's start and end)."""
    load = summarise_load(results, duration)
    ok = load["ok"]
    per_1k = 1000 / ok if ok else float("nan")
    return {
        **load,
        "cpu_s_per_1k": round((cpu1["server"] - cpu0["server"]) * per_1k, 4),
        "server_cores_used": round((cpu1["server"] - cpu0["server"]) / duration, 3),
        "generator_cpu_s_per_1k": round((cpu1["gen"] - cpu0["gen"]) * per_1k, 4),
        "broker_cpu_s_per_1k": round((cpu1["broker"] - cpu0["broker"]) * per_1k, 4),
    }


def run(options: Options, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole bench; the results as results.json holds them (less meta and targets)."""
    with tempfile.TemporaryDirectory(prefix="edgert-bench-") as tmp:
        bench = Bench(options, Path(tmp), say)
        try:
            results = bench.run()
        finally:
            bench.close()
    results["meta"] = {
        "cores": os.cpu_count(),
        "duration_s": options.duration,
        "warmup_s": options.warmup,
        "generators": options.generators,
        "qos": options.qos,
        "mosquitto": results.pop("mosquitto"),
    }
    return results
