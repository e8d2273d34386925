"""scripts/bench's harness: broker and server processes, the load generator, the report.

- ``procs``: /proc readings (CPU seconds, RSS, peak RSS), mosquitto, server subprocesses.
- ``workloads``: the models measured, their request payloads, the temporary model repository.
- ``loadgen``: closed-loop load from several processes, one paho client each.
- ``probe``: the bench's own client: readiness requests, edgert's stats messages.
- ``runner``: one run: every workload x server x concurrency, and the idle RSS of each server.
- ``report``: results.json, results.md (values, ratios, targets) and plot.png.
- ``soak``: --soak: edgert serve alone under a steady load, its RSS and latency per window.
- ``soakreport``: the soak's verdict (RSS growth and slope, latency drift), results.md, plot.png.
"""
