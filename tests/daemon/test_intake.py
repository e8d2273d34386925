"""The intake stage without a broker: messages in, read against real Models serving occupancy,
and each comes out accepted (with where its reply goes), refused (with where the error may go),
held, or passed over."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edgert.daemon.intake import UNSERVED, Accepted, Intake, Passed, Refused
from edgert.daemon.pool import Pool
from edgert.protocol import ErrorCode
from tests.daemon.stages import READING, TOPICS, Stages, request


@pytest.fixture
def stages(compiled_repository: Path) -> Iterator[Stages]:
    stages = Stages(compiled_repository, qos=1, max_payload=4096)
    stages.serve("occupancy")
    yield stages
    stages.close()


@pytest.fixture
def intake(stages: Stages) -> Intake:
    return stages.requests.intake


def test_topics_that_are_not_requests_for_this_node_are_passed_over(intake: Intake) -> None:
    for topic in ("edgert/reply/a/occupancy", "edgert/node/other/infer/occupancy", "x/y"):
        assert intake.read(request(topic, {"inputs": READING})) is Passed.NOT_A_REQUEST


def test_a_keyed_request_is_decoded_and_answered_under_its_key(intake: Intake) -> None:
    message = request("edgert/infer/occupancy/kitchen", {"id": 5, "inputs": READING}, qos=1)
    read = intake.read(message, received=12.5)
    assert isinstance(read, Accepted)
    assert read.destination == "edgert/reply/kitchen/occupancy"
    assert read.request.id == 5 and read.request.inputs["readings"].shape == (1, 4)
    assert (read.received, read.qos, read.message) == (12.5, 1, message)
    assert read.served is intake.models.get("occupancy")


def test_the_reply_qos_is_at_most_the_daemons(compiled_repository: Path) -> None:
    stages = Stages(compiled_repository, qos=0)
    stages.serve("occupancy")
    try:
        read = stages.requests.intake.read(
            request("edgert/infer/occupancy/kitchen", {"inputs": READING}, qos=1)
        )
        assert isinstance(read, Accepted) and read.qos == 0
    finally:
        stages.close()


def test_the_response_topic_comes_before_reply_to_and_the_key(intake: Intake) -> None:
    body = {"reply_to": "edgert/reply/kitchen/x", "inputs": READING}
    message = request(
        "edgert/infer/occupancy/kitchen", body, response_topic="edgert/reply/kitchen/rt"
    )
    read = intake.read(message)
    assert isinstance(read, Accepted) and read.destination == "edgert/reply/kitchen/rt"
    read = intake.read(request("edgert/infer/occupancy", body))
    assert isinstance(read, Accepted) and read.destination == "edgert/reply/kitchen/x"


def test_a_request_naming_no_reply_topic_and_no_key_is_dropped(intake: Intake) -> None:
    assert intake.read(request("edgert/infer/occupancy", {"inputs": READING})) is Passed.DROPPED


def test_a_message_meant_as_a_request_on_a_topic_that_is_none_is_logged_once_per_topic(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    # A firmware that joins "<prefix>/infer/<model>/" and an empty key: no node answers it,
    # so the log is where its owner learns why.
    body = {"id": "a", "reply_to": "edgert/reply/kitchen/x", "inputs": READING}
    for topic in ("edgert/infer/occupancy/", "edgert/infer//x", "edgert/node/testnode/infer/.."):
        for _ in range(3):
            assert intake.read(request(topic, body)) is Passed.NOT_A_REQUEST
        said = [r.getMessage() for r in caplog.records if repr(topic) in r.getMessage()]
        assert len(said) == 1 and "is not a request, and is not answered" in said[0], topic
        assert "edgert/infer/<model>/<key>" in said[0]
    caplog.clear()
    for topic in ("edgert/reply/kitchen/x", "edgert/node/other/infer/occupancy/", "x/infer/y/"):
        assert intake.read(request(topic, body)) is Passed.NOT_A_REQUEST
    assert not caplog.records  # not this node's requests' topics: nothing to say


def test_a_retained_copy_of_a_request_is_passed_over_and_logged(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"id": "a", "reply_to": "edgert/reply/kitchen/x", "inputs": READING}
    live = request("edgert/infer/occupancy", body)
    assert isinstance(intake.read(live), Accepted)
    kept = msgspec.structs.replace(live, retain=True)
    assert intake.read(kept) is Passed.RETAINED
    assert "a retained copy of a request on edgert/infer/occupancy" in caplog.text


def test_a_reply_topic_outside_the_prefix_is_refused_at_the_keys_own(intake: Intake) -> None:
    body = {"id": "a", "reply_to": "home/lights/set", "inputs": READING}
    read = intake.read(request("edgert/infer/occupancy/kitchen", body))
    assert isinstance(read, Refused)
    assert read.error.code is ErrorCode.BAD_REQUEST and "outside" in read.error.message
    assert (read.candidates, read.request_id) == (("edgert/reply/kitchen/occupancy",), "a")
    read = intake.read(request("edgert/infer/occupancy", body))  # no key: nowhere to tell
    assert isinstance(read, Refused) and read.candidates == ()


def test_a_keyed_request_cannot_reply_under_another_devices_key(intake: Intake) -> None:
    body = {"id": 3, "reply_to": "edgert/reply/hall/occupancy", "inputs": READING}
    read = intake.read(request("edgert/infer/occupancy/kitchen", body))
    assert isinstance(read, Refused) and "not under this request's key" in read.error.message
    assert read.candidates == ("edgert/reply/kitchen/occupancy",) and read.request_id == 3


def test_a_bad_request_is_refused_with_its_id_where_it_asked(intake: Intake) -> None:
    body = {"id": 9, "reply_to": "edgert/reply/d/x", "inputs": {"nope": [1]}}
    read = intake.read(request("edgert/infer/occupancy", body, qos=1))
    assert isinstance(read, Refused) and read.error.code is ErrorCode.BAD_INPUT
    assert (read.candidates, read.request_id, read.qos) == (("edgert/reply/d/x",), 9, 1)


def test_a_keyed_refusal_goes_only_under_its_key(intake: Intake) -> None:
    body = {"reply_to": "edgert/reply/hall/x", "inputs": "garbage"}
    message = request("edgert/infer/occupancy/kitchen", body, response_topic="edgert/reply/hall/rt")
    read = intake.read(message)
    assert isinstance(read, Refused)
    assert read.candidates == ("edgert/reply/kitchen/occupancy",)
    assert read.request_id == "kitchen"  # a binary request's id may be its key; so is this


def test_size_and_key_limits(intake: Intake) -> None:
    big = request("edgert/infer/occupancy/k", b"{" + b" " * 5000 + b"}", user={"id": "u1"})
    read = intake.read(big)
    assert isinstance(read, Refused) and read.error.code is ErrorCode.TOO_LARGE
    assert read.request_id == "u1" and read.candidates == ("edgert/reply/k/occupancy",)
    long_key = "k" * 200
    read = intake.read(request(f"edgert/infer/occupancy/{long_key}", {"inputs": READING}))
    assert isinstance(read, Refused) and read.error.code is ErrorCode.BAD_REQUEST
    assert "200 characters" in read.error.message


def test_an_unknown_model_is_refused_naming_what_is_served(intake: Intake) -> None:
    body = {"id": "q", "reply_to": "edgert/reply/d/x", "inputs": READING}
    read = intake.read(request("edgert/infer/nosuch", body))
    assert isinstance(read, Refused) and read.error.code is ErrorCode.NO_MODEL
    assert "served: occupancy" in read.error.message
    assert (read.candidates, read.request_id) == (("edgert/reply/d/x",), "q")


def test_a_loading_models_requests_are_held_up_to_the_bound(compiled_repository: Path) -> None:
    stages = Stages(compiled_repository, queue_size=1, hold_while_loading=30.0)
    intake = stages.requests.intake
    stages.models.held.start("occupancy")
    body = {"id": 1, "reply_to": "edgert/reply/d/x", "inputs": READING}
    assert intake.read(request("edgert/infer/occupancy", body)) is Passed.HELD
    read = intake.read(request("edgert/infer/occupancy", body))
    assert isinstance(read, Refused) and read.error.code is ErrorCode.LOADING
    assert read.error.retry_after_ms == 30000 and read.candidates == ("edgert/reply/d/x",)
    assert len(stages.models.held) == 1


def test_held_requests_expire_with_loading_or_expired(compiled_repository: Path) -> None:
    stages = Stages(compiled_repository, hold_while_loading=30.0)
    intake = stages.requests.intake
    stages.models.held.start("occupancy")
    quick = {"id": "quick", "deadline_ms": 1, "inputs": READING}
    assert intake.read(request("edgert/infer/occupancy/d", quick)) is Passed.HELD
    assert intake.read(request("edgert/infer/occupancy/d", {"id": "slow"})) is Passed.HELD
    time.sleep(0.01)
    (expired,) = intake.expired()
    assert expired.error.code is ErrorCode.EXPIRED and expired.request_id == "quick"
    assert expired.candidates == ("edgert/reply/d/occupancy",)
    (stopping,) = intake.expired(everything=True)
    assert stopping.error.code is ErrorCode.LOADING and stopping.request_id == "slow"
    assert stopping.error.retry_after_ms is not None and len(stages.models.held) == 0


def test_a_pools_unserved_copy_is_answered_only_for_a_model_no_node_lists(
    stages: Stages,
) -> None:
    pool = Pool(TOPICS)
    intake = Intake(stages.config, TOPICS, stages.models, pool)
    body = {"reply_to": "edgert/reply/d/x", "inputs": READING}
    copy = request("edgert/infer/occupancy", body, subscriptions=(UNSERVED,))
    assert intake.read(copy) is Passed.ELSEWHERE
    pool.on_message("edgert/node/other/status", b"online")
    pool.on_message("edgert/node/other/models", b'{"v": 1, "models": [{"name": "vad"}]}')
    vad = request("edgert/infer/vad", body, subscriptions=(UNSERVED,))
    assert intake.read(vad) is Passed.ELSEWHERE
    read = intake.read(request("edgert/infer/nosuch", body, subscriptions=(UNSERVED,)))
    assert isinstance(read, Refused) and read.error.code is ErrorCode.NO_MODEL
    assert "served: occupancy, vad" in read.error.message


def test_a_sources_snapshot_is_read_for_the_daemon_itself(intake: Intake) -> None:
    read = intake.read_local("occupancy", b'{"inputs": [[1, 2, 3, 4]]}', "application/json", 3.0)
    assert isinstance(read, Accepted) and (read.destination, read.received) == ("", 3.0)
    read = intake.read_local("nosuch", b"{}", "application/json", 3.0)
    assert isinstance(read, Refused) and read.error.code is ErrorCode.NO_MODEL
    read = intake.read_local("occupancy", b"x" * 5000, "application/json", 3.0)
    assert isinstance(read, Refused) and read.error.code is ErrorCode.TOO_LARGE
    assert read.candidates == ()
