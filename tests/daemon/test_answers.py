"""The replies stage's model side without a broker or a model: results in, encoded replies out to
every waiter, the ledger's cache, the stats and the events hook."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgert.daemon.answers import Answers
from edgert.daemon.counts import Outcome
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.runner import Failure, Outputs
from edgert.daemon.scheduler import Job
from edgert.daemon.stats import ModelStats
from edgert.pipeline import Postprocess
from edgert.protocol import ErrorCode

PROBABILITIES = {"probabilities": np.array([[0.2, 0.8]], np.float32)}
OCCUPIED = Postprocess(
    "probabilities", "threshold", at=0.5, on_index=1, labels=("empty", "occupied")
)


class Stage:
    """An :class:`Answers` with what it publishes and shows the events hook recorded."""

    def __init__(self, post: Postprocess | None = None, max_reply: int | None = None) -> None:
        self.ledger, self.stats = RequestLedger(), ModelStats()
        self.published: list[tuple[Waiter, bytes]] = []
        self.outcomes: list[Outcome] = []  # what each published reply says, for /metrics
        self.events: list[tuple[bytes, str | None, Any]] = []
        self.answers = Answers(
            "occupancy",
            "3",
            self.ledger,
            self.publish,
            self.stats,
            post=post,
            events=lambda reply, stream, result: self.events.append((reply, stream, result)),
            backend="onnxruntime",
            max_reply=max_reply,
        )

    def publish(self, waiter: Waiter, reply: bytes, outcome: Outcome) -> None:
        self.published.append((waiter, reply))
        self.outcomes.append(outcome)

    def job(self, name: str, *, stream: str | None = None, compact: bool = False) -> Job:
        """A request begun in the ledger, as the request path does before queueing it."""
        waiter = Waiter(f"r/{name}", None, 1)
        key = (waiter.topic, name)
        assert self.ledger.begin(key, waiter).run
        return Job(name, key, waiter, {}, 10.0, None, compact, stream)


def test_outputs_are_answered_with_latency_the_summary_and_the_events_hook() -> None:
    stage = Stage(post=OCCUPIED)
    job = stage.job("a", stream="kitchen")
    stage.answers(Outputs(job, PROBABILITIES, start=10.25, done=10.5))
    ((waiter, reply),) = stage.published
    assert waiter == job.waiter
    doc = json.loads(reply)
    assert doc["ok"] and doc["id"] == "a" and (doc["model"], doc["version"]) == ("occupancy", "3")
    assert doc["backend"] == "onnxruntime"
    np.testing.assert_allclose(doc["outputs"]["probabilities"], [[0.2, 0.8]], rtol=1e-6)
    assert doc["latency_ms"] == {"queue": 250.0, "infer": 250.0, "total": 500.0}
    assert doc["result"] == OCCUPIED.apply(PROBABILITIES)
    assert stage.events == [(reply, "kitchen", doc["result"])]
    snapshot = stage.stats.snapshot(0)
    assert snapshot["ok"] == 1 and snapshot["latency_ms"]["p50"] == 500.0
    assert stage.ledger.begin(job.key, job.waiter).cached == reply  # a repeat gets the same


def test_a_reply_whose_outputs_pass_the_limit_goes_compact_when_it_has_a_result() -> None:
    """A camera on MQTT 3.1.1 cannot ask for compact with its JPEG: a detector's raw head would
    make every reply too large to send, so the result goes alone (and to the events hook)."""
    big = {"probabilities": np.tile(np.array([[0.2, 0.8]], np.float32), (1, 500))}
    full = Stage(post=OCCUPIED)
    full.answers(Outputs(full.job("f"), big, 10.0, 10.1))
    size = len(full.published[0][1])
    assert "outputs" in json.loads(full.published[0][1])  # no limit: everything
    fits = Stage(post=OCCUPIED, max_reply=size)
    fits.answers(Outputs(fits.job("f"), big, 10.0, 10.1))
    assert fits.published[0][1] == full.published[0][1]  # at the limit: still everything
    over = Stage(post=OCCUPIED, max_reply=size - 1)
    over.answers(Outputs(over.job("f"), big, 10.0, 10.1))
    doc = json.loads(over.published[0][1])
    assert "outputs" not in doc and doc["ok"] and doc["result"] == OCCUPIED.apply(big)
    assert over.events[0][0] == over.published[0][1]
    bare = Stage(max_reply=size - 1)  # no result to fall back on: the replies stage says why
    bare.answers(Outputs(bare.job("f"), big, 10.0, 10.1))
    assert "outputs" in json.loads(bare.published[0][1])


def test_a_compact_reply_keeps_the_summary_and_drops_the_outputs() -> None:
    stage = Stage(post=OCCUPIED)
    stage.answers(Outputs(stage.job("c", compact=True), PROBABILITIES, 10.0, 10.1))
    doc = json.loads(stage.published[0][1])
    assert "outputs" not in doc and doc["result"] == OCCUPIED.apply(PROBABILITIES)


def test_every_waiter_that_joined_the_request_gets_the_reply() -> None:
    stage = Stage()
    job = stage.job("j")
    again = Waiter("r/other", b"corr", 0)
    assert not stage.ledger.begin(job.key, again).run  # a repeat in flight joins it
    stage.answers(Outputs(job, PROBABILITIES, 10.0, 10.1))
    assert [w for w, _ in stage.published] == [job.waiter, again]
    assert stage.outcomes == [Outcome("occupancy", "3")] * 2  # two replies counted
    assert stage.published[0][1] == stage.published[1][1]


def test_an_expired_request_is_answered_but_not_cached_so_a_retry_runs() -> None:
    stage = Stage()
    job = stage.job("late")
    stage.answers(Failure(job, ErrorCode.EXPIRED, "deadline passed in queue"))
    doc = json.loads(stage.published[0][1])
    assert doc["error"] == {"code": "expired", "message": "deadline passed in queue"}
    assert stage.outcomes == [Outcome("occupancy", "3", "expired")]
    assert stage.ledger.begin(job.key, job.waiter).run
    assert stage.stats.snapshot(0)["errors"] == {"expired": 1}
    assert stage.events == []  # the events topic carries results, not errors


def test_a_failed_run_is_answered_and_cached() -> None:
    stage = Stage()
    job = stage.job("bad")
    stage.answers(Failure(job, ErrorCode.BAD_INPUT, "readings hold NaN"))
    reply = stage.published[0][1]
    assert json.loads(reply)["error"]["code"] == "bad_input"
    assert stage.ledger.begin(job.key, job.waiter).cached == reply  # the same request fails alike
    assert stage.stats.snapshot(0)["errors"] == {"bad_input": 1}


def test_post_processing_that_fails_is_the_models_fault_internal() -> None:
    stage = Stage(post=Postprocess("scores", "threshold"))  # an output the model lacks
    stage.answers(Outputs(stage.job("p"), PROBABILITIES, 10.0, 10.1))
    error = json.loads(stage.published[0][1])["error"]
    assert error["code"] == "internal" and error["message"].startswith("post-processing: ")
    assert "scores" in error["message"]
    assert stage.stats.snapshot(0)["errors"] == {"internal": 1} and stage.events == []
