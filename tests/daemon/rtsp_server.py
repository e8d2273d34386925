"""A real RTSP server for the camera tests and the bench: Debian's GStreamer RTSP server, driven
through python3-gi. Run it with the system's python3 (gi is Debian's, not the venv's):

    /usr/bin/python3 tests/daemon/rtsp_server.py [--port N] MOUNT=SPEC [MOUNT=SPEC ...]

SPEC is one of
- ``raw:DIR:WxH@FPS``: the frames ``DIR/0000.rgb``, ``0001.rgb``... (packed RGB), looped
  forever and encoded live by x264enc, as a camera would;
- ``mkv:PATH``: a Matroska H.264 clip, played once in real time (the bench's long clips);
- ``audio``: a stream that is not video; ``4k``: a 3840x2160 H.264 test pattern.

It binds 127.0.0.1 (port 0: a free one), prints ``ready <port>`` once it listens, and serves
until stdin closes or SIGTERM.
"""

import argparse
import signal
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PAY = "rtph264pay name=pay0 pt=96 config-interval=1"
RAW = (
    "( multifilesrc location={path}/%04d.rgb loop=true "
    "caps=video/x-raw,format=RGB,width={w},height={h},framerate={fps}/1 ! "
    "rawvideoparse width={w} height={h} format=rgb framerate={fps}/1 ! videoconvert ! "
    "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! " + PAY + " )"
)
MKV = "( filesrc location={path} ! matroskademux ! h264parse ! " + PAY + " )"
AUDIO = "( audiotestsrc is-live=true ! audioconvert ! rtpL16pay name=pay0 pt=97 )"
UHD = (
    "( videotestsrc is-live=true ! video/x-raw,width=3840,height=2160,framerate=2/1 ! "
    "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=2 ! " + PAY + " )"
)


def launch(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    if kind == "raw":
        path, size = rest.rsplit(":", 1)
        dims, fps = size.split("@")
        w, h = dims.split("x")
        return RAW.format(path=path, w=w, h=h, fps=fps)
    if kind == "mkv":
        return MKV.format(path=rest)
    if kind == "audio":
        return AUDIO
    if kind == "4k":
        return UHD
    raise SystemExit(f"unknown spec {spec!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("mounts", nargs="+")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for arg in args.mounts:
        mount, spec = arg.split("=", 1)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch(spec))
        factory.set_shared(True)  # one pipeline per mount, as one camera has
        mounts.add_factory("/" + mount, factory)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{args.port}")
    print(f"ready {server.get_bound_port()}", flush=True)

    def wait_stdin() -> None:
        sys.stdin.read()
        GLib.idle_add(loop.quit)

    threading.Thread(target=wait_stdin, daemon=True).start()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
