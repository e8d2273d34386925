"""The one result hook without a broker: a worker's events callback reaches every observer,
in order, one failing observer does not silence the rest, and the events topic is one of them."""

from __future__ import annotations

import logging

import pytest

from edgert.daemon.observers import EventsTopic, Observed, ResultHook
from tests.daemon.stages import TOPICS, Wire


def test_a_workers_results_reach_every_observer_in_order() -> None:
    hook, seen = ResultHook(), []
    assert not hook.active
    hook.subscribe(lambda r: seen.append(("first", r)))
    hook.subscribe(lambda r: seen.append(("second", r)))
    assert hook.active
    hook.events_for("occupancy")(b'{"ok":true}', "kitchen", {"state": True})
    expected = Observed("occupancy", b'{"ok":true}', "kitchen", {"state": True})
    assert seen == [("first", expected), ("second", expected)]


def test_a_failing_observer_does_not_silence_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook, seen = ResultHook(), []

    def broken(result: Observed) -> None:
        raise RuntimeError("a bug")

    hook.subscribe(broken)
    hook.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, "edgert.daemon"):
        hook.events_for("vad")(b"{}", None, None)
    assert seen == [Observed("vad", b"{}", None, None)]
    assert "vad: a result observer failed" in caplog.text


def test_the_events_topic_gets_each_models_replies() -> None:
    wire = Wire()
    events = EventsTopic(wire, TOPICS)  # type: ignore[arg-type]
    events(Observed("occupancy", b"1", None, None))
    events(Observed("vad", b"2", "mic", None))
    events(Observed("occupancy", b"3", None, None))
    assert [(p["topic"], p["payload"], p["qos"]) for p in wire.published] == [
        ("edgert/node/testnode/events/occupancy", b"1", 0),
        ("edgert/node/testnode/events/vad", b"2", 0),
        ("edgert/node/testnode/events/occupancy", b"3", 0),
    ]
