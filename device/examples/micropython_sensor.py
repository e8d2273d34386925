"""An ESP32 room sensor asking edgert whether the room is occupied (MicroPython, umqtt.simple).

Copy this file to the board as ``main.py`` (``mpremote cp micropython_sensor.py :main.py``) with
umqtt.simple installed (``mpremote mip install umqtt.simple``), and set WIFI_*, BROKER and
CLIENT_ID below. Every PERIOD_S it reads [temperature degC, relative humidity %, light lux,
CO2 ppm] and publishes

    edgert/infer/occupancy/<CLIENT_ID>   {"id": ..., "compact": true, "inputs": [[t, rh, lux, co2]]}

umqtt.simple speaks MQTT 3.1.1, which has no response topic: the ``<CLIENT_ID>`` at the end of the
request topic is the key, and the daemon answers on

    edgert/reply/<CLIENT_ID>/occupancy   {"id": ..., "ok": true, "model", "version", "backend", "result"}

``"compact": true`` drops the raw outputs and timings so the reply fits a 1 KiB buffer. The
``result`` comes from the model's ``[postprocess]`` in model.toml (for occupancy, ``threshold`` +
``on_label = "occupied"`` gives ``{"state": true, "score": 0.93}``); a model without one replies
``"result": null`` in compact mode.

Delivery is end to end: a request unanswered after TIMEOUT_MS (or cut by a reconnect) is sent
again with the SAME id. The daemon answers a repeat from its reply cache (or joins the run still in
flight), so a lost reply never costs a second inference, and a late first reply is still the
answer to the same question. Ids carry a per-boot random part, so a rebooted board counting from
1 again is not answered from the cache with a reading of its previous life.

The protocol (topics, request, reply, retry loop) is in plain functions taking a client with
umqtt.simple's ``publish``/``subscribe``/``set_callback``/``check_msg``: the same file runs on
CPython (edgert's tests drive it over paho) and only ``main()`` touches the hardware.
"""

# %-formatting and try/except/pass: what every MicroPython build has (no contextlib there).
# ruff: noqa: UP031, SIM105

try:
    import ujson as json
except ImportError:  # CPython
    import json

try:
    import utime as time
except ImportError:  # CPython
    import time

try:
    import uos as os
except ImportError:  # CPython
    import os

WIFI_SSID = "my-network"
WIFI_PASSWORD = "secret"
BROKER = "192.168.1.10"  # the broker edgert serves on
PORT = 1883
CLIENT_ID = "esp32-kitchen"  # also the reply key: [a-zA-Z0-9_-], unique per device
MODEL = "occupancy"
PREFIX = "edgert"
PERIOD_S = 30
TIMEOUT_MS = 3000  # per attempt
ATTEMPTS = 4  # the first send and three re-sends
MAX_REPLY = 1024  # the receive buffer a small board can spare

if hasattr(time, "ticks_ms"):  # MicroPython: wrapping millisecond ticks
    _ticks_ms, _ticks_diff, _sleep_ms = time.ticks_ms, time.ticks_diff, time.sleep_ms
else:

    def _ticks_ms():
        return int(time.monotonic() * 1000)

    def _ticks_diff(a, b):
        return a - b

    def _sleep_ms(ms):
        time.sleep(ms / 1000)


class ReplyTimeout(Exception):
    """No reply to the request after every attempt."""


class ReplyError(Exception):
    """The daemon answered with ``ok: false`` (``code`` is its error code), or the reply was
    unusable."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code


def request_topic(client_id, model=MODEL, prefix=PREFIX):
    """Where an MQTT 3.1.1 device publishes: the client id is the topic's key."""
    return "%s/infer/%s/%s" % (prefix, model, client_id)


def reply_topic(client_id, model=MODEL, prefix=PREFIX):
    """Where the daemon answers a request whose topic carries ``client_id`` as its key."""
    return "%s/reply/%s/%s" % (prefix, client_id, model)


def boot_tag():
    """A random tag for this boot, so ids do not repeat after a reset."""
    return "".join("%02x" % b for b in os.urandom(3))


def new_id(client_id, tag, seq):
    return "%s-%s-%d" % (client_id, tag, seq)


def build_request(request_id, reading):
    """The JSON request for one reading [t, rh, lux, co2] (a batch of one)."""
    values = [float(v) for v in reading]
    return json.dumps({"id": request_id, "compact": True, "inputs": [values]})


def parse_reply(payload, request_id):
    """The reply dict if ``payload`` answers ``request_id``, None if it answers another request
    (a late reply to an earlier one). Raises ReplyError for an error reply or an oversized one."""
    if len(payload) > MAX_REPLY:
        raise ReplyError("too_large", "a %d-byte reply; ask with compact" % len(payload))
    try:
        reply = json.loads(payload)
    except ValueError:
        raise ReplyError("bad_reply", "reply is not JSON") from None
    if not isinstance(reply, dict) or reply.get("id") != request_id:
        return None
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise ReplyError(error.get("code", "unknown"), error.get("message", ""))
    return reply


class _Inbox:
    """The umqtt callback: keeps the last payload that arrived on the reply topic."""

    def __init__(self, topic):
        self.topic = topic
        self.payload = None

    def __call__(self, topic, msg):
        if isinstance(topic, bytes):
            topic = topic.decode()
        if topic == self.topic:
            self.payload = msg


def subscribe_replies(client, client_id, model=MODEL, prefix=PREFIX):
    """Install the callback and subscribe to this device's reply topic; returns the inbox.
    Call again after every (re)connect: umqtt.simple connects with a clean session."""
    inbox = _Inbox(reply_topic(client_id, model, prefix))
    client.set_callback(inbox)
    client.subscribe(inbox.topic, 1)
    return inbox


def infer(
    client,
    inbox,
    client_id,
    request_id,
    reading,
    timeout_ms=TIMEOUT_MS,
    attempts=ATTEMPTS,
    model=MODEL,
    prefix=PREFIX,
    log=print,
):
    """Publish the reading and wait for its reply, re-sending the same id on each timeout.
    Returns the reply dict; raises ReplyTimeout, ReplyError, or OSError (connection lost: the
    caller reconnects, calls subscribe_replies again, and calls this with the SAME id)."""
    topic = request_topic(client_id, model, prefix)
    body = build_request(request_id, reading)
    for attempt in range(attempts):
        if attempt:
            log("no reply to %s after %d ms: re-sending" % (request_id, timeout_ms))
        inbox.payload = None
        client.publish(topic, body, qos=1)
        start = _ticks_ms()
        while _ticks_diff(_ticks_ms(), start) < timeout_ms:
            client.check_msg()
            if inbox.payload is not None:
                payload, inbox.payload = inbox.payload, None
                reply = parse_reply(payload, request_id)
                if reply is not None:
                    return reply
            else:
                _sleep_ms(10)
    raise ReplyTimeout("no reply to %s after %d attempts" % (request_id, attempts))


def occupied(reply):
    """The post-processed decision: True/False, or None when the model has no [postprocess]."""
    result = reply.get("result")
    if isinstance(result, dict) and "state" in result:
        return bool(result["state"])
    return None


def main():
    import machine
    import network
    from umqtt.simple import MQTTClient

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(WIFI_SSID, WIFI_PASSWORD)
        while not wlan.isconnected():
            _sleep_ms(200)

    led = machine.Pin(2, machine.Pin.OUT)  # on while the room is occupied
    light = machine.ADC(machine.Pin(34))  # a photoresistor divider; replace with your sensors
    light.atten(machine.ADC.ATTN_11DB)

    def read_sensors():
        # Replace with real drivers (e.g. an SHT31 for t/rh, an SCD40 for CO2): the model
        # normalises inside the graph, so send the values as measured, in these units.
        lux = light.read() * 1000 / 4095
        return [21.5, 40.0, lux, 650.0]

    client = MQTTClient(CLIENT_ID, BROKER, port=PORT, keepalive=60)
    tag, seq = boot_tag(), 0
    while True:
        seq += 1
        request_id = new_id(CLIENT_ID, tag, seq)
        reading = read_sensors()
        for _ in range(3):  # reconnects; the same id every time
            try:
                client.connect()
                inbox = subscribe_replies(client, CLIENT_ID)
                reply = infer(client, inbox, CLIENT_ID, request_id, reading)
                state = occupied(reply)
                print(request_id, reading, "->", reply.get("result"))
                if state is not None:
                    led.value(1 if state else 0)
                break
            except OSError as exc:
                print("connection lost (%s): reconnecting" % exc)
                _sleep_ms(2000)
            except (ReplyTimeout, ReplyError) as exc:
                print(exc)
                break
        try:
            client.disconnect()
        except OSError:
            pass
        _sleep_ms(PERIOD_S * 1000)


if __name__ == "__main__":
    main()
