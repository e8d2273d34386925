"""scripts/bench's harness: broker and server processes, the load generator, the report.

- ``procs``: /proc readings (CPU seconds, RSS, peak RSS), mosquitto, server subprocesses.
- ``workloads``: the models measured, their request payloads, the temporary model repository.
- ``loadgen``: closed-loop load from one or several processes, one paho client each; its
  ``Transport``: MQTT 5 or 3.1.1 (JSON reply_to), tuned or at paho's defaults.
- ``probe``: the bench's own client: readiness requests, edgert's stats messages.
- ``runner``: the several-process points: every workload x server x concurrency, and the idle
  RSS of each server.
- ``matrix``: the devices' matrix: edgert at its defaults vs a plain loop at paho's defaults,
  {QoS 0, 1} x {3.1.1 reply_to, MQTT 5 Response Topic} x {1, 16 in flight}, one load process.
- ``matrixreport``: the matrix's medians, targets (PASS/FAIL) and ~40 ms stalls, in results.md.
- ``report``: results.json, results.md (the header, values, ratios, targets); ``plot``: plot.png;
  ``markdown``: the table and number formats the reports share.
- ``soak``: --soak: edgert serve alone under a steady load, its RSS and latency per window.
- ``cameras``: --cameras: a video source's decoding per core (gate on and off) and the daemon's
  CPU with 4 RTSP streams from the GStreamer RTSP server.
- ``soakreport``: the soak's verdict (RSS growth and slope, latency drift), results.md, plot.png.
"""
