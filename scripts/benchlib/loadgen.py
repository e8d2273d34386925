"""Closed-loop load from several processes (paho is one core's worth of Python per process).

Each process has one paho client and a reply topic of its own, and runs some of the virtual
clients: a virtual client sends one request and sends the next as soon as the reply arrives, from
inside paho's callback, so concurrency N is N requests outstanding in all. Latency is measured in
the generator, from just before the publish to the reply's arrival. Only replies that arrive
inside the measured window count; a reply to an earlier point or to a request already given up
on is ignored.

How the clients talk is a :class:`Transport`. Over MQTT 5 a request carries Response Topic and
Correlation Data (the request id), and a reply is matched by its Correlation Data, which every
server echoes. Over MQTT 3.1.1 (JSON requests only) it names its reply topic in the JSON
``reply_to``, and a reply is matched by the ``id`` in its JSON. ``tuned`` turns Nagle's
algorithm off on the client's socket and lifts paho's limit of 20 QoS 1 messages in flight;
untuned, the client is paho's defaults, as a device's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["TUNED", "LoadGenerator", "PointSpec", "Transport", "WorkerResult"]

_ERROR_MARK = re.compile(rb'"ok":\s*false')  # edgert's and the plain loop's error replies
_REPLY_ID = re.compile(rb'"id":\s*"([^"]*)"')  # a reply's id, where there is no Correlation Data


@dataclass(frozen=True)
class Transport:
    """How a generator's client talks: MQTT "5" (Response Topic) or "3.1.1" (JSON reply_to);
    ``tuned``: TCP_NODELAY and up to 1,000 QoS 1 messages in flight (else paho's defaults)."""

    protocol: str = "5"
    tuned: bool = True

    @property
    def v5(self) -> bool:
        return self.protocol == "5"


TUNED = Transport()  # the several-process points' generators


@dataclass(frozen=True)
class PointSpec:
    """One measured point, as one generator process runs it (times are time.monotonic(), which
    is one clock for every process on the machine)."""

    point: int
    topic: str
    content_type: str
    json_head: bytes
    json_tail: bytes
    npy: bytes  # the whole payload of a binary (.npy, JPEG) request; empty for JSON
    qos: int
    clients: int  # virtual clients in this process
    start: float  # the first requests go out
    measure: float  # the measured window starts
    end: float  # the window ends; no request is sent after it
    timeout: float  # a request unanswered this long counts as timed out and is sent again
    user: tuple[tuple[str, str], ...] = ()  # a binary request's user properties after its id


@dataclass
class WorkerResult:
    """What one process saw inside the window."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful replies
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    error_sample: str = ""


class _Worker:
    def __init__(self, client: paho.Client, tag: str, reply_topic: str, v5: bool) -> None:
        self.client = client
        self.tag = tag
        self.reply_topic = reply_topic
        self.v5 = v5
        # Over 3.1.1 the reply topic goes into the JSON, between the id and the inputs.
        self.reply_field = b'","reply_to":"' + reply_topic.encode()
        self.lock = threading.Lock()
        self.spec: PointSpec | None = None
        self.result = WorkerResult()
        self.sent: list[float] = []
        self.seq: list[int] = []
        self.active: list[bool] = []
        self.remaining = 0
        self.finished = threading.Event()

    def _send(self, index: int) -> None:
        """Send virtual client ``index``'s next request; the caller holds the lock."""
        spec = self.spec
        assert spec is not None
        self.seq[index] += 1
        request_id = f"{self.tag}-{spec.point}-{index}-{self.seq[index]}"
        if not self.v5:
            payload = spec.json_head + request_id.encode() + self.reply_field + spec.json_tail
            self.sent[index] = time.monotonic()
            self.client.publish(spec.topic, payload, qos=spec.qos)
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = request_id.encode()
        props.ContentType = spec.content_type
        if spec.npy:
            props.UserProperty = [("id", request_id), *spec.user]
            payload = spec.npy
        else:
            payload = spec.json_head + request_id.encode() + spec.json_tail
        self.sent[index] = time.monotonic()
        self.client.publish(spec.topic, payload, qos=spec.qos, properties=props)

    def _retire(self, index: int) -> None:
        self.active[index] = False
        self.remaining -= 1
        if self.remaining == 0:
            self.finished.set()

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        correlation = getattr(msg.properties, "CorrelationData", None)
        if not correlation:
            found = _REPLY_ID.search(msg.payload)
            if found is None:
                return
            correlation = found.group(1)
        try:
            _tag, point_text, index_text, seq_text = correlation.decode().split("-")
            point, index, seq = int(point_text), int(index_text), int(seq_text)
        except ValueError:
            return
        with self.lock:
            spec = self.spec
            if spec is None or point != spec.point or not 0 <= index < spec.clients:
                return  # late: an earlier point's
            if seq != self.seq[index] or not self.active[index]:
                return  # late: a request already given up on
            if spec.measure <= now <= spec.end:
                if _ERROR_MARK.search(msg.payload):
                    self.result.errors += 1
                    self.result.error_sample = self.result.error_sample or msg.payload[:300].decode(
                        errors="replace"
                    )
                else:
                    self.result.ok += 1
                    self.result.latencies.append(now - self.sent[index])
            if now < spec.end:
                self._send(index)
            else:
                self._retire(index)

    def run(self, spec: PointSpec) -> WorkerResult:
        with self.lock:
            self.spec = spec
            self.result = WorkerResult()
            self.sent = [0.0] * spec.clients
            self.seq = [0] * spec.clients
            self.active = [True] * spec.clients
            self.remaining = spec.clients
            self.finished.clear()
        time.sleep(max(0.0, spec.start - time.monotonic()))
        with self.lock:
            for index in range(spec.clients):
                self._send(index)
        # Watchdog: a request lost or stuck for `timeout` is counted, then sent again (new id).
        while not self.finished.wait(0.1):
            now = time.monotonic()
            with self.lock:
                for index in range(spec.clients):
                    if self.active[index] and now - self.sent[index] > spec.timeout:
                        if spec.measure <= now <= spec.end + spec.timeout:
                            self.result.timeouts += 1
                        if now < spec.end:
                            self._send(index)
                        else:
                            self._retire(index)
        with self.lock:
            self.spec = None
            return self.result


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(client_id: str, transport: Transport) -> paho.Client:
    if transport.v5:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)  # 3.1.1
    if transport.tuned:
        client.max_inflight_messages_set(1000)  # never the generator's own queue that limits
        # Nagle's algorithm would hold back a request while an earlier packet waits for the
        # broker's delayed ACK (40 ms): the generator must not add that to what it measures.
        client.on_socket_open = _no_delay
    return client


def _worker_main(
    index: int, host: str, port: int, tag: str, transport: Transport, conn: Connection
) -> None:
    """One generator process: connect, then run points until told to stop."""
    reply_topic = f"edgert/reply/bench{tag}g{index}"
    client = _client(f"bench{tag}g{index}", transport)
    worker = _Worker(client, f"{tag}g{index}", reply_topic, transport.v5)
    subscribed = threading.Event()
    client.on_message = worker.on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe(reply_topic, qos=1)
    client.connect(host, port)
    client.loop_start()
    if not subscribed.wait(20):
        conn.send(("error", f"generator {index}: no SUBACK from {host}:{port}"))
        return
    conn.send(("ready", os.getpid()))
    try:
        while True:
            command, spec = conn.recv()
            if command == "stop":
                break
            conn.send(("result", worker.run(spec)))
    finally:
        client.disconnect()
        client.loop_stop()


class LoadGenerator:
    """``processes`` generator processes, connected and waiting for points."""

    def __init__(
        self, processes: int, host: str, port: int, tag: str, transport: Transport = TUNED
    ) -> None:
        self.transport = transport
        context = multiprocessing.get_context("spawn")  # no forking a process with threads
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self.pids: list[int] = []
        for index in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker_main, args=(index, host, port, tag, transport, child), daemon=True
            )
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            if not conn.poll(60):
                raise RuntimeError("a load generator process did not start within 60 s")
            status, value = conn.recv()
            if status != "ready":
                raise RuntimeError(value)
            self.pids.append(value)
        self._busy: list[Connection] = []

    @property
    def processes(self) -> int:
        return len(self._conns)

    def start(self, spec: PointSpec, concurrency: int) -> None:
        """Spread ``concurrency`` virtual clients over the processes and start the point."""
        if not self.transport.v5 and spec.npy:
            raise ValueError("over MQTT 3.1.1 the generator sends JSON requests only")
        used = min(concurrency, len(self._conns))
        self._busy = []
        for index in range(used):
            clients = concurrency // used + (1 if index < concurrency % used else 0)
            self._conns[index].send(("run", _with_clients(spec, clients)))
            self._busy.append(self._conns[index])

    def collect(self, timeout: float) -> list[WorkerResult]:
        results = []
        for conn in self._busy:
            if not conn.poll(timeout):
                raise RuntimeError("a load generator process did not report its point")
            results.append(conn.recv()[1])
        self._busy = []
        return results

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def _with_clients(spec: PointSpec, clients: int) -> PointSpec:
    return replace(spec, clients=clients)
