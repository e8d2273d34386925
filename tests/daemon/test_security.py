"""The broker set-up in device/mosquitto/, tested as shipped: a real mosquitto runs from
``edgert.conf`` (only its ports and file paths swapped for the test's, dropped into a config laid
out like Debian's) and the ``acl`` file itself; TLS certificates are made by the test.

Under it the daemon (user ``edgert``, TLS, a shared subscription) serves; a device (user
``kitchen``) gets its answers; another device (``hall``) can neither read them nor publish as the
daemon; anonymous, wrong-password and plain clients are refused; reply topics outside the reply
prefix, oversize and pickled payloads are refused; queued QoS 1 messages survive a restart.

Mosquitto 2.0 semantics these tests pin (checked on Debian's 2.0.11): a SUBSCRIBE is granted
whatever the ACL says, and read access is checked per delivered message, against the topic
without any ``$share/<group>/`` prefix; a publish the ACL denies is dropped, with PUBACK reason
"Not authorized" to an MQTT 5 client and a plain PUBACK to a 3.1.1 one; CONNACK "Not authorized"
for both a missing and a wrong password. Shared subscriptions hand each message to the group's
members in turn, and a turn that falls to a member the ACL denies is dropped.
"""

from __future__ import annotations

import getpass
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgert.client import Client
from edgert.settings import BrokerConfig, DaemonConfig, parse_broker_url
from edgert.topics import MAX_TOPIC_BYTES
from tests.broker import Mosquitto, TlsFiles, free_port
from tests.daemon.conftest import REPO, Daemon
from tests.daemon.tls import make_tls

TEMPLATE = REPO / "device" / "mosquitto"
USERS = {  # the first is the one Daemon.start() watches the status topic as
    "homeassistant": "ha-pass",
    "edgert": "daemon-pass",
    "kitchen": "kitchen-pass",
    "hall": "hall-pass",
}
NODE = "secure"
READING = [[22.5, 45.0, 480.0, 1150.0]]
QUIET = 0.5  # seconds in which a message that was going to arrive would have


# ------------------------------------------------------------------ the template, made to fit


def directives(text: str) -> list[tuple[str, str]]:
    """``(key, value)`` of each non-comment line of a mosquitto config."""
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            pairs.append((key, value.strip()))
    return pairs


def template_settings() -> dict[str, str]:
    return dict(directives((TEMPLATE / "edgert.conf").read_text()))


@dataclass(frozen=True)
class Ports:
    plain: int  # the loopback listener (1883 in the template)
    tls: int  # the TLS listener (8883)


def render_conf(ports: Ports, tls: TlsFiles, password_file: Path, acl_file: Path) -> str:
    """device/mosquitto/edgert.conf with the test's ports and files; every other line as is."""
    swaps = {
        "cafile": str(tls.ca),
        "certfile": str(tls.cert),
        "keyfile": str(tls.key),
        "password_file": str(password_file),
        "acl_file": str(acl_file),
    }
    listeners = {"1883": str(ports.plain), "8883": str(ports.tls)}
    lines, swapped = [], set()
    for line in (TEMPLATE / "edgert.conf").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key in swaps:
            swapped.add(key)
            line = f"{key} {swaps[key]}"
        elif key == "listener":
            port, *bind = value.split()
            swapped.add(port)
            line = " ".join(["listener", listeners[port], *bind])
        lines.append(line)
    assert swapped == set(swaps) | set(listeners), f"template lost a line: {swapped}"
    return "\n".join(lines) + "\n"


def debian_main_conf(directory: Path) -> str:
    """/etc/mosquitto/mosquitto.conf as Debian ships it, its paths moved under ``directory``
    (and logging to stderr, and running as whoever runs the tests)."""
    (directory / "db").mkdir()
    return "\n".join(
        [
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {directory / 'db'}/",
            "log_dest stderr",
            f"include_dir {directory / 'conf.d'}",
        ]
    )


def secured_broker(directory: Path) -> tuple[Mosquitto, Ports, TlsFiles]:
    """A broker run from the template with the ACL file as shipped; not started."""
    tls = make_tls(directory / "tls")
    ports = Ports(plain=free_port(), tls=free_port())
    broker = Mosquitto(directory, tls=tls, users=USERS)  # makes the password file
    (directory / "conf.d").mkdir()
    drop_in = render_conf(ports, tls, broker.password_file, TEMPLATE / "acl")
    (directory / "conf.d" / "edgert.conf").write_text(drop_in)
    return broker.use_config(debian_main_conf(directory), ports.tls), ports, tls


def secured_daemon(
    broker: Mosquitto,
    tls: TlsFiles,
    repository: Path,
    directory: Path,
    max_queued: int | None = None,  # [broker] max_queued: the daemon's outgoing queue
) -> Daemon:
    settings: dict[str, object] = {
        "username": "edgert",
        "password": USERS["edgert"],
        "ca_file": str(tls.ca),
    }
    if max_queued is not None:
        settings["max_queued"] = max_queued
    return Daemon(
        broker,
        repository,
        directory,
        node=NODE,
        broker_url=f"mqtts://127.0.0.1:{broker.port}",
        broker_settings=settings,
        node_settings={"share_group": "edgert"},  # pooled requests through $share/edgert/...
    )


# ------------------------------------------------------------------------------ clients


@dataclass
class Peer:
    """One real MQTT client of one user: what it receives, and its SUBACK/PUBACK reason codes."""

    broker: Mosquitto
    user: str | None  # None: anonymous
    protocol: MQTTProtocolVersion = paho.MQTTv5
    port: int | None = None
    client_id: str = ""
    session_expiry: int = 0  # MQTT 5: > 0 keeps the session (and its queue) while offline
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    granted: list[str] = field(default_factory=list)
    connack: str | None = None
    acks: dict[int, str] = field(default_factory=dict)
    changed_at: float = field(default_factory=time.monotonic)  # the last message or ack
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        if self.user is None:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self.protocol
            )
            assert self.broker.tls is not None
            client.tls_set(ca_certs=str(self.broker.tls.ca), cert_reqs=ssl.CERT_REQUIRED)
        else:
            client = self.broker.client(self.protocol, user=self.user, client_id=self.client_id)
        self.client = client
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish

    def _notify(self, change: Callable[[], None]) -> None:
        with self._changed:
            change()
            self.changed_at = time.monotonic()
            self._changed.notify_all()

    def _on_connect(self, c: paho.Client, u: object, f: object, rc: Any, p: object) -> None:
        self._notify(lambda: setattr(self, "connack", str(rc)))

    def _on_message(self, c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        self._notify(lambda: self.messages.append((msg.topic, bytes(msg.payload), msg.retain)))

    def _on_subscribe(self, c: paho.Client, u: object, mid: int, rcs: Any, p: object) -> None:
        self._notify(lambda: self.granted.extend(str(rc) for rc in rcs))

    def _on_publish(self, c: paho.Client, u: object, mid: int, rc: Any, p: object) -> None:
        self._notify(lambda: self.acks.__setitem__(mid, str(rc)))

    def connect(self) -> Peer:
        """Connect and wait for the CONNACK; :attr:`connack` says how it went."""
        kwargs: dict[str, Any] = {}
        if self.protocol == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry
            kwargs = {"clean_start": self.session_expiry == 0, "properties": props}
        self.client.connect("127.0.0.1", self.port or self.broker.port, **kwargs)
        self.client.loop_start()
        self.wait(lambda: self.connack, 5, "a CONNACK")
        return self

    def subscribe(self, *topics: str) -> list[str]:
        """Subscribe and return the SUBACK's reason codes."""
        before = len(self.granted)
        self.client.subscribe([(t, 1) for t in topics])
        self.wait(lambda: len(self.granted) >= before + len(topics), 5, "a SUBACK")
        return self.granted[before:]

    def publish(self, topic: str, body: Any, *, retain: bool = False, **props: Any) -> str:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        return str(self.wait(lambda: self.acks.get(info.mid), 5, f"a PUBACK on {topic}"))

    def since(self, count: int) -> list[tuple[str, bytes, bool]]:
        """Messages after the first ``count``, but the daemon's periodic stats."""
        with self._changed:
            return [m for m in self.messages[count:] if not m[0].endswith("/stats")]

    def on(self, prefix: str) -> list[tuple[str, bytes, bool]]:
        with self._changed:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def replies(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m[1]) for m in self.on(topic)]

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """The first true value of ``predicate()``, re-checked on every change."""
        end = time.monotonic() + timeout
        with self._changed:
            while not (value := predicate()):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.user}: timed out after {timeout} s for {what}")
                self._changed.wait(min(left, 0.1))
            return value

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    """Makes connected peers, and closes them after the test."""
    made: list[Peer] = []

    def make(broker: Mosquitto, user: str | None, *topics: str, **kwargs: Any) -> Peer:
        peer = Peer(broker, user, **kwargs).connect()
        made.append(peer)
        if topics:
            assert peer.subscribe(*topics) == ["Granted QoS 1"] * len(topics)
        return peer

    yield make
    for peer in made:
        peer.close()


# ------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Secured:
    broker: Mosquitto
    ports: Ports
    tls: TlsFiles
    daemon: Daemon


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, compiled_repository: Path
) -> Iterator[Secured]:
    """One broker from the template and one daemon under it, shared by this module's tests."""
    directory = tmp_path_factory.mktemp("secured")
    broker, ports, tls = secured_broker(directory)
    broker.start()
    daemon = secured_daemon(broker, tls, compiled_repository, directory / "daemon")
    try:
        daemon.start()
        yield Secured(broker, ports, tls, daemon)
    finally:
        daemon.stop()
        broker.kill()


def request(request_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": request_id, "inputs": READING, "compact": True, **extra}


# ----------------------------------------------------------------------- the limits


def seconds(duration: str) -> int:
    """A mosquitto duration (``2d``; h d w m y) in seconds."""
    units = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}
    match = re.fullmatch(r"(\d+)([hdwmy])", duration)
    assert match, duration
    return int(match[1]) * units[match[2]]


def test_template_limits_are_what_the_daemon_defaults_need() -> None:
    conf, daemon, broker = template_settings(), DaemonConfig(), BrokerConfig()
    # Mosquitto's queue per client, dropped silently beyond. While the daemon restarts, its
    # persistent session queues requests; back, it takes queue_size per model and answers the
    # rest busy. So the broker holds at least full queues for a node's models (sized for 8),
    # each request sent twice (a device re-sends when its timeout passes)...
    models_per_node, sends = 8, 2
    assert int(conf["max_queued_messages"]) >= models_per_node * daemon.queue_size * sends
    # The broker accepts every packet the daemon accepts, plus the MQTT envelope: fixed header
    # (5), the longest topic (2 + 65535), packet id (2), MQTT 5 properties (4 + a few KiB:
    # response topic, correlation data, content type, user properties).
    envelope = 5 + 2 + MAX_TOPIC_BYTES + 2 + 4 + 4096
    max_packet = int(conf["max_packet_size"])
    assert max_packet >= daemon.max_payload + envelope
    # message_size_limit would drop a payload silently, before the daemon can say too_large.
    size_limit = int(conf.get("message_size_limit", "0"))
    assert size_limit == 0 or size_limit >= max_packet
    # Bytes queued per client: bounded (an 8 GB Jetson), yet a burst of full-size frames fits.
    assert 16 * max_packet <= int(conf["max_queued_bytes"]) <= 256 << 20
    assert int(conf["max_inflight_messages"]) >= 20  # mosquitto's default; 0 would be unbounded
    # Persistence: on, and saved often enough that a crash loses minutes, not half an hour.
    assert conf["persistence"] == "true"
    assert 0 < int(conf["autosave_interval"]) <= 300
    # Abandoned persistent sessions go, but never before the daemon's own session expiry.
    assert seconds(conf["persistent_client_expiration"]) > broker.session_expiry
    assert conf["allow_anonymous"] == "false"
    # Debian's mosquitto.conf sets these, and mosquitto refuses a string option set twice.
    assert not {"persistence_location", "pid_file", "include_dir"} & set(conf)


def test_acl_lines_are_mosquitto_syntax() -> None:
    # A typo in an ACL line ("topic reed ...") silently grants nothing: check each line's form.
    for key, value in directives((TEMPLATE / "acl").read_text()):
        assert key in ("user", "topic", "pattern"), key
        if key != "user":
            access, _, topic = value.partition(" ")
            assert access in ("read", "write", "readwrite", "deny") and topic, value
            assert " " not in topic, value


# -------------------------------------------------------------------------- serving


def test_daemon_serves_devices_over_tls_under_the_acl(
    secured: Secured, peers: Callable[..., Peer]
) -> None:
    broker = secured.broker
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#", f"edgert/node/{NODE}/#")
    # Retained status and catalogue: readable by a device.
    kitchen.wait(lambda: kitchen.on(f"edgert/node/{NODE}/models"), 5, "the catalogue")
    online = (f"edgert/node/{NODE}/status", b"online", True)
    kitchen.wait(lambda: online in kitchen.messages, 5, "the retained online")
    assert not kitchen.on(f"edgert/node/{NODE}/stats")  # not granted to devices

    # Keyed (3.1.1 style), pinned to the node, and an MQTT 5 response topic below its own key.
    assert kitchen.publish("edgert/infer/occupancy/kitchen", request("k1")) == "Success"
    topic = f"edgert/node/{NODE}/infer/occupancy/kitchen"
    assert kitchen.publish(topic, request("k2")) == "Success"
    own = "edgert/reply/kitchen/session-7/occupancy"
    assert (
        kitchen.publish(
            "edgert/infer/occupancy/kitchen",
            request("k3"),
            ResponseTopic=own,
            CorrelationData=b"c3",
        )
        == "Success"
    )
    kitchen.wait(lambda: len(kitchen.on("edgert/reply/")) >= 3, 10, "three replies")
    by_id = {json.loads(m[1])["id"]: m[0] for m in kitchen.on("edgert/reply/")}
    assert by_id == {
        "k1": "edgert/reply/kitchen/occupancy",
        "k2": "edgert/reply/kitchen/occupancy",
        "k3": own,
    }
    assert all(r["ok"] for r in kitchen.replies("edgert/reply/"))

    # Over 3.1.1 on the same TLS listener: an ESP32's way.
    esp = peers(broker, "kitchen", "edgert/reply/kitchen/occupancy", protocol=paho.MQTTv311)
    esp.publish("edgert/infer/occupancy/kitchen", request("k4"))
    esp.wait(lambda: [r for r in esp.replies("edgert/reply/") if r["id"] == "k4"], 10, "k4")


def test_home_assistant_reads_status_events_and_discovery(
    secured: Secured, peers: Callable[..., Peer]
) -> None:
    broker = secured.broker
    ha = peers(broker, "homeassistant", "edgert/node/#", "homeassistant/#")
    ha.wait(lambda: ha.on(f"homeassistant/device/{NODE}/config"), 5, "the discovery")
    ha.wait(lambda: ha.on(f"edgert/node/{NODE}/stats"), 5, "stats")
    # Home Assistant's birth message: the daemon (reading homeassistant/status) re-sends discovery.
    before = len(ha.on(f"homeassistant/device/{NODE}/config"))
    assert ha.publish("homeassistant/status", b"online") == "Success"
    ha.wait(lambda: len(ha.on(f"homeassistant/device/{NODE}/config")) > before, 5, "re-discovery")
    kitchen = peers(broker, "kitchen")
    kitchen.publish("edgert/infer/occupancy/kitchen", request("ev1"))
    events = ha.wait(lambda: ha.replies(f"edgert/node/{NODE}/events/occupancy"), 10, "an event")
    assert events[0]["id"] == "ev1"
    assert not ha.on("edgert/reply/")  # Home Assistant is no device: no replies


# ---------------------------------------------------------------- devices kept apart


def test_a_device_cannot_read_another_devices_replies(
    secured: Secured, peers: Callable[..., Peer]
) -> None:
    broker = secured.broker
    # Mosquitto 2.0 grants these subscriptions (the ACL is checked per delivered message).
    hall = peers(broker, "hall", "edgert/reply/kitchen/#", "edgert/reply/#", "#")
    hall_v3 = peers(broker, "hall", "edgert/reply/kitchen/#", protocol=paho.MQTTv311)
    shared = peers(broker, "hall", "$share/edgert/edgert/infer/#")  # steal requests from the pool
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#")
    for n in range(10):
        kitchen.publish("edgert/infer/occupancy/kitchen", request(f"private{n}"))
    kitchen.wait(lambda: len(kitchen.on("edgert/reply/kitchen/")) == 10, 10, "ten replies")
    time.sleep(QUIET)
    assert hall.on("edgert/reply/") == [] and hall_v3.messages == [] and shared.messages == []
    assert hall.on(f"edgert/node/{NODE}/status")  # what it may read, it reads through "#"

    # Nor can it ask as kitchen, making the daemon answer on kitchen's topic.
    assert hall.publish("edgert/infer/occupancy/kitchen", request("forged")) == "Not authorized"
    assert hall.publish("edgert/infer/occupancy", request("keyless")) == "Not authorized"
    time.sleep(QUIET)
    assert [r["id"] for r in kitchen.replies("edgert/reply/")] == [f"private{n}" for n in range(10)]


def test_a_device_in_the_daemons_share_group_swallows_its_share(
    secured: Secured, peers: Callable[..., Peer]
) -> None:
    # Mosquitto 2.0.11 checks no ACL at SUBSCRIBE, and hands each pooled request to the group's
    # members in turn, dropping the turns that fall to a member the ACL denies: a device that
    # knows the group's name and filter makes requests vanish (until re-sent). Hence
    # device/mosquitto/README.md: share_group only with trusted devices or a secret group name.
    broker = secured.broker
    intruder = peers(broker, "hall", "$share/edgert/edgert/infer/occupancy/#")
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#")
    for n in range(10):
        kitchen.publish("edgert/infer/occupancy/kitchen", request(f"pooled{n}"))
    time.sleep(1.0)
    assert intruder.messages == []  # it reads nothing...
    answered = len(kitchen.on("edgert/reply/"))
    assert 0 < answered < 10  # ...but its turns are lost
    intruder.close()
    for n in range(10):  # re-sent, with the same ids: the daemon answers the rest
        kitchen.publish("edgert/infer/occupancy/kitchen", request(f"pooled{n}"))
    kitchen.wait(
        lambda: (
            {r["id"] for r in kitchen.replies("edgert/reply/")} >= {f"pooled{n}" for n in range(10)}
        ),
        10,
        "all ten, after the re-send",
    )


SPOOFED = [
    f"edgert/node/{NODE}/status",
    f"edgert/node/{NODE}/models",
    f"edgert/node/{NODE}/events/occupancy",
    f"edgert/node/{NODE}/infer/occupancy/kitchen",  # pinned, but under hall's name: kitchen's
    f"homeassistant/device/{NODE}/config",
    "homeassistant/status",
    "edgert/reply/kitchen/occupancy",
]


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311], ids=["v5", "v311"])
def test_a_device_cannot_publish_as_the_daemon_or_home_assistant(
    secured: Secured, peers: Callable[..., Peer], protocol: MQTTProtocolVersion
) -> None:
    broker = secured.broker
    ha = peers(broker, "homeassistant", "edgert/node/#", "homeassistant/#")
    daemon_user = peers(broker, "edgert", "edgert/#")
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#")
    ha.wait(lambda: ha.on(f"edgert/node/{NODE}/status"), 5, "the retained status")
    time.sleep(QUIET)  # the retained messages are in
    seen = len(ha.messages), len(daemon_user.messages)
    hall = peers(broker, "hall", protocol=protocol)
    # MQTT 5 is told; a 3.1.1 client gets a plain PUBACK and the message is dropped all the same.
    denied = "Not authorized" if protocol == paho.MQTTv5 else "Success"
    for topic in SPOOFED:
        assert hall.publish(topic, b'{"id": "spoof", "ok": true}', retain=True) == denied, topic
    time.sleep(QUIET)
    assert ha.since(seen[0]) == [] and daemon_user.since(seen[1]) == []
    assert kitchen.messages == []
    # The retained status still says online to whoever comes next.
    late = peers(broker, "kitchen", f"edgert/node/{NODE}/status")
    late.wait(lambda: late.messages, 5, "the retained status")
    assert late.messages == [(f"edgert/node/{NODE}/status", b"online", True)]


# ------------------------------------------------------------------ who may connect


@pytest.mark.parametrize(
    ("who", "listener", "expected"),
    [
        (None, "tls", "Not authorized"),
        (None, "plain", "Not authorized"),  # loopback listener: still a password
        ("wrong password", "tls", "Not authorized"),
        ("kitchen", "plain", "Success"),  # the loopback listener for a daemon on this host
    ],
    ids=["anonymous-tls", "anonymous-loopback", "wrong-password", "user-loopback"],
)
def test_who_may_connect(secured: Secured, who: str | None, listener: str, expected: str) -> None:
    broker, ports = secured.broker, secured.ports
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if listener == "tls":
        client.tls_set(ca_certs=str(secured.tls.ca), cert_reqs=ssl.CERT_REQUIRED)
    if who == "wrong password":
        client.username_pw_set("kitchen", "hall-pass")
    elif who is not None:
        client.username_pw_set(who, USERS[who])
    connack: list[str] = []
    answered = threading.Event()

    def on_connect(c: paho.Client, u: object, f: object, rc: Any, p: object) -> None:
        connack.append(str(rc))
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", ports.tls if listener == "tls" else ports.plain)
    client.loop_start()
    try:
        assert answered.wait(5), f"no CONNACK; broker log:\n{broker.log.read_text()[-2000:]}"
        assert connack == [expected]
    finally:
        client.disconnect()
        client.loop_stop()


def test_plain_mqtt_to_the_tls_listener_is_refused(secured: Secured) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.username_pw_set("kitchen", USERS["kitchen"])  # right password, no TLS
    connack: list[str] = []
    closed = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connack.append(str(rc))
    client.on_disconnect = lambda c, u, f, rc, p: closed.set()
    client.connect("127.0.0.1", secured.ports.tls)
    client.loop_start()
    try:
        assert closed.wait(5)
        assert connack == []  # closed before any CONNACK
    finally:
        client.loop_stop()


# ---------------------------------------------------------------------- reply topics


@pytest.mark.parametrize(
    "reply_to",
    [f"edgert/node/{NODE}/status", f"homeassistant/device/{NODE}/config", "other/topic"],
)
def test_reply_topic_outside_the_reply_prefix_is_refused(
    secured: Secured, peers: Callable[..., Peer], reply_to: str
) -> None:
    # The first two the daemon's user may write (the ACL would let it through): only the
    # daemon's own check (Topics.reply_allowed) keeps a device from choosing them.
    broker = secured.broker
    ha = peers(broker, "homeassistant", "edgert/node/#", "homeassistant/#")
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#")
    time.sleep(QUIET)  # the retained messages are in
    seen = len(ha.messages)
    kitchen.publish("edgert/infer/occupancy/kitchen", request("out", reply_to=reply_to))
    # Refused, and told on the request's default reply topic.
    (reply,) = kitchen.wait(lambda: kitchen.replies("edgert/reply/kitchen/occupancy"), 10, "it")
    assert reply["id"] == "out" and reply["ok"] is False
    assert reply["error"]["code"] == "bad_request" and reply_to in reply["error"]["message"]
    time.sleep(QUIET)
    assert ha.since(seen) == []


def test_response_topic_outside_the_reply_prefix_is_refused(
    secured: Secured, peers: Callable[..., Peer]
) -> None:
    # An MQTT 5 Response Topic outside the prefix: the daemon refuses it, publishes nothing
    # there, and tells the device on its key's default reply topic.
    broker = secured.broker
    ha = peers(broker, "homeassistant", "edgert/node/#")
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#")
    time.sleep(QUIET)
    seen = len(ha.messages)
    target = f"edgert/node/{NODE}/status"
    kitchen.publish("edgert/infer/occupancy/kitchen", request("rt"), ResponseTopic=target)
    (reply,) = kitchen.wait(lambda: kitchen.replies("edgert/reply/kitchen/occupancy"), 10, "it")
    assert reply["id"] == "rt" and reply["error"]["code"] == "bad_request"
    assert target in reply["error"]["message"]
    time.sleep(QUIET)
    assert ha.since(seen) == []


@pytest.mark.parametrize(
    "how",
    [
        "reply_to",
        "response_topic",
    ],
)
def test_a_device_cannot_send_replies_to_another_device(
    secured: Secured, peers: Callable[..., Peer], how: str
) -> None:
    # The ACL cannot stop what the daemon publishes: the daemon binds a keyed request's reply
    # topic to its key (which the ACL binds to the user).
    broker = secured.broker
    hall = peers(broker, "hall", "edgert/reply/hall/#")
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#")
    elsewhere = "edgert/reply/hall/occupancy"
    if how == "reply_to":
        kitchen.publish("edgert/infer/occupancy/kitchen", request("7", reply_to=elsewhere))
    else:
        kitchen.publish("edgert/infer/occupancy/kitchen", request("7"), ResponseTopic=elsewhere)
    (reply,) = kitchen.wait(lambda: kitchen.replies("edgert/reply/"), 5, "kitchen's answer")
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert elsewhere in reply["error"]["message"] and "'kitchen'" in reply["error"]["message"]
    time.sleep(QUIET)
    assert hall.messages == []


def test_edgert_client_as_a_device_user(secured: Secured) -> None:
    url = f"mqtts://kitchen:{USERS['kitchen']}@127.0.0.1:{secured.broker.port}"
    config = parse_broker_url(url, BrokerConfig(ca_file=str(secured.tls.ca)))
    with Client(config) as client:
        assert client.infer("occupancy", np.array(READING, np.float32), timeout=3).id


# ------------------------------------------------------------------------ payloads


class Unpickled:
    """Unpickling this creates ``marker``: proof that a payload was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_pickled_payloads_are_refused_and_never_unpickled(
    secured: Secured, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    import io
    import pickle

    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    np.save(buffer, np.array([Unpickled(marker)], dtype=object), allow_pickle=True)
    kitchen = peers(secured.broker, "kitchen", "edgert/reply/kitchen/#")
    kitchen.publish("edgert/infer/occupancy/kitchen", buffer.getvalue())
    kitchen.publish("edgert/infer/occupancy/kitchen", pickle.dumps(Unpickled(marker)))
    kitchen.publish("edgert/infer/occupancy/kitchen", request("__import__('os').getcwd()"))
    kitchen.wait(lambda: len(kitchen.on("edgert/reply/")) == 3, 10, "three replies")
    replies = kitchen.replies("edgert/reply/")
    refused = [r["error"]["code"] for r in replies if not r["ok"]]
    assert sorted(refused) == ["bad_input", "bad_request"], replies  # object .npy; not JSON
    assert [r["id"] for r in replies if r["ok"]] == ["__import__('os').getcwd()"]  # just an id
    assert not marker.exists()


def test_oversize_payloads_get_too_large_or_are_dropped_by_the_broker(
    secured: Secured, peers: Callable[..., Peer]
) -> None:
    broker, max_payload = secured.broker, DaemonConfig().max_payload
    max_packet = int(template_settings()["max_packet_size"])
    kitchen = peers(broker, "kitchen", "edgert/reply/kitchen/#")
    # Over the daemon's limit, under the broker's: answered too_large, by size, undecoded.
    sender = peers(broker, "kitchen", protocol=paho.MQTTv311)
    sender.publish("edgert/infer/occupancy/kitchen", b"{" + b" " * max_payload)
    (reply,) = kitchen.wait(lambda: kitchen.replies("edgert/reply/kitchen/"), 10, "too_large")
    assert reply["error"]["code"] == "too_large" and str(max_payload) in reply["error"]["message"]
    assert reply["id"] == "kitchen"  # the topic key stands in for an id it never decoded

    # Over the broker's limit: a 3.1.1 device (never told the limit) is disconnected, and
    # nothing reaches the daemon.
    closed = threading.Event()
    sender.client.on_disconnect = lambda c, u, f, rc, p: closed.set()
    sender.client.publish("edgert/infer/occupancy/kitchen", b" " * max_packet, qos=1)
    assert closed.wait(10)
    time.sleep(QUIET)
    assert len(kitchen.on("edgert/reply/")) == 1
    # The daemon serves on.
    kitchen.publish("edgert/infer/occupancy/kitchen", request("after"))
    kitchen.wait(lambda: len(kitchen.on("edgert/reply/")) == 2, 10, "the next reply")
    assert kitchen.replies("edgert/reply/")[1]["ok"] is True


# ---------------------------------------------------------- queues and persistence


def settled(peer: Peer, count: int, quiet: float = 3.0) -> bool:
    """Whether ``peer`` has ``count`` messages, or has had no new one for ``quiet`` seconds."""
    return len(peer.messages) >= count or time.monotonic() - peer.changed_at >= quiet


# The daemon's own outgoing queue ([broker] max_queued) at its default: with paho's old default
# (1000), the replies to this backlog overflowed it ("Message queue full") and were lost.
@pytest.mark.parametrize("daemon_queue", [None], ids=["daemon-default"])
def test_queued_requests_and_replies_survive_a_broker_restart(
    tmp_path: Path,
    compiled_repository: Path,
    peers: Callable[..., Peer],
    daemon_queue: int | None,
) -> None:
    """More than mosquitto's default max_queued_messages (1000) requests wait in the offline
    daemon's session, across a clean broker restart (persistence), and their replies wait in the
    offline device's session: every one is answered, none dropped."""
    burst = 1500
    broker, _, tls = secured_broker(tmp_path)
    broker.start()
    daemon = secured_daemon(broker, tls, compiled_repository, tmp_path / "daemon", daemon_queue)
    try:
        # The daemon's first run makes its persistent session and subscriptions; then it dies.
        daemon.start()
        daemon.stop()  # SIGKILL: its session (session_expiry 300 s) stays, and queues
        kitchen = dict(client_id="kitchen-1", session_expiry=3600)
        device = peers(broker, "kitchen", "edgert/reply/kitchen/#", **kitchen)
        for n in range(burst):
            device.client.publish(
                "edgert/infer/occupancy/kitchen", json.dumps(request(f"q{n}")), qos=1
            )
        device.wait(lambda: len(device.acks) >= burst, 30, "every PUBACK")
        device.close()
        broker.stop()  # clean: the database is saved
        broker.start()
        # Back online, the daemon answers the backlog while the device is still away: the
        # replies queue in the device's session.
        daemon.start()
        back = peers(broker, "kitchen", **kitchen)  # its session, subscription and queue
        back.wait(lambda: settled(back, burst), 30, f"{burst} replies, or none for 3 s")
        replies = back.replies("edgert/reply/kitchen/")
        assert sorted(r["id"] for r in replies) == sorted(f"q{n}" for n in range(burst))
        codes = {r["error"]["code"] if not r["ok"] else "ok" for r in replies}
        assert codes <= {"ok", "busy"}, codes  # busy: the daemon's own queue was full
    finally:
        daemon.stop()
        broker.kill()
