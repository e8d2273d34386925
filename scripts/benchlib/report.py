"""results.json and results.md: the header, the devices' matrix (``matrixreport``), and the
several-process points' values, ratios and targets with PASS/FAIL (plot.png: ``plot``)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import matrixreport
from benchlib.markdown import fmt as _fmt
from benchlib.markdown import table

__all__ = [
    "evaluate",
    "evaluate_targets",
    "idle_readings",
    "markdown",
    "write_json",
]

# (key, column title, digits); ratios of these are edgert's over the other server's.
METRICS = [
    ("throughput_rps", "req/s", 1),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 2),
    ("cpu_s_per_1k", "CPU s / 1k req", 3),
    ("peak_rss_mib", "peak RSS MiB", 1),
]
Points = list[dict[str, Any]]


def _find(points: Points, workload: str, server: str, concurrency: int) -> dict[str, Any] | None:
    for p in points:
        if (p["workload"], p["server"], p["concurrency"]) == (workload, server, concurrency):
            return p
    return None


def _servers(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Server key -> {"name", "events", "targets"}: events is edgert's [serve] events (None for
    the servers that are not edgert); targets marks the edgert the targets compare."""
    servers: dict[str, dict[str, Any]] = results["servers"]
    return servers


def _edgerts(results: dict[str, Any]) -> list[str]:
    return [k for k, v in _servers(results).items() if v["events"] is not None]


def _target_server(results: dict[str, Any]) -> str:
    return next(k for k, v in _servers(results).items() if v.get("targets"))


def _short(results: dict[str, Any], kind: str) -> str:
    """A server's name in ratio labels: "edgert (events off)" and the like."""
    events = _servers(results)[kind]["events"]
    if events is None:
        return str(_servers(results)[kind]["name"])
    return f"edgert (events {'on' if events else 'off'})"


def _ratio(
    points: Points, workload: str, concurrency: int, metric: str, other: str, mine: str
) -> float:
    """``mine``'s ``metric`` over ``other``'s at one point; NaN where either is missing."""
    found = _find(points, workload, mine, concurrency)
    theirs = _find(points, workload, other, concurrency)
    if found is None or theirs is None or not theirs[metric] or found[metric] is None:
        return math.nan
    return float(found[metric]) / float(theirs[metric])


def _target(
    name: str, short: str, ratios: dict[str, float], ok: Callable[[float], bool]
) -> dict[str, Any]:
    found = {k: v for k, v in ratios.items() if not math.isnan(v)}
    if not found or len(found) < len(ratios):
        result = "not measured"
    else:
        result = "PASS" if all(ok(v) for v in found.values()) else "FAIL"
    measured = ", ".join(f"{k}: {_fmt(v)}x" for k, v in ratios.items())
    return {
        "target": name,
        "short": short,
        "measured": measured or "n/a",
        "result": result,
        "ratios": ratios,
    }


def _idle(idle: list[dict[str, Any]], server: str, models: list[str]) -> float:
    for row in idle:
        if row["server"] == server and row["models"] == models and row["rss_mib"] is not None:
            return float(row["rss_mib"])
    return math.nan


def evaluate_targets(results: dict[str, Any], server: str | None = None) -> list[dict[str, Any]]:
    """The issue's targets for the several-process points, for one edgert server (default:
    events off), each with what was measured and PASS, FAIL or not measured: the CNN's and idle
    RSS. The tiny MLP's targets are the devices' matrix's (``matrixreport``)."""
    server = server or _target_server(results)
    points: Points = results["points"]

    def ratio(workload: str, c: int, metric: str) -> float:
        return _ratio(points, workload, c, metric, "plain", server)

    idle = results["idle_rss"]
    examples = _idle(idle, server, ["occupancy", "silero_vad"]) / _idle(
        idle, "plain", ["occupancy"]
    )
    return [
        _target(
            "CNN (YOLO11n): throughput at c=64, edgert / plain loop >= 1.3x",
            "CNN throughput",
            {"c=64": ratio("cnn", 64, "throughput_rps")},
            lambda r: r >= 1.3,
        ),
        _target(
            "CNN (YOLO11n): p99 latency at c=64, edgert / plain loop <= 1.0x",
            "CNN p99 latency",
            {"c=64": ratio("cnn", 64, "p99_ms")},
            lambda r: r <= 1.0,
        ),
        _target(
            "idle RSS: edgert with both example models (occupancy + silero_vad) / plain loop"
            " with one (occupancy) <= 1.3x",
            "idle RSS",
            {"occupancy + silero_vad": examples},
            lambda r: r <= 1.3,
        ),
    ]


def idle_readings(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Idle RSS ratios that are not targets: edgert (events off) over the plain loop with the
    bench models."""
    idle, server = results["idle_rss"], _target_server(results)
    cases = [
        (["occupancy", "cnn"], ["cnn"]),
        (["occupancy"], ["occupancy"]),
        (["cnn"], ["cnn"]),
    ]
    rows = []
    for mine, theirs in cases:
        value = _idle(idle, server, mine) / _idle(idle, "plain", theirs)
        rows.append(
            {
                "reading": f"idle RSS: {_short(results, server)} with {' + '.join(mine)} / "
                f"plain loop with {' + '.join(theirs)}",
                "ratio": value,
            }
        )
    return rows


def evaluate(results: dict[str, Any]) -> dict[str, Any]:
    """What results.json adds to the measurements: ``matrix.summary`` (the devices' matrix's
    cells, medians and targets) where the matrix ran; where the several-process points ran,
    ``targets`` (edgert with events off), ``targets_events_on`` (the same targets for edgert
    with events on; [] if it was not run) and ``idle_rss_readings`` (idle RSS ratios that are
    not targets)."""
    if "matrix" in results:
        results["matrix"]["summary"] = matrixreport.evaluate(results["matrix"])
    if "points" not in results:
        return {}
    on = [k for k in _edgerts(results) if _servers(results)[k]["events"]]
    return {
        "targets": evaluate_targets(results),
        "targets_events_on": evaluate_targets(results, on[0]) if on else [],
        "idle_rss_readings": idle_readings(results),
    }


def _events_line(targets: list[dict[str, Any]]) -> str:
    """The targets' figures for edgert with the events topic on, in one line."""
    if not targets:
        return "edgert serve (events on) was not measured."
    parts = [f"{t['short']} ({t['measured']}; {t['result']})" for t in targets]
    return (
        "The same targets with the events topic on (edgert serve (events on) / plain loop): "
        + "; ".join(parts)
        + "."
    )


def _events_statement(results: dict[str, Any]) -> str:
    """Which runs had edgert's events topic on, for the header."""
    servers = _servers(results)
    on = " and ".join(v["name"] for v in servers.values() if v["events"]) or "none"
    off = " and ".join(v["name"] for v in servers.values() if v["events"] is False) or "none"
    return (
        f"**Events topic: on in the {on} runs only.** With `[serve] events = true` (the "
        "daemon's default) edgert publishes every result twice: the reply, and a QoS 0 copy to "
        "edgert/node/<node>/events/<model>; nothing here subscribes to that topic, so the broker "
        f"matches each copy and drops it. Off (`events = false`) in the {off} runs. Both ran at "
        "every point and in the idle RSS with the example models. The targets compare edgert "
        "with the events topic off; the line under them gives the same targets with it on. The "
        "echo floor and the plain loop publish no events."
    )


def _workload_section(results: dict[str, Any], key: str, info: dict[str, Any]) -> list[str]:
    points: Points = results["points"]
    servers = _servers(results)
    mine = [p for p in points if p["workload"] == key]
    concurrencies = sorted({p["concurrency"] for p in mine})
    cost = info.get("onnxruntime_ms_per_request", {})
    said = {True: "yes", False: "NO", None: "not compared"}
    agreed = info.get("outputs_agree")
    if isinstance(agreed, dict):
        agree = ", ".join(f"{_short(results, k)} {said[v]}" for k, v in agreed.items())
    else:
        agree = said[agreed]
    lines = [
        f"### {key}: {info['title']}",
        "",
        f"ONNX Runtime alone (no MQTT), median per request: {cost.get('1_thread', 'n/a')} ms on "
        f"1 thread, {cost.get('default_threads', 'n/a')} ms on the default threads. "
        f"The plain loop's and edgert's outputs agree on the probe request: {agree}.",
        "",
    ]
    header = ["c", "server", *(title for _, title, _ in METRICS)]
    header += ["server cores", "gen CPU s / 1k", "broker CPU s / 1k", "machine busy %"]
    header += ["edgert batch", "errors"]
    rows = []
    for c in concurrencies:
        for server in servers:
            p = _find(mine, key, server, c)
            if p is None:
                continue
            rows.append(
                [str(c), servers[server]["name"]]
                + [_fmt(p[m], d) for m, _, d in METRICS]
                + [
                    _fmt(p["server_cores_used"]),
                    _fmt(p["generator_cpu_s_per_1k"], 3),
                    _fmt(p["broker_cpu_s_per_1k"], 3),
                    _fmt(p["machine_busy_pct"], 0),
                    _fmt(p["mean_batch"]) if p["mean_batch"] else "",
                    str(p["errors"] + p["timeouts"]),
                ]
            )
    lines += table(header, rows)
    lines += [
        "",
        "Ratios (edgert over the other server; for req/s higher is better, else lower):",
        "",
        *table(["c", "ratio", *(t for _, t, _ in METRICS)], _ratio_rows(results, key)),
    ]
    return [*lines, *_headroom(results, key), ""]


def _ratio_rows(results: dict[str, Any], key: str) -> list[list[str]]:
    """Each edgert over the plain loop and the floor (and events on over off), per concurrency."""
    mine = [p for p in results["points"] if p["workload"] == key]
    edgerts = _edgerts(results)
    pairs = [(e, other) for e in edgerts for other in ("plain", "floor")]
    if len(edgerts) == 2:
        pairs.append((edgerts[1], edgerts[0]))  # the events topic's own cost
    rows = []
    for c in sorted({p["concurrency"] for p in mine}):
        for server, other in pairs:
            rows.append(
                [str(c), f"{_short(results, server)} / {_short(results, other)}"]
                + [_fmt(_ratio(mine, key, c, m, other, server)) + "x" for m, _, _ in METRICS]
            )
    return rows


def _headroom(results: dict[str, Any], key: str) -> list[str]:
    """The generators' headroom line: echo floor req/s over the faster server's."""
    mine = [p for p in results["points"] if p["workload"] == key]
    headroom = []
    for c in sorted({p["concurrency"] for p in mine}):
        floor = _find(mine, key, "floor", c)
        best = max(
            (
                p["throughput_rps"]
                for s in ["plain", *_edgerts(results)]
                if (p := _find(mine, key, s, c))
            ),
            default=0.0,
        )
        if floor and best:
            headroom.append(f"c={c}: {floor['throughput_rps'] / best:.1f}x")
    if not headroom:
        return []
    return [
        "",
        "Generator headroom (echo floor req/s over the faster server's): "
        + ", ".join(headroom)
        + ".",
    ]


def _header(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    return [
        f"# edgert bench, {meta['started']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB; {meta['versions']}. "
        "The broker, the server and the load share the machine's cores.",
        "",
    ]


def _points_section(results: dict[str, Any]) -> list[str]:
    """results.md on the several-process points: targets, workloads, idle RSS."""
    meta = results["meta"]
    lines = [
        "## Several load processes (MQTT 5, tuned clients)",
        "",
        f"mosquitto {meta['mosquitto']}. {meta['duration_s']:g} s measured per point after "
        f"{meta['warmup_s']:g} s of warm-up; closed loop from {meta['generators']} generator "
        f"processes, QoS {meta['qos']}. The broker, the generator, the echo floor and the plain "
        "loop turn Nagle's algorithm off (TCP_NODELAY); edgert serve's sockets are as the daemon "
        "sets them.",
        "",
        _events_statement(results),
        "",
        "### Targets",
        "",
        f"edgert here is {_servers(results)[_target_server(results)]['name']}; the baseline is "
        "the plain loop. The tiny MLP's targets are the devices' matrix's.",
        "",
    ]
    rows = [[t["target"], t["measured"], t["result"]] for t in results["targets"]]
    lines += [*table(["target", "measured (edgert / baseline)", "result"], rows), ""]
    lines += [_events_line(results.get("targets_events_on", [])), ""]
    lines += ["Other idle RSS readings (information, not targets):", ""]
    rows = [[r["reading"], _fmt(r["ratio"]) + "x"] for r in results.get("idle_rss_readings", [])]
    lines += [*table(["reading", "ratio"], rows), ""]
    for key, info in results["workloads"].items():
        lines += _workload_section(results, key, info)
    lines += [
        "### Idle RSS (loaded, one request answered per bench model; silero_vad loaded, not asked)",
        "",
    ]
    servers = _servers(results)
    rows = [
        [servers[r["server"]]["name"], " + ".join(r["models"]), _fmt(r["rss_mib"], 1)]
        for r in results["idle_rss"]
    ]
    lines += [*table(["server", "models", "RSS MiB"], rows), ""]
    lines += [
        "Columns: req/s counts successful replies that arrived in the measured window; latency "
        "is measured in the generator, publish to reply; CPU is the server process's user + "
        "system time (all threads) in the window over its replies; peak RSS is VmHWM over the "
        "point (reset at its start); gen and broker CPU are the load generator's and mosquitto's "
        "per 1,000 replies; machine busy is all cores over the window; edgert batch is replies per "
        "backend run, from the daemon's stats messages around the window; errors counts error "
        "replies and timeouts.",
        "",
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """results.md: the header (with the command), the devices' matrix where it ran, then the
    several-process points where they ran."""
    lines = _header(results)
    if "matrix" in results:
        lines += matrixreport.markdown(results["matrix"])
    if "points" in results:
        lines += _points_section(results)
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(results), indent=2) + "\n")
