"""The devices' matrix: edgert serve at its defaults against a plain loop written with paho's
defaults, on the tiny MLP, cell by cell.

Cells: {QoS 0, 1} x {MQTT 3.1.1 with the JSON ``reply_to``, MQTT 5 Response Topic} x {1, 16 in
flight}. The load is one process with one paho client at paho's defaults (Nagle's algorithm on,
paho's 20 QoS 1 messages in flight; ``loadgen.Transport(tuned=False)``), closed loop, over the
cell's protocol: 3.1.1 for ``reply_to``, 5 for the Response Topic. The servers:

- echo floor: ``scripts/echo-floor --paho-defaults`` over the cell's protocol (paho's floor);
- gmqtt floor: ``scripts/echo-floor --client gmqtt`` over MQTT 5, as edgert serve speaks it:
  the floor of edgert's own transport (gmqtt on uvloop, acknowledging as edgert does);
- plain loop: ``scripts/plain-loop --paho-defaults`` over the cell's protocol (what a user
  writes: ``paho.Client(CallbackAPIVersion.VERSION2)``, so MQTT 3.1.1, for the ``reply_to``
  cells; MQTT 5 for the Response Topic cells), inference in on_message, the reply at the
  request's QoS;
- edgert serve: a config with the broker and the repository only (MQTT 5, events on, ...).

A slot is one server for one request style: a fresh mosquitto at its defaults (as on a device;
``broker_nodelay``: with set_tcp_nodelay true; fresh, so that no session of an earlier edgert,
which the broker keeps 300 s by default, queues requests while another server is measured), the
server, the load process, then the style's four cells. A round runs every slot once, the servers
side by side per style; each round reverses the servers' order (interleaved). ``matrixreport``
takes the medians over the rounds.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchlib.loadgen import LoadGenerator, PointSpec, Transport, WorkerResult
from benchlib.probe import Probe, outputs_agree, reply_outputs
from benchlib.procs import Broker, Server, cpu_seconds
from benchlib.runner import machine_busy, sleep_until, summarise_point
from benchlib.workloads import REPO, WORKLOADS, default_config, prepare_repository

__all__ = [
    "FLOORS",
    "IN_FLIGHT",
    "QOS",
    "SERVERS",
    "STYLES",
    "WORKLOAD",
    "Matrix",
    "MatrixOptions",
    "run",
]

STYLES = {"reply_to": "3.1.1", "response_topic": "5"}  # request style -> MQTT version
STYLE_NAMES = {"reply_to": "3.1.1 + JSON reply_to", "response_topic": "MQTT 5 Response Topic"}
QOS = (0, 1)
IN_FLIGHT = (1, 16)
SERVERS = {
    "floor": "echo floor",
    "gfloor": "gmqtt floor",
    "plain": "plain loop",
    "edgert": "edgert serve",
}
FLOORS = ("floor", "gfloor")  # echo servers: no outputs to compare
WORKLOAD = "mlp"
SLOW_S = 0.035  # a reply this late is a Nagle / delayed-ACK stall's (40 ms) on this workload


@dataclass(frozen=True)
class MatrixOptions:
    rounds: int
    duration: float  # s measured per cell
    warmup: float  # s of load before each measured window
    timeout: float  # s before a request is counted as timed out and sent again
    out: Path
    broker_nodelay: bool = False  # set_tcp_nodelay on the broker (default: mosquitto's defaults)


@dataclass(frozen=True)
class Cell:
    style: str
    qos: int
    in_flight: int


def _slow_share(results: list[WorkerResult]) -> float:
    """The share of the window's replies that took SLOW_S or longer."""
    latencies = np.array([x for r in results for x in r.latencies])
    return round(float(np.mean(latencies >= SLOW_S)), 4) if latencies.size else float("nan")


class Matrix:
    def __init__(self, options: MatrixOptions, tmp: Path, say: Callable[[str], None]) -> None:
        self.options = options
        self.tmp = tmp
        self.say = say
        self.logs = options.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.repo = tmp / "repo"
        self.tag = uuid.uuid4().hex[:8]
        self.workload = WORKLOADS[WORKLOAD]
        self.point_no = 0
        self.points: list[dict[str, Any]] = []
        self.slots: list[dict[str, Any]] = []
        self.answers: dict[
            tuple[str, str], dict[str, np.ndarray]
        ] = {}  # (server, style) -> outputs
        self.mosquitto = "unknown"

    def start_server(self, kind: str, style: str, broker: Broker, label: str) -> Server:
        python, url = sys.executable, broker.url
        defaults = ["--broker", url, "--protocol", STYLES[style], "--paho-defaults"]
        model = self.workload.model
        if kind == "floor":
            command = [python, str(REPO / "scripts/echo-floor"), model, *defaults]
        elif kind == "gfloor":
            gmqtt = ["--broker", url, "--protocol", "5", "--client", "gmqtt"]
            command = [python, str(REPO / "scripts/echo-floor"), model, *gmqtt]
        elif kind == "plain":
            onnx = self.repo / model / "model.onnx"
            command = [python, str(REPO / "scripts/plain-loop"), str(onnx), *defaults]
        else:
            config = default_config(self.tmp / f"{label}.toml", url, self.repo)
            command = [python, "-m", "edgert", "serve", "--config", str(config)]
        name = f"{SERVERS[kind]} ({STYLE_NAMES[style]})"
        return Server(name, command, self.logs / f"{label}.log")

    def measure(
        self, cell: Cell, kind: str, server: Server, broker: Broker, gen: LoadGenerator
    ) -> dict[str, Any]:
        """One cell against a running server: its point (figures as runner's, plus the share of
        slow replies)."""
        opts, workload = self.options, self.workload
        self.point_no += 1
        start = time.monotonic() + 0.2
        measure = start + opts.warmup
        end = measure + opts.duration
        spec = PointSpec(
            point=self.point_no,
            topic=f"edgert/infer/{workload.model}",
            content_type=workload.content_type,
            json_head=workload.json_head,
            json_tail=workload.json_tail,
            npy=b"",
            qos=cell.qos,
            clients=0,
            start=start,
            measure=measure,
            end=end,
            timeout=opts.timeout,
        )
        gen.start(spec, cell.in_flight)
        pids = {"server": [server.pid], "broker": [broker.pid], "gen": gen.pids}
        sleep_until(measure)
        cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        busy0 = machine_busy()
        sleep_until(end)
        cpu1 = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        busy1 = machine_busy()
        results = gen.collect(opts.warmup + opts.duration + 2 * opts.timeout + 30)
        server.check_alive()
        point = summarise_point(results, opts.duration, cpu0, cpu1)
        return {
            "server": kind,
            "style": cell.style,
            "qos": cell.qos,
            "in_flight": cell.in_flight,
            **point,
            "cpu_ms_per_req": point["cpu_s_per_1k"],  # s per 1,000 = ms per request
            "slow_share": _slow_share(results),
            "machine_busy_pct": round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1),
        }

    def _ready(self, kind: str, style: str, server: Server, port: int) -> float:
        """Seconds until ``server`` answered the probe; keeps its outputs from the first round."""
        probe = Probe(port, self.tag)
        try:
            began = time.monotonic()
            reply = probe.ask(self.workload, server)
            ready = time.monotonic() - began
        finally:
            probe.close()
        if kind not in FLOORS:
            self.answers.setdefault((kind, style), reply_outputs(reply))
        return ready

    def run_slot(self, round_no: int, style: str, kind: str) -> None:
        """A fresh broker and ``kind`` for ``style``, its four cells measured into points."""
        label = f"matrix-r{round_no}-{style}-{kind}"
        directory = self.tmp / label
        directory.mkdir()
        slot: dict[str, Any] = {"round": round_no, "style": style, "server": kind}
        self.slots.append(slot)
        broker = Broker(directory, nodelay=self.options.broker_nodelay)
        self.mosquitto = broker.version()
        server: Server | None = None
        gen: LoadGenerator | None = None
        try:
            server = self.start_server(kind, style, broker, label)
            slot["ready_s"] = round(self._ready(kind, style, server, broker.port), 2)
            if kind == "edgert":
                slot["backend"] = _backend(server.log)
            transport = Transport(STYLES[style], tuned=False)
            gen = LoadGenerator(1, "127.0.0.1", broker.port, self.tag, transport)
            self.say(f"  {server.name}: answering after {slot['ready_s']:.1f} s")
            for qos in QOS:
                for in_flight in IN_FLIGHT:
                    cell = Cell(style, qos, in_flight)
                    point = self.measure(cell, kind, server, broker, gen)
                    self.points.append({"round": round_no, **point})
                    self.say(_point_line(point))
        finally:
            if gen is not None:
                gen.close()
            if server is not None:
                server.stop()
            broker.stop()
            log = directory / "mosquitto.log"
            if log.exists() and log.stat().st_size:
                (self.logs / f"{label}-mosquitto.log").write_bytes(log.read_bytes())

    def run(self) -> dict[str, Any]:
        opts = self.options
        self.say(f"matrix: compiling {self.workload.model} into a temporary repository")
        prepare_repository(self.repo, [self.workload.model], self.logs / "compile-matrix.log")
        for round_no in range(1, opts.rounds + 1):
            order = list(SERVERS) if round_no % 2 else list(reversed(SERVERS))
            self.say(f"matrix round {round_no} of {opts.rounds}: " + ", ".join(order))
            for style in STYLES:
                for kind in order:
                    try:
                        self.run_slot(round_no, style, kind)
                    except RuntimeError as exc:  # one server failing must not lose the others'
                        self.slots[-1]["error"] = str(exc)
                        self.say(f"  {SERVERS[kind]} ({style}): FAILED: {str(exc).splitlines()[0]}")
        return {
            "workload": WORKLOAD,
            "title": self.workload.title,
            "rounds": opts.rounds,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "servers": SERVERS,
            "styles": STYLE_NAMES,
            "edgert_config": "[broker] url, [serve] repository; all else the daemon's defaults",
            "edgert_backend": ", ".join(
                sorted({s["backend"] for s in self.slots if s.get("backend")})
            )
            or "unknown",
            "mosquitto": self.mosquitto,
            "broker_nodelay": opts.broker_nodelay,
            "points": self.points,
            "slots": self.slots,
            "outputs_agree": {
                style: outputs_agree(
                    self.answers.get(("plain", style)), self.answers.get(("edgert", style))
                )
                for style in STYLES
            },
        }


def _backend(log: Path) -> str | None:
    """The backend edgert serve loaded the model on, from its log ("loaded (onnxruntime, ...")."""
    found = re.search(r"loaded \((\w+)", log.read_text(errors="replace"))
    return found.group(1) if found else None


def _point_line(p: dict[str, Any]) -> str:
    line = (
        f"    QoS {p['qos']} c={p['in_flight']:<3} {p['throughput_rps']:8.1f} req/s  "
        f"p50 {p['p50_ms']:7.2f} ms  p99 {p['p99_ms']:7.2f} ms  "
        f"CPU {p['cpu_ms_per_req']:6.3f} ms/req"
    )
    if p["slow_share"] and p["slow_share"] >= 0.01:
        line += f"  {100 * p['slow_share']:.0f}% >= {SLOW_S * 1000:.0f} ms"
    if p["errors"] or p["timeouts"]:
        line += f"  errors {p['errors']} timeouts {p['timeouts']}"
    if p["error_sample"]:
        line += f"\n      first error reply: {p['error_sample'][:200]}"
    return line


def run(options: MatrixOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the matrix; what results.json holds under ``matrix`` (less the summary)."""
    with tempfile.TemporaryDirectory(prefix="edgert-matrix-") as tmp:
        return Matrix(options, Path(tmp), say).run()
