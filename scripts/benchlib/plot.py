"""plot.png for the several-process points: throughput, latency and CPU per concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(results: dict[str, Any], path: Path) -> str | None:
    """Write plot.png; None, or why it was not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    points: list[dict[str, Any]] = results["points"]
    workloads = list(results["workloads"])
    panels = [
        ("throughput_rps", "throughput (req/s)"),
        ("p50_ms", "latency (ms): p50 solid, p99 dashed"),
        ("cpu_s_per_1k", "server CPU s per 1,000 requests"),
    ]
    servers: dict[str, dict[str, Any]] = results["servers"]
    palette = {"floor": "tab:gray", "plain": "tab:blue"}
    edgert_colours = {False: "tab:orange", True: "tab:red"}  # events off, on
    colours = {k: palette.get(k) or edgert_colours[bool(v["events"])] for k, v in servers.items()}
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
                label = servers[server]["name"]
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
