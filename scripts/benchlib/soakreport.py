"""scripts/bench --soak's verdict, results.md and plot.png (RSS, latency, throughput vs time)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchlib.markdown import table

__all__ = [
    "GROWTH_LIMIT_PCT",
    "evaluate",
    "markdown",
    "plot",
    "slope_per_s",
    "summary_line",
    "verdict_lines",
]

# RSS is "flat" when it grew less than this, both first -> last window and along the fitted line.
GROWTH_LIMIT_PCT = 5.0


def slope_per_s(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ``ys`` over ``xs``; NaN for fewer than 2 distinct xs."""
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b and not (math.isnan(a) or math.isnan(b)) else math.nan


def evaluate(results: dict[str, Any]) -> dict[str, Any]:
    """The verdict: RSS growth first -> last measured window (the warm-up left out), its fitted
    slope, the latency drift per workload, errors and timeouts over every window."""
    windows = results["windows"]
    measured = [w for w in windows if not w["warmup"]]
    first, last = measured[0], measured[-1]
    growth = last["rss_mib"] - first["rss_mib"]
    slope = slope_per_s([w["t_s"] for w in measured], [w["rss_mib"] for w in measured])
    span = last["t_s"] - first["t_s"]
    fitted = slope * span
    limit = GROWTH_LIMIT_PCT / 100
    growth_pct = 100 * growth / first["rss_mib"]
    fitted_pct = 100 * fitted / first["rss_mib"]
    flat = growth_pct < GROWTH_LIMIT_PCT and fitted_pct < GROWTH_LIMIT_PCT
    drift = {
        key: {
            q: _ratio(last["workloads"][key][f"{q}_ms"], first["workloads"][key][f"{q}_ms"])
            for q in ("p50", "p99")
        }
        for key in first["workloads"]
    }
    errors = sum(w["errors"] for w in windows)
    timeouts = sum(w["timeouts"] for w in windows)
    return {
        "rss_first_mib": first["rss_mib"],
        "rss_last_mib": last["rss_mib"],
        "rss_growth_mib": round(growth, 2),
        "rss_growth_pct": round(growth_pct, 2),
        "rss_slope_mib_per_h": round(slope * 3600, 2),
        "rss_fitted_growth_mib": round(fitted, 2),
        "rss_fitted_growth_pct": round(fitted_pct, 2),
        "span_s": round(span, 1),
        # The slowest leak that would reach the limit within this run's span.
        "detectable_mib_per_h": round(limit * first["rss_mib"] / (span / 3600), 1),
        "rss": "flat" if flat else "GROWING",
        "latency_drift": drift,
        "others_cores_first": first["others_cores"],
        "others_cores_last": last["others_cores"],
        "errors": errors,
        "timeouts": timeouts,
        "ok": flat and errors == 0 and timeouts == 0,
    }


def _n(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    v = verdict
    rss = (
        f"**RSS {v['rss']}**: {v['rss_first_mib']:.1f} MiB in the first window after warm-up, "
        f"{v['rss_last_mib']:.1f} MiB in the last ({v['rss_growth_mib']:+.1f} MiB, "
        f"{v['rss_growth_pct']:+.1f} %); fitted slope {v['rss_slope_mib_per_h']:+.1f} MiB/h "
        f"({v['rss_fitted_growth_mib']:+.1f} MiB, {v['rss_fitted_growth_pct']:+.1f} % over the "
        f"{v['span_s']:g} s between them). Flat means both under +{GROWTH_LIMIT_PCT:g} %; in a "
        f"run this long, a leak slower than about {v['detectable_mib_per_h']:.0f} MiB/h stays "
        "under that, so soak longer to bound a slower one."
    )
    drift = "; ".join(
        f"{key} p50 {_n(d['p50'], 2)}x, p99 {_n(d['p99'], 2)}x"
        for key, d in v["latency_drift"].items()
    )
    faults = "none, as expected" if not (v["errors"] or v["timeouts"]) else "NOT zero"
    return [
        rss,
        "",
        f"**Latency drift**, last window / first: {drift} (others' CPU on the machine: "
        f"{v['others_cores_first']:.2f} cores in the first window, {v['others_cores_last']:.2f} "
        "in the last).",
        "",
        f"**Errors** {v['errors']}, **timeouts** {v['timeouts']} over every window: {faults}.",
    ]


def summary_line(verdict: dict[str, Any]) -> str:
    """One line: the RSS verdict and its figures, and whether any request failed."""
    v = verdict
    drift = ", ".join(
        f"{key} p50 {_n(d['p50'], 2)}x p99 {_n(d['p99'], 2)}x"
        for key, d in v["latency_drift"].items()
    )
    return (
        f"soak verdict: RSS {v['rss']} ({v['rss_growth_mib']:+.1f} MiB, "
        f"{v['rss_growth_pct']:+.1f} %, slope {v['rss_slope_mib_per_h']:+.1f} MiB/h; "
        f"limit +{GROWTH_LIMIT_PCT:g} %); latency last/first {drift}; "
        f"errors {v['errors']}, timeouts {v['timeouts']}"
    )


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    loads = meta["load"]
    load_text = "; ".join(
        f"{key} = {info['title']}, concurrency {info['concurrency']} from "
        f"{info['processes']} generator process{'es' if info['processes'] > 1 else ''}"
        for key, info in loads.items()
    )
    lines = [
        f"# edgert soak, {meta['started']}",
        "",
        f"{meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB; {meta['versions']}, "
        f"mosquitto {meta['mosquitto']}. {meta['server']} with {' + '.join(meta['models'])} on "
        f"ONNX Runtime, under closed-loop load at QoS {meta['qos']}: {load_text}. "
        f"{meta['warmup_s']:g} s of warm-up, then {meta['windows']} windows of "
        f"{meta['window_s']:g} s. At each window's end, the daemon's RSS (VmRSS of "
        f"{meta['daemon']}); per window, each workload's throughput, p50/p99 latency, errors "
        "and timeouts, the daemon's CPU in cores, and others' cores: the CPU of every process "
        "but the daemon, the broker and the load generators (another job on the machine; it "
        "explains latency drift that edgert does not). The load pauses briefly between windows "
        f"while the generators report. Idle RSS before the load: {meta['idle_rss_mib']:.1f} MiB.",
        "",
        "## Verdict",
        "",
        *verdict_lines(results["verdict"]),
        "",
        "## Windows",
        "",
    ]
    header = ["window", "t s", "RSS MiB", "daemon cores", "others' cores"]
    for key in loads:
        header += [f"{key} req/s", f"{key} p50 ms", f"{key} p99 ms"]
    header += ["errors", "timeouts"]
    rows = []
    for w in results["windows"]:
        row = ["warm-up" if w["warmup"] else str(w["window"]), f"{w['t_s']:.1f}"]
        row += [f"{w['rss_mib']:.1f}", f"{w['daemon_cores']:.2f}", f"{w['others_cores']:.2f}"]
        for key in loads:
            load = w["workloads"][key]
            row += [f"{load['throughput_rps']:.1f}", _n(load["p50_ms"], 2), _n(load["p99_ms"], 2)]
        row += [str(w["errors"]), str(w["timeouts"])]
        rows.append(row)
    lines += [*table(header, rows), ""]
    lines.append(f"Took {meta['wall_s']:.0f} s in all.")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Write plot.png (RSS with its fitted line, latency, throughput against time); None, or
    why it was not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    windows = results["windows"]
    measured = [w for w in windows if not w["warmup"]]
    verdict = results["verdict"]
    keys = list(results["meta"]["load"])
    palette = ["tab:orange", "tab:blue", "tab:green"]
    colours = {key: palette[i % len(palette)] for i, key in enumerate(keys)}
    fig, (rss_ax, lat_ax, rps_ax, cpu_ax) = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    panels = (rss_ax, lat_ax, rps_ax, cpu_ax)
    ts = [w["t_s"] for w in windows]
    warm_end = windows[0]["t_s"]
    for ax in panels:
        ax.axvspan(0, warm_end, color="0.9", label="warm-up")
        ax.grid(True, alpha=0.3)
    rss_ax.plot(ts, [w["rss_mib"] for w in windows], "o-", color="tab:red", label="daemon RSS")
    first = measured[0]
    slope = verdict["rss_slope_mib_per_h"] / 3600
    mean_t = sum(w["t_s"] for w in measured) / len(measured)
    mean_rss = sum(w["rss_mib"] for w in measured) / len(measured)
    fit_ts = [first["t_s"], measured[-1]["t_s"]]
    rss_ax.plot(
        fit_ts,
        [mean_rss + slope * (t - mean_t) for t in fit_ts],
        "--",
        color="0.3",
        label=f"fit: {verdict['rss_slope_mib_per_h']:+.1f} MiB/h",
    )
    limit = first["rss_mib"] * (1 + GROWTH_LIMIT_PCT / 100)
    rss_ax.axhline(limit, linestyle=":", color="tab:red", label=f"+{GROWTH_LIMIT_PCT:g} %")
    # Never zoom in so far that noise of a fraction of a MiB looks like growth.
    low = min(min(w["rss_mib"] for w in windows), first["rss_mib"] * 0.97)
    rss_ax.set_ylim(low, max(max(w["rss_mib"] for w in windows), limit) * 1.01)
    rss_ax.set_ylabel("RSS (MiB)")
    rss_ax.set_title(f"daemon RSS: {verdict['rss']}", fontsize=10)
    for key in keys:
        colour = colours.get(key)
        p50 = [w["workloads"][key]["p50_ms"] for w in windows]
        p99 = [w["workloads"][key]["p99_ms"] for w in windows]
        rps = [w["workloads"][key]["throughput_rps"] for w in windows]
        lat_ax.plot(ts, p50, "o-", color=colour, label=f"{key} p50")
        lat_ax.plot(ts, p99, "o--", color=colour, alpha=0.7, label=f"{key} p99")
        rps_ax.plot(ts, rps, "o-", color=colour, label=key)
    lat_ax.set_yscale("log")
    lat_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    # Label the minor ticks at 2 and 5 times a power of ten only: the others crowd.
    minor = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else "")
    lat_ax.yaxis.set_minor_formatter(minor)
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_title("latency per window: p50 solid, p99 dashed", fontsize=10)
    rps_ax.set_ylabel("req/s")
    rps_ax.set_title("throughput per window", fontsize=10)
    cpu_ax.plot(ts, [w["daemon_cores"] for w in windows], "o-", color="tab:red", label="daemon")
    others = [w["others_cores"] for w in windows]
    cpu_ax.plot(ts, others, "o-", color="0.5", label="others (not the soak's processes)")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.set_ylabel("cores")
    cpu_ax.set_title("CPU per window", fontsize=10)
    cpu_ax.set_xlabel("seconds since the load began (each point is a window's end)")
    for ax in panels:
        ax.legend(fontsize=8)
    fig.suptitle(f"edgert soak, {results['meta']['started']}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
