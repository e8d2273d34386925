"""The devices' matrix in results.json and results.md: per cell, each server's medians over the
rounds, edgert / plain loop against the issue's targets, and whether a cell stalls ~40 ms."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from benchlib.markdown import fmt, table
from benchlib.matrix import IN_FLIGHT, QOS, STYLES

__all__ = ["STALL_MS", "TARGETS", "evaluate", "markdown", "summary_line"]

# (metric, title, test, bound): edgert's median over the plain loop's, per cell.
TARGETS: list[tuple[str, str, Callable[[float], bool], str]] = [
    ("throughput_rps", "throughput", lambda r: r >= 1.0, ">= 1.0x"),
    ("cpu_ms_per_req", "CPU per request", lambda r: r <= 1.0, "<= 1.0x"),
    ("p50_ms", "p50 latency", lambda r: r <= 1.15, "<= 1.15x"),
]
MEDIANS = ("throughput_rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "slow_share")
# A median request that waited at least once for a delayed ACK (40 ms on Linux) behind Nagle's
# algorithm: the tiny MLP answers in well under this at 16 in flight.
STALL_MS = 35.0
# The table's servers, in its order: paho's echo floor, edgert's transport's (gmqtt), the two.
KINDS = ("floor", "gfloor", "plain", "edgert")
SHORT = {"floor": "paho floor", "gfloor": "gmqtt floor", "plain": "plain", "edgert": "edgert"}
STYLE_SHORT = {"reply_to": "3.1.1 reply_to", "response_topic": "5 Response Topic"}


def _median(values: list[float]) -> float:
    found = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(found) if found else math.nan


def _medians(points: list[dict[str, Any]]) -> dict[str, Any]:
    """A server's figures at one cell: the median of each over its rounds, and the rounds'."""
    found: dict[str, Any] = {m: _median([p[m] for p in points]) for m in MEDIANS}
    found["rounds"] = len(points)
    found["errors"] = sum(p["errors"] + p["timeouts"] for p in points)
    found["per_round"] = {m: [p[m] for p in points] for m in ("throughput_rps", "p50_ms")}
    found["stall"] = not math.isnan(found["p50_ms"]) and found["p50_ms"] >= STALL_MS
    return found


def _verdicts(edgert: dict[str, Any] | None, plain: dict[str, Any] | None) -> dict[str, Any]:
    """Each target's ratio and PASS / FAIL / not measured, and the cell's result."""
    targets: dict[str, Any] = {}
    for metric, _title, ok, _bound in TARGETS:
        ratio = math.nan
        if edgert and plain and plain[metric] and not math.isnan(plain[metric]):
            ratio = edgert[metric] / plain[metric]
        result = "not measured" if math.isnan(ratio) else ("PASS" if ok(ratio) else "FAIL")
        targets[metric] = {"ratio": ratio, "result": result}
    results = {t["result"] for t in targets.values()}
    overall = next(r for r in ("FAIL", "not measured", "PASS") if r in results)
    return {"targets": targets, "result": overall}


def evaluate(matrix: dict[str, Any]) -> list[dict[str, Any]]:
    """The matrix's cells, in order: each server's medians, and edgert / plain loop's targets."""
    cells = []
    for style in STYLES:
        for qos in QOS:
            for in_flight in IN_FLIGHT:
                mine = [
                    p
                    for p in matrix["points"]
                    if (p["style"], p["qos"], p["in_flight"]) == (style, qos, in_flight)
                ]
                servers = {
                    kind: _medians(found)
                    for kind in matrix["servers"]
                    if (found := [p for p in mine if p["server"] == kind])
                }
                cell = {"style": style, "qos": qos, "in_flight": in_flight, "servers": servers}
                cells.append(cell | _verdicts(servers.get("edgert"), servers.get("plain")))
    return cells


def _value(cell: dict[str, Any], kind: str, metric: str, digits: int) -> str:
    found = cell["servers"].get(kind)
    return fmt(found[metric], digits) if found else "n/a"


def _stalls(cell: dict[str, Any], names: dict[str, str]) -> str:
    stalled = [
        f"{names[kind]} ({s['p50_ms']:.0f} ms)" for kind, s in cell["servers"].items() if s["stall"]
    ]
    return "STALL: " + ", ".join(stalled) if stalled else "no"


def _cell_label(cell: dict[str, Any]) -> list[str]:
    return [str(cell["qos"]), STYLE_SHORT[cell["style"]], str(cell["in_flight"])]


def _values_table(cells: list[dict[str, Any]], names: dict[str, str]) -> list[list[str]]:
    rows = []
    for cell in cells:
        rows.append(
            _cell_label(cell)
            + [_value(cell, k, "throughput_rps", 0) for k in KINDS]
            + [_value(cell, k, "p50_ms", 2) for k in KINDS]
            + [_value(cell, k, "cpu_ms_per_req", 3) for k in KINDS]
            + [_stalls(cell, names)]
        )
    return rows


def _ratio_text(ratio: float, ok: Callable[[float], bool]) -> str:
    """Two decimals; more where two would round the ratio onto the other side of its bound
    (1.004 is not "1.00x FAIL" but "1.004x FAIL")."""
    text = fmt(ratio, 2)
    for digits in (3, 4):
        if math.isnan(ratio) or ok(float(text)) == ok(ratio):
            break
        text = fmt(ratio, digits)
    return text


def _targets_table(cells: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for cell in cells:
        found = [
            f"{_ratio_text(cell['targets'][m]['ratio'], ok)}x {cell['targets'][m]['result']}"
            for m, _title, ok, _bound in TARGETS
        ]
        errors = sum(s["errors"] for s in cell["servers"].values())
        rows.append([*_cell_label(cell), *found, cell["result"], str(errors)])
    return rows


def summary_line(cells: list[dict[str, Any]]) -> str:
    """One line: how many cells pass every target, which fail, and the stalls."""
    passed = sum(c["result"] == "PASS" for c in cells)
    failed = [
        f"QoS {c['qos']} {STYLE_SHORT[c['style']]} c={c['in_flight']}"
        for c in cells
        if c["result"] != "PASS"
    ]
    stalled = sum(any(s["stall"] for s in c["servers"].values()) for c in cells)
    line = f"matrix: {passed} of {len(cells)} cells PASS every target"
    if failed:
        line += f"; not passing: {', '.join(failed)}"
    return line + f"; {stalled} cell(s) with a ~40 ms p50 stall."


def markdown(matrix: dict[str, Any]) -> list[str]:
    """results.md's section on the matrix: its lines."""
    names = dict(matrix["servers"])
    cells = matrix["summary"]
    agree = ", ".join(
        f"{STYLE_SHORT[s]}: {'yes' if v else 'NO' if v is False else 'not compared'}"
        for s, v in matrix["outputs_agree"].items()
    )
    lines = [
        "## Devices' matrix: edgert serve at its defaults vs a plain loop at paho's defaults",
        "",
        f"Workload: {matrix['title']}. Medians of {matrix['rounds']} round(s), each cell "
        f"{matrix['duration_s']:g} s measured after {matrix['warmup_s']:g} s of warm-up; each "
        "round reverses the servers' order (interleaved). Load: one process, one paho client at "
        "paho's defaults (Nagle on, 20 QoS 1 in flight), closed loop, over the cell's protocol "
        "(MQTT 3.1.1 with the JSON reply_to; MQTT 5 with Response Topic + Correlation Data). "
        "paho floor (echo, no inference) and plain loop: paho.Client(CallbackAPIVersion.VERSION2) "
        "(3.1.1; MQTT 5 for the Response Topic cells), no TCP_NODELAY; the plain loop infers in "
        "on_message and replies at the request's QoS. gmqtt floor: the same echo on edgert's "
        "transport, gmqtt on uvloop, over MQTT 5 as edgert speaks it, a QoS 1 request "
        "acknowledged once its reply is (as edgert does). edgert serve: a config with only the "
        "broker and the "
        f"repository ({matrix['edgert_config']}: MQTT 5, events on; backend "
        f"{matrix.get('edgert_backend', 'unknown')}). Broker: a fresh mosquitto "
        f"{matrix['mosquitto']} per server and request style, "
        + ("with set_tcp_nodelay true." if matrix.get("broker_nodelay") else "at its defaults.")
        + f" Outputs agree, plain loop and edgert: {agree}.",
        "",
    ]
    header = ["QoS", "request", "in flight"]
    header += [f"{SHORT[k]} req/s" for k in KINDS]
    header += [f"{SHORT[k]} p50 ms" for k in KINDS]
    header += [f"{SHORT[k]} CPU ms/req" for k in KINDS]
    header += ["~40 ms p50 stall"]
    lines += [*table(header, _values_table(cells, names)), ""]
    header = ["QoS", "request", "in flight"]
    header += [f"{title} {bound}" for _, title, _, bound in TARGETS]
    header += ["cell", "errors + timeouts"]
    lines += [
        "Targets, edgert serve / plain loop (medians):",
        "",
        *table(header, _targets_table(cells)),
        "",
        summary_line(cells),
        "",
        "CPU is the server process's user + system time over the window (edgert: the python -m "
        "edgert.daemon process edgert serve execs into) per reply; a ~40 ms p50 stall is a "
        f"server whose median latency is {STALL_MS:g} ms or more (a delayed ACK, 40 ms, behind "
        "Nagle's algorithm; the tiny MLP answers far sooner). results.json has every round's "
        "figures, the broker's and the load process's CPU, and each server's share of replies "
        f"over {STALL_MS:g} ms.",
        "",
    ]
    return lines
