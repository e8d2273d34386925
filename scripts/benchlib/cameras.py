"""scripts/bench --cameras: what a video source costs.

1. Decoding alone: a generated 720p25 H.264 clip (a static room with sensor noise) read from a
   file as fast as it decodes, through the daemon's own reader (edgert.daemon.cameras), sampled
   at 5 fps, with the motion gate on and off; decoded frames per CPU second (per core).
2. The daemon: 4 such streams served by Debian's GStreamer RTSP server (tests/daemon/
   rtsp_server.py, under the system's python3), fed to the person CNN (engines/person), gate
   on and off; the daemon's CPU (utime + stime from /proc, all threads) over the window, in
   cores, and what its stats say each stream did.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchlib.procs import Broker, Server, cpu_seconds

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WIDTH, HEIGHT, FPS, STREAMS = 1280, 720, 25, 4


def make_clip(path: Path, seconds: float) -> Path:
    """A 720p25 H.264 clip of a static room with a little noise in every frame, as a camera's
    sensor gives (x264 veryfast, crf 20: about 2 Mbit/s, a camera's main-stream rate; a key
    frame every second)."""
    import av

    from tests.daemon.cameras import room

    still = room(WIDTH, HEIGHT).astype(np.int16)
    rng = np.random.default_rng(11)
    noise = [rng.normal(0, 3, still.shape).astype(np.int16) for _ in range(FPS)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(FPS), "crf": "20"}
        for n in range(int(seconds * FPS)):
            frame = np.clip(still + noise[n % FPS], 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def decode_rate(clip: Path, gate: bool) -> dict[str, Any]:
    """The reader on ``clip`` as fast as it goes: frames decoded per CPU second."""
    from edgert.daemon.cameras import StreamStats, read_stream
    from edgert.daemon.motion import MotionGate
    from edgert.settings import DaemonConfig

    table = {"name": "bench", "model": "person", "url": f"file://{clip}", "fps": 5}
    (config,) = DaemonConfig.from_dict({"sources": [table | {"motion": {"enabled": gate}}]}).sources
    stats, delivered = StreamStats(), [0]

    def deliver(frame: np.ndarray, at: float) -> None:
        delivered[0] += 1

    cpu, wall = time.process_time(), time.monotonic()
    read_stream(config, stats, MotionGate(config.motion), deliver, threading.Event(), False)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {
        "gate": gate,
        "decoded": stats.decoded,
        "sampled": stats.sampled,
        "delivered": delivered[0],
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "fps_per_core": round(stats.decoded / cpu, 1),
    }


def _config(path: Path, broker: Broker, engines: Path, urls: list[str], gate: bool) -> Path:
    lines = [
        f'[broker]\nurl = "{broker.url}"\nsession_expiry = 0\n',
        f'[node]\nid = "bench-cameras"\n\n[serve]\nrepository = "{engines}"\n'
        'models = ["person"]\nbackend = "onnxruntime"\nstats_interval = 1\n',
    ]
    for n, url in enumerate(urls):
        lines.append(
            f'[[sources]]\nname = "cam{n}"\nmodel = "person"\nurl = "{url}"\nfps = 5\n'
            f"motion = {{enabled = {'true' if gate else 'false'}}}\n"
        )
    path.write_text("\n".join(lines))
    return path


def _stats_watch(broker: Broker) -> tuple[Any, list[dict[str, Any]]]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    seen: list[dict[str, Any]] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: seen.append(json.loads(m.payload).get("sources", {}))
    client.on_connect = lambda c, u, f, r, p: c.subscribe("edgert/node/bench-cameras/stats", 0)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client, seen


def daemon_cpu(tmp: Path, clip: Path, engines: Path, gate: bool, seconds: float) -> dict[str, Any]:
    """edgert serve with 4 RTSP streams of ``clip``: its CPU over ``seconds`` once all play."""
    from tests.daemon.cameras import RtspServer

    tag = "gate-on" if gate else "gate-off"
    directory = tmp / f"broker-{tag}"
    directory.mkdir(exist_ok=True)
    broker = Broker(directory)
    rtsp = RtspServer({f"cam{n}": f"mkv:{clip}" for n in range(STREAMS)}).start()
    urls = [rtsp.url(f"cam{n}") for n in range(STREAMS)]
    config = _config(tmp / f"edgert-{tag}.toml", broker, engines, urls, gate)
    command = [sys.executable, "-m", "edgert", "serve", "--config", str(config)]
    daemon = Server("edgert", command, tmp / f"edgert-{tag}.log")
    client, seen = _stats_watch(broker)
    try:
        end = time.monotonic() + 60
        while not (seen and all(s.get("state") == "connected" for s in seen[-1].values())):
            daemon.check_alive()
            if time.monotonic() > end:
                raise RuntimeError(f"the streams did not all connect; see {daemon.log}")
            time.sleep(0.2)
        time.sleep(2)  # past the streams' first frames and the first inferences
        before, cpu = seen[-1], cpu_seconds(daemon.pid)
        wall = time.monotonic()
        time.sleep(seconds)
        cpu, wall = cpu_seconds(daemon.pid) - cpu, time.monotonic() - wall
        after = seen[-1]
        return {
            "gate": gate,
            "streams": STREAMS,
            "cores": round(cpu / wall, 3),
            "per_stream": {
                name: {
                    key: after[name][key] - before[name][key]
                    for key in ("decoded", "sampled", "gated", "inferred")
                }
                | {"fps": after[name]["fps"]}
                for name in after
            },
            "wall_s": round(wall, 1),
        }
    finally:
        client.loop_stop()
        client.disconnect()
        daemon.stop()
        rtsp.kill()
        broker.stop()


def run(out: Path, seconds: float, say: Any = print) -> dict[str, Any]:
    """Both measurements; results.json and results.md under ``out``."""
    from benchlib.workloads import prepare_repository

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "work"
    tmp.mkdir(exist_ok=True)
    say("cameras: encoding a 720p25 clip")
    short = make_clip(tmp / "room-20s.mkv", 20)
    long = make_clip(tmp / f"room-{seconds + 40:.0f}s.mkv", seconds + 40)
    decoding = [decode_rate(short, gate) for gate in (True, False)]
    for row in decoding:
        say(f"cameras: decoding, gate {'on' if row['gate'] else 'off'}: {row}")
    engines = tmp / "engines"
    if not engines.exists():
        prepare_repository(engines, ["person"], tmp / "compile.log")
    served = [daemon_cpu(tmp, long, engines, gate, seconds) for gate in (True, False)]
    for row in served:
        say(f"cameras: daemon, gate {'on' if row['gate'] else 'off'}: {row['cores']} cores")
    results = {"decoding": decoding, "daemon": served, "clip": f"{WIDTH}x{HEIGHT}@{FPS} H.264"}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Video sources: {results['clip']}, a static room",
        "",
        "Measured on whatever machine ran it; a shared machine's figures are noisy.",
        "",
        "| decoding one stream | frames decoded | CPU s | decoded fps per core |",
        "|---|---|---|---|",
    ]
    for row in results["decoding"]:
        gate = "gate on" if row["gate"] else "gate off"
        lines.append(f"| {gate} | {row['decoded']} | {row['cpu_s']} | {row['fps_per_core']} |")
    lines += [
        "",
        "| daemon, 4 RTSP streams, person CNN | daemon CPU (cores) | inferred / s per stream |",
        "|---|---|---|",
    ]
    for row in results["daemon"]:
        inferred = [s["inferred"] / row["wall_s"] for s in row["per_stream"].values()]
        gate = "gate on" if row["gate"] else "gate off"
        lines.append(f"| {gate} | {row['cores']} | {np.mean(inferred):.2f} |")
    return "\n".join(lines) + "\n"
