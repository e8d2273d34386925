"""results.json, results.md (values, ratios, targets with PASS/FAIL) and plot.png."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["evaluate_targets", "markdown", "plot", "write_json"]

SERVER_NAMES = {"floor": "echo floor", "plain": "plain loop", "edgert": "edgert serve"}
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


def _ratio(points: Points, workload: str, concurrency: int, metric: str, other: str) -> float:
    mine = _find(points, workload, "edgert", concurrency)
    theirs = _find(points, workload, other, concurrency)
    if mine is None or theirs is None or not theirs[metric]:
        return math.nan
    return float(mine[metric]) / float(theirs[metric])


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _target(name: str, ratios: dict[str, float], ok: Callable[[float], bool]) -> dict[str, Any]:
    found = {k: v for k, v in ratios.items() if not math.isnan(v)}
    if not found or len(found) < len(ratios):
        result = "not measured"
    else:
        result = "PASS" if all(ok(v) for v in found.values()) else "FAIL"
    measured = ", ".join(f"{k}: {_fmt(v)}x" for k, v in ratios.items())
    return {"target": name, "measured": measured or "n/a", "result": result, "ratios": ratios}


def _idle(idle: list[dict[str, Any]], server: str, models: list[str]) -> float:
    for row in idle:
        if row["server"] == server and row["models"] == models and row["rss_mib"] is not None:
            return float(row["rss_mib"])
    return math.nan


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured and PASS, FAIL or not measured."""
    points: Points = results["points"]
    mlp_c = sorted({p["concurrency"] for p in points if p["workload"] == "mlp"}) or [1]
    per_c = {
        metric: {f"c={c}": _ratio(points, "mlp", c, metric, "plain") for c in mlp_c}
        for metric in ("cpu_s_per_1k", "throughput_rps")
    }
    idle = results["idle_rss"]
    both = _idle(idle, "edgert", ["occupancy", "cnn"]) / _idle(idle, "plain", ["cnn"])
    examples = _idle(idle, "edgert", ["occupancy", "silero_vad"]) / _idle(
        idle, "plain", ["occupancy"]
    )
    return [
        _target(
            "tiny MLP: CPU per request, edgert / plain loop <= 1.0x, every concurrency",
            per_c["cpu_s_per_1k"],
            lambda r: r <= 1.0,
        ),
        _target(
            "tiny MLP: throughput, edgert / plain loop >= 1.0x, every concurrency",
            per_c["throughput_rps"],
            lambda r: r >= 1.0,
        ),
        _target(
            "tiny MLP: p50 latency at c=1, edgert / plain loop <= 1.15x",
            {"c=1": _ratio(points, "mlp", 1, "p50_ms", "plain")},
            lambda r: r <= 1.15,
        ),
        _target(
            "medium CNN: throughput at c=64, edgert / plain loop >= 1.3x",
            {"c=64": _ratio(points, "cnn", 64, "throughput_rps", "plain")},
            lambda r: r >= 1.3,
        ),
        _target(
            "medium CNN: p99 latency at c=64, edgert / plain loop <= 1.0x",
            {"c=64": _ratio(points, "cnn", 64, "p99_ms", "plain")},
            lambda r: r <= 1.0,
        ),
        _target(
            "idle RSS: edgert with both bench models (occupancy + cnn) / plain loop with cnn"
            " <= 1.3x",
            {"idle": both},
            lambda r: r <= 1.3,
        ),
        _target(
            "idle RSS: edgert with the README's example models (occupancy + silero_vad) / plain"
            " loop with occupancy <= 1.3x",
            {"idle": examples},
            lambda r: r <= 1.3,
        ),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _workload_section(key: str, info: dict[str, Any], points: Points) -> list[str]:
    mine = [p for p in points if p["workload"] == key]
    concurrencies = sorted({p["concurrency"] for p in mine})
    cost = info.get("onnxruntime_ms_per_request", {})
    agree = {True: "yes", False: "NO", None: "not compared"}[info.get("outputs_agree")]
    lines = [
        f"## {key}: {info['title']}",
        "",
        f"ONNX Runtime alone (no MQTT), median per request: {cost.get('1_thread', 'n/a')} ms on "
        f"1 thread, {cost.get('default_threads', 'n/a')} ms on the default threads. "
        f"Plain loop and edgert outputs agree on the probe request: {agree}.",
        "",
    ]
    header = ["c", "server", *(title for _, title, _ in METRICS)]
    header += ["server cores", "gen CPU s / 1k", "broker CPU s / 1k", "machine busy %"]
    header += ["edgert batch", "errors"]
    rows = []
    for c in concurrencies:
        for server in SERVER_NAMES:
            p = _find(mine, key, server, c)
            if p is None:
                continue
            rows.append(
                [str(c), SERVER_NAMES[server]]
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
    lines += _table(header, rows)
    lines += [
        "",
        "Ratios (edgert over the other server; for req/s higher is better, else lower):",
        "",
    ]
    rows = []
    for c in concurrencies:
        for other in ("plain", "floor"):
            rows.append(
                [str(c), f"edgert / {SERVER_NAMES[other]}"]
                + [_fmt(_ratio(mine, key, c, m, other)) + "x" for m, _, _ in METRICS]
            )
    lines += _table(["c", "ratio", *(t for _, t, _ in METRICS)], rows)
    headroom = []
    for c in concurrencies:
        floor = _find(mine, key, "floor", c)
        best = max(
            (p["throughput_rps"] for s in ("plain", "edgert") if (p := _find(mine, key, s, c))),
            default=0.0,
        )
        if floor and best:
            headroom.append(f"c={c}: {floor['throughput_rps'] / best:.1f}x")
    if headroom:
        lines += [
            "",
            "Generator headroom (echo floor req/s over the faster server's): "
            + ", ".join(headroom)
            + ".",
        ]
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# edgert bench, {meta['started']}",
        "",
        f"{meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB; {meta['versions']}, "
        f"mosquitto {meta['mosquitto']}. {meta['duration_s']:g} s measured per point after "
        f"{meta['warmup_s']:g} s of warm-up; closed loop from {meta['generators']} generator "
        f"processes, QoS {meta['qos']}. The broker, the server and the generator share the "
        "machine's cores. The broker, the generator, the echo floor and the plain loop turn "
        "Nagle's algorithm off (TCP_NODELAY); edgert serve's sockets are as the daemon sets them.",
        "",
        "## Targets",
        "",
    ]
    rows = [[t["target"], t["measured"], t["result"]] for t in results["targets"]]
    lines += [*_table(["target", "measured (edgert / baseline)", "result"], rows), ""]
    for key, info in results["workloads"].items():
        lines += _workload_section(key, info, results["points"])
    lines += ["## Idle RSS (loaded, one request answered per bench model)", ""]
    rows = [
        [SERVER_NAMES[r["server"]], " + ".join(r["models"]), _fmt(r["rss_mib"], 1)]
        for r in results["idle_rss"]
    ]
    lines += [*_table(["server", "models", "RSS MiB"], rows), ""]
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


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Write plot.png; None, or why it was not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    points: Points = results["points"]
    workloads = list(results["workloads"])
    panels = [
        ("throughput_rps", "throughput (req/s)"),
        ("p50_ms", "latency (ms): p50 solid, p99 dashed"),
        ("cpu_s_per_1k", "server CPU s per 1,000 requests"),
    ]
    colours = {"floor": "tab:gray", "plain": "tab:blue", "edgert": "tab:orange"}
    fig, axes = plt.subplots(
        len(workloads), len(panels), figsize=(15, 4.2 * len(workloads)), squeeze=False
    )
    for row, key in enumerate(workloads):
        for col, (metric, title) in enumerate(panels):
            ax = axes[row][col]
            for server, colour in colours.items():
                mine = sorted(
                    (p for p in points if p["workload"] == key and p["server"] == server),
                    key=lambda p: p["concurrency"],
                )
                if not mine:
                    continue
                xs = [p["concurrency"] for p in mine]
                label = SERVER_NAMES[server]
                ax.plot(xs, [p[metric] for p in mine], "o-", color=colour, label=label)
                if metric == "p50_ms":
                    ax.plot(xs, [p["p99_ms"] for p in mine], "o--", color=colour, alpha=0.7)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({p["concurrency"] for p in points}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            if metric != "throughput_rps":
                ax.set_yscale("log")
            ax.set_title(f"{key}: {title}", fontsize=10)
            ax.set_xlabel("concurrency (requests outstanding)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"edgert bench, {results['meta']['started']}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
