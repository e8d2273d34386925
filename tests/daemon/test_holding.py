"""Held requests and the pool's view of other nodes, without a broker."""

from __future__ import annotations

import json
import time

from edgert.daemon.holding import HeldRequests, Holding
from edgert.daemon.pool import Pool
from edgert.protocol import Envelope, Topics
from edgert.transport import Message


def _message(n: int = 0) -> Message:
    return Message(f"edgert/infer/m/{n}", b"{}", 1, False, n)


def test_a_request_is_held_only_while_its_model_loads() -> None:
    held = HeldRequests(30.0, capacity=2)
    now = time.monotonic()
    assert held.hold("m", _message(), now, Envelope()) is Holding.NOT_LOADING
    held.start("m")
    assert held.is_loading("m") and held.loading() == ["m"]
    assert held.hold("m", _message(1), now, Envelope()) is Holding.HELD
    assert held.hold("m", _message(2), now, Envelope()) is Holding.HELD
    assert held.hold("m", _message(3), now, Envelope()) is Holding.FULL  # the bound
    assert len(held) == 2
    released = held.finish("m")
    assert [h.message.mid for h in released] == [1, 2]  # oldest first
    assert held.hold("m", _message(4), now, Envelope()) is Holding.NOT_LOADING
    assert len(held) == 0 and not held.is_loading("m")


def test_with_a_bound_of_zero_nothing_is_held() -> None:
    held = HeldRequests(0.0, capacity=8)
    held.start("m")
    assert held.hold("m", _message(), time.monotonic(), Envelope()) is Holding.FULL


def test_held_requests_expire_at_the_bound_or_their_own_deadline_first() -> None:
    held = HeldRequests(10.0, capacity=8)
    held.start("m")
    now = time.monotonic()
    held.hold("m", _message(1), now, Envelope(deadline_ms=100))
    held.hold("m", _message(2), now, Envelope())
    assert held.expired(now) == []
    (early,) = held.expired(now + 0.2)
    assert early.message.mid == 1 and early.deadline is not None
    (late,) = held.expired(now + 10.5)
    assert late.message.mid == 2 and late.deadline is None
    held.hold("m", _message(3), now, Envelope())
    assert [h.message.mid for h in held.expired(now, everything=True)] == [3]


def test_retry_after_is_the_bound_or_the_time_loading_so_far_at_least_a_second() -> None:
    held = HeldRequests(0.0, capacity=1)
    held.start("m")
    assert held.retry_after_ms("m") == 1000
    assert HeldRequests(45.0, capacity=1).retry_after_ms("m") == 45000


def _catalogue(node: str, **states: str) -> bytes:
    models = [{"name": name, "state": state} for name, state in states.items()]
    return json.dumps({"v": 1, "node": node, "models": models}).encode()


def test_the_pool_counts_models_other_online_nodes_list_as_loading_or_ready() -> None:
    topics = Topics(node="me", share_group="home")
    pool = Pool(topics)
    assert pool.subscriptions == ("edgert/node/+/status", "edgert/node/+/models")
    assert pool.on_message("edgert/node/a/models", _catalogue("a", x="ready", y="failed"))
    assert pool.on_message("edgert/node/b/models", _catalogue("b", z="loading"))
    assert pool.on_message("edgert/node/me/models", _catalogue("me", mine="ready"))
    assert pool.serving("x") == []  # a is not online yet
    for node in ("a", "b", "me"):
        assert pool.on_message(f"edgert/node/{node}/status", b"online")
    assert pool.serving("x") == ["a"] and pool.serving("z") == ["b"]
    assert pool.serving("y") == [] and pool.serving("mine") == []  # failed; this node's own
    assert pool.served() == ["x", "z"]
    pool.on_message("edgert/node/a/status", b"offline")  # its Last Will
    assert pool.serving("x") == []
    pool.on_message("edgert/node/b/models", b"")  # a cleared catalogue
    assert pool.served() == []
    assert not pool.on_message("edgert/infer/x", b"{}")
    assert pool.on_message("edgert/node/b/models", b"{not json")  # read as serving nothing
    assert pool.served() == []
