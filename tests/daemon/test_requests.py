"""The request side's stages in order, without a broker, around real Models serving occupancy:
a request decoded once even when a new version is swapped in meanwhile, held requests replayed,
a source's snapshot answered to the daemon itself, and every result shown to the one hook."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgert import ModelDir, open_model
from edgert.daemon.models import Served
from edgert.daemon.observers import Observed
from tests.daemon.stages import READING, Stages, Wire, request


@pytest.fixture
def stages(compiled_repository: Path) -> Iterator[Stages]:
    stages = Stages(compiled_repository)
    yield stages
    stages.close()


def _wait(condition: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _counting(served: Served, gate: threading.Event | None = None) -> list[str]:
    """Count ``served``'s decodes (and, with ``gate``, hold each until it is set)."""
    calls: list[str] = []
    decode = served.decode

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        if gate is not None:
            assert gate.wait(10)
        return decode(*args, **kwargs)

    served.decode = counted  # type: ignore[method-assign]
    return calls


def test_a_swap_waits_for_the_request_being_decoded_which_is_decoded_once(
    stages: Stages,
) -> None:
    stages.serve("occupancy")
    old = stages.models.get("occupancy")
    assert old is not None
    gate = threading.Event()
    decodes = _counting(old, gate)
    model = ModelDir(stages.repository / "occupancy")
    loaded = open_model(model, stages.config.backend)
    body = {"id": "r1", "inputs": READING}
    taking = threading.Thread(
        target=stages.requests.on_message,
        args=(request("edgert/infer/occupancy/kitchen", body),),
    )
    taking.start()
    _wait(lambda: decodes)  # decoding now, under the swap lock
    swapping = threading.Thread(target=stages.models.serve, args=(model, loaded))
    swapping.start()
    time.sleep(0.3)
    assert stages.models.get("occupancy") is old  # the swap waits for the take
    gate.set()
    taking.join(10)
    swapping.join(30)
    new = stages.models.get("occupancy")
    assert new is not None and new is not old
    assert decodes == ["occupancy"] and old.worker.stats.requests == 1
    assert new.worker.stats.requests == 0
    _wait(lambda: stages.wire.published)
    (reply,) = stages.wire.replies()
    assert reply["topic"] == "edgert/reply/kitchen/occupancy"
    assert reply["doc"]["id"] == "r1" and reply["doc"]["ok"]


def test_requests_held_while_loading_are_taken_once_it_is_served(stages: Stages) -> None:
    stages.models.loading(ModelDir(stages.repository / "occupancy"))
    for i in range(2):
        message = request("edgert/infer/occupancy/kitchen", {"id": i, "inputs": READING})
        assert stages.requests.on_message(message)
    assert stages.wire.published == [] and len(stages.models.held) == 2
    stages.serve("occupancy")  # replays them
    _wait(lambda: len(stages.wire.published) == 2)
    assert sorted(r["doc"]["id"] for r in stages.wire.replies()) == [0, 1]
    assert all(r["doc"]["ok"] for r in stages.wire.replies())


def test_held_requests_get_loading_when_the_daemon_stops(stages: Stages) -> None:
    stages.models.loading(ModelDir(stages.repository / "occupancy"))
    message = request("edgert/infer/occupancy/kitchen", {"id": "h", "inputs": READING}, mid=4)
    assert stages.requests.on_message(message)
    stages.requests.expire_held(everything=True)
    (reply,) = stages.wire.replies()
    assert reply["doc"]["id"] == "h" and reply["doc"]["error"]["code"] == "loading"
    assert reply["ack"] is message


def test_refusals_and_non_requests(stages: Stages) -> None:
    assert not stages.requests.on_message(request("somewhere/else", b"{}"))
    message = request("edgert/infer/nosuch/kitchen", {"id": 2}, mid=9)
    assert stages.requests.on_message(message)
    (reply,) = stages.wire.replies()
    assert reply["topic"] == "edgert/reply/kitchen/nosuch" and reply["ack"] is message
    assert reply["doc"]["error"]["code"] == "no_model"


def test_a_repeat_gets_the_cached_reply_without_running_again(stages: Stages) -> None:
    stages.serve("occupancy")
    body = {"id": "same", "inputs": READING}
    stages.requests.on_message(request("edgert/infer/occupancy/kitchen", body, mid=1))
    _wait(lambda: stages.wire.published)
    again = request("edgert/infer/occupancy/kitchen", body, mid=2)
    stages.requests.on_message(again)
    first, second = stages.wire.replies()
    assert first["payload"] == second["payload"] and second["ack"] is again
    entry = stages.models.get("occupancy")
    assert entry is not None and entry.worker.stats.ok == 1


def test_a_sources_snapshot_is_answered_to_the_daemon_itself(stages: Stages) -> None:
    stages.serve("occupancy")
    entry = stages.models.get("occupancy")
    assert entry is not None
    decodes = _counting(entry)
    payload = b'{"inputs": [[21, 40, 300, 600]]}'
    reply = stages.requests.infer_local("occupancy", payload, "application/json", 10.0)
    assert reply["ok"] and "result" in reply and "outputs" not in reply  # compact
    assert decodes == ["occupancy"] and stages.wire.published == []
    missing = stages.requests.infer_local("nosuch", payload, "application/json", 1.0)
    assert missing["error"]["code"] == "no_model"
    stages.stopping.set()
    stopped = stages.requests.infer_local("occupancy", payload, "application/json", 1.0)
    assert stopped["error"]["code"] == "no_model"


def _source(stages: Stages, replies: list[Any]) -> threading.Thread:
    """A source's snapshot taken on a thread of its own (not started); its reply into
    ``replies``."""
    payload = b'{"inputs": [[21, 40, 300, 600]]}'

    def take() -> None:
        replies.append(stages.requests.infer_local("occupancy", payload, "application/json", 10))

    return threading.Thread(target=take, daemon=True)


def test_a_sources_decode_does_not_hold_up_a_devices_request(stages: Stages) -> None:
    """A camera's snapshot decodes on its executor thread outside the swap lock: a device's
    request meanwhile is decoded, taken and answered at once."""
    stages.serve("occupancy")
    entry = stages.models.get("occupancy")
    assert entry is not None
    gate = threading.Event()
    decodes = _counting(entry, gate)  # every decode waits for the gate
    local: list[Any] = []
    source = _source(stages, local)
    source.start()
    device = threading.Thread(
        target=stages.requests.on_message,
        args=(request("edgert/infer/occupancy/kitchen", {"id": "d", "inputs": READING}),),
        daemon=True,
    )
    try:
        _wait(lambda: decodes)  # the source is decoding now
        device.start()
        _wait(lambda: len(decodes) == 2)  # the device's decode began while the source's waits
    finally:
        gate.set()  # bounded either way
        device.join(10)
        source.join(10)
    _wait(lambda: stages.wire.published)
    assert stages.wire.replies()[0]["doc"]["id"] == "d" and local[0]["ok"]


def test_a_source_decodes_again_if_its_model_is_swapped_while_it_decodes(stages: Stages) -> None:
    stages.serve("occupancy")
    old = stages.models.get("occupancy")
    assert old is not None
    gate = threading.Event()
    decodes = _counting(old, gate)
    model = ModelDir(stages.repository / "occupancy")
    loaded = open_model(model, stages.config.backend)
    local: list[Any] = []
    source = _source(stages, local)
    source.start()
    swapping = threading.Thread(target=stages.models.serve, args=(model, loaded), daemon=True)
    try:
        _wait(lambda: decodes)
        swapping.start()
        swapping.join(10)
        assert not swapping.is_alive()  # the swap is not held up by the source's decode
        new = stages.models.get("occupancy")
        assert new is not None and new is not old
        new_decodes = _counting(new)
    finally:
        gate.set()
        swapping.join(10)
        source.join(10)
    assert local[0]["ok"] and new_decodes == ["occupancy"]  # taken by the version serving
    assert old.worker.stats.requests == 0 and new.worker.stats.requests == 1


def test_every_result_reaches_the_hook_with_its_model_and_stream(
    compiled_repository: Path,
) -> None:
    stages = Stages(compiled_repository, Wire())
    seen: list[Observed] = []
    stages.observers.subscribe(seen.append)
    stages.serve("occupancy")
    try:
        body = {"id": 1, "stream": "hall", "inputs": READING}
        stages.requests.on_message(request("edgert/infer/occupancy/kitchen", body))
        _wait(lambda: seen)
        (result,) = seen
        assert (result.model, result.stream) == ("occupancy", "hall")
        assert result.reply == stages.wire.published[0]["payload"]
        assert set(result.summary) >= {"state", "score"}
    finally:
        stages.close()


def test_a_nan_reading_is_answered_with_no_state_not_off_and_a_real_one_with_its_label(
    stages: Stages,
) -> None:
    # A DHT22 that fails a read gives NaN, and a device's JSON carries it as NaN: the request is
    # taken (a model may use NaN), and its reply says no state rather than "empty".
    stages.serve("occupancy")
    nan = b'{"id": "n", "reply_to": "edgert/reply/hall/x", "inputs": [[NaN, 40, 300, 600]]}'
    stages.requests.on_message(request("edgert/infer/occupancy", nan), defer=False)
    body = {"id": "r", "reply_to": "edgert/reply/hall/x", "inputs": READING}
    stages.requests.on_message(request("edgert/infer/occupancy", body), defer=False)
    _wait(lambda: len(stages.wire.published) == 2)
    replies = {r["doc"]["id"]: r["doc"] for r in stages.wire.replies()}
    assert replies["n"]["ok"] and replies["n"]["result"] == {"state": None, "score": None}
    real = replies["r"]["result"]
    assert real["label"] == ("occupied" if real["state"] else "empty")
