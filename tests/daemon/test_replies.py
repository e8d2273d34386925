"""The replies stage's publishing side without a broker: replies to waiters within the payload
limit and the broker's Maximum Packet Size, each acknowledging its request, and refusals at the
first topic allowed."""

from __future__ import annotations

import json
import logging

import pytest

from edgert.daemon.admission import Answer
from edgert.daemon.counts import Outcome, ReplyCounts, replayed
from edgert.daemon.intake import Refused
from edgert.daemon.ledger import Waiter
from edgert.daemon.replies import LocalWaiter, Replies
from edgert.protocol import ErrorCode, ProtocolError
from edgert.settings import DaemonConfig
from tests.daemon.stages import TOPICS, Wire, request

TOPIC = "edgert/reply/kitchen/occupancy"


def replies(wire: Wire, max_payload: int = 4096) -> Replies:
    return Replies(DaemonConfig(max_payload=max_payload), TOPICS, wire)  # type: ignore[arg-type]


def test_a_reply_goes_to_its_waiter_and_acknowledges_its_request() -> None:
    wire = Wire()
    message = request("edgert/infer/occupancy/kitchen", b"{}", mid=11)
    replies(wire).publish(Waiter(TOPIC, b"corr", 1, ack=message, request_id=1), b'{"id":1}')
    (sent,) = wire.published
    assert (sent["topic"], sent["payload"], sent["qos"]) == (TOPIC, b'{"id":1}', 1)
    assert sent["correlation"] == b"corr" and sent["ack"] is message


@pytest.mark.parametrize("request_id", [7, "seven"])
def test_a_reply_over_the_payload_limit_is_too_large_with_the_requests_id(
    request_id: int | str,
) -> None:
    wire = Wire()
    message = request("edgert/infer/occupancy/kitchen", b"{}")
    reply = json.dumps({"id": "not what is read", "pad": "x" * 5000}).encode()
    waiter = Waiter(TOPIC, None, 1, ack=message, request_id=request_id)
    replies(wire).publish(waiter, reply)
    ((sent, doc),) = [(p, p["doc"]) for p in wire.replies()]
    assert doc["id"] == request_id and doc["error"]["code"] == ErrorCode.TOO_LARGE.value
    assert "up to 4096 bytes" in doc["error"]["message"] and sent["ack"] is message


def test_the_brokers_maximum_packet_size_counts_the_whole_packet() -> None:
    wire = Wire(max_packet_size=1000)
    stage = replies(wire, max_payload=1 << 20)
    waiter = Waiter(TOPIC, b"c" * 40, 1, request_id="a")
    fits = max(
        n
        for n in range(1000)
        if wire.packet_size(TOPIC, b"x" * n, qos=1, correlation=b"c" * 40) <= 1000
    )
    stage.publish(waiter, b"x" * fits)
    stage.publish(waiter, b"x" * (fits + 1))
    first, second = wire.published
    assert first["payload"] == b"x" * fits
    doc = json.loads(second["payload"])
    assert doc["id"] == "a" and doc["error"]["code"] == ErrorCode.TOO_LARGE.value
    assert "up to 1000 bytes" in doc["error"]["message"]


def test_a_local_waiter_is_answered_without_publishing() -> None:
    wire, got = Wire(), []
    replies(wire).publish(LocalWaiter("", None, 0, deliver=got.append), b"x" * 10_000)
    assert got == [b"x" * 10_000] and wire.published == []  # no topic: no payload limit


def test_an_answer_goes_to_every_waiter() -> None:
    wire = Wire()
    waiters = tuple(Waiter(f"edgert/reply/d{i}/occupancy", None, 0) for i in range(3))
    replies(wire).answer(Answer(waiters, b'{"ok":true}', Outcome("occupancy", "3")))
    assert [p["topic"] for p in wire.published] == [w.topic for w in waiters]


def test_a_refusal_goes_to_the_first_allowed_candidate() -> None:
    wire = Wire()
    message = request("edgert/infer/occupancy", b"{}", correlation=b"k", mid=3)
    error = ProtocolError(ErrorCode.LOADING, "still loading", retry_after_ms=2000)
    refused = Refused(error, ("home/lights", TOPIC, "edgert/reply/x/y"), 12, 1, message)
    replies(wire).refuse(refused)
    (sent,) = wire.replies()
    assert (sent["topic"], sent["correlation"], sent["qos"]) == (TOPIC, b"k", 1)
    assert sent["ack"] is message
    assert sent["doc"] == {
        "id": 12,
        "ok": False,
        "error": {"code": "loading", "message": "still loading", "retry_after_ms": 2000},
    }


def test_a_refusal_with_nowhere_allowed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    wire = Wire()
    message = request("edgert/infer/occupancy", b"{}")
    refused = Refused(ProtocolError(ErrorCode.BAD_REQUEST, "bad"), ("home/x",), None, 0, message)
    with caplog.at_level(logging.WARNING, "edgert.daemon"):
        replies(wire).refuse(refused)
    assert wire.published == []
    assert "bad_request on edgert/infer/occupancy (no reply topic to tell): bad" in caplog.text


# ---------------------------------------------------------------- counted for /metrics


def counting(wire: Wire, max_payload: int = 1 << 20) -> tuple[Replies, ReplyCounts]:
    counts = ReplyCounts()
    known = {"occupancy": ("occupancy", "3")}
    stage = Replies(
        DaemonConfig(max_payload=max_payload),
        TOPICS,
        wire,  # type: ignore[arg-type]
        counts,
        known.get,
    )
    return stage, counts


def test_every_reply_is_counted_by_what_it_says() -> None:
    wire = Wire()
    stage, counts = counting(wire, max_payload=200)
    ok, busy = Outcome("occupancy", "3"), Outcome("occupancy", "3", "busy")
    stage.publish(Waiter(TOPIC, None, 1), b'{"ok":true}', ok)
    stage.answer(Answer((Waiter(TOPIC, None, 1),) * 2, b'{"ok":false}', busy))
    stage.publish(Waiter(TOPIC, None, 1, request_id="big"), b"x" * 500, ok)  # sent as too_large
    stage.publish(LocalWaiter("", None, 0, deliver=lambda reply: None), b"{}", ok)
    assert counts.snapshot() == {ok: 2, busy: 2, Outcome("occupancy", "3", "too_large"): 1}
    assert len(wire.published) == 4


def test_a_refusal_names_its_model_only_if_the_repository_has_it() -> None:
    wire = Wire()
    stage, counts = counting(wire)
    error = ProtocolError(ErrorCode.BAD_INPUT, "no")
    for model in ("occupancy", "made-up-1", "made-up-2"):
        message = request(f"edgert/infer/{model}", b"{}")
        stage.refuse(Refused(error, (TOPIC,), 1, 1, message))
    stage.refuse(Refused(error, ("home/lights",), 1, 1, request("edgert/infer/occupancy", b"{}")))
    assert counts.snapshot() == {
        Outcome("occupancy", "3", "bad_input"): 2,  # the last one unheard, but refused
        Outcome("", "", "bad_input"): 2,  # a device's made-up names: no label each
    }


def test_a_replayed_reply_is_read_back_for_its_outcome() -> None:
    assert replayed("m", "1", b'{"id":1,"ok":true,"outputs":{}}') == Outcome("m", "1")
    failed = b'{"id":1,"ok":false,"error":{"code":"bad_input","message":"x"}}'
    assert replayed("m", "1", failed) == Outcome("m", "1", "bad_input")
    assert replayed("m", "1", b"not json") == Outcome("m", "1", "internal")
