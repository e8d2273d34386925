"""Dynamic batching: grouping, order, splitting, flush on the delay, busy and expired.

No timing assertions: batches are made deterministic by queueing requests before the worker
starts, and the flush test only bounds how long a partial batch may wait.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from edgert import ModelDir, compile_model, open_model
from edgert.codec import PayloadError
from edgert.config import ModelConfig
from edgert.daemon.batcher import BatchPlan, BatchSettings
from edgert.daemon.ledger import RequestLedger, Waiter
from edgert.daemon.stats import ModelStats
from edgert.daemon.worker import Job, ModelWorker
from edgert.errors import ConfigError, EdgertError, InferenceError, InputError, ModelError
from edgert.protocol import ErrorCode, ProtocolError, error_code
from edgert.runtime import LoadedModel


class Replies:
    """What the worker published, by reply topic."""

    def __init__(self) -> None:
        self.by_topic: dict[str, bytes] = {}
        self.changed = threading.Condition()

    def publish(self, waiter: Waiter, reply: bytes, outcome: object = None) -> None:
        with self.changed:
            self.by_topic[waiter.topic] = reply
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.by_topic) >= count, timeout), (
                f"{len(self.by_topic)} of {count} replies"
            )


def _job(n: int, feeds: dict[str, np.ndarray], deadline: float | None = None) -> Job:
    waiter = Waiter(f"r/{n}", None, 0)
    return Job(f"id{n}", (waiter.topic, f"id{n}"), waiter, feeds, time.monotonic(), deadline, False)


def _worker(
    loaded: LoadedModel,
    replies: Replies,
    max_batch: int,
    queue_size: int = 256,
    delay_us: int = 0,
    extra: Sequence[LoadedModel] = (),
) -> ModelWorker:
    plan = BatchPlan.for_model(loaded.io, loaded.constants, max_batch)
    return ModelWorker(
        loaded,
        RequestLedger(),
        replies.publish,
        ModelStats(),
        queue_size,
        plan=plan,
        max_queue_delay_us=delay_us,
        extra_instances=extra,
    )


@pytest.fixture
def occupancy(compiled_repository: Path) -> LoadedModel:
    return open_model(ModelDir(compiled_repository / "occupancy"))


def _outputs(reply: bytes) -> np.ndarray:
    doc = json.loads(reply)
    assert doc["ok"], doc
    return np.asarray(doc["outputs"]["probabilities"], np.float32)


def test_64_requests_max_batch_8_make_8_backend_calls_and_each_gets_its_own(
    occupancy: LoadedModel,
) -> None:
    rng = np.random.default_rng(0)
    feeds = [{"readings": rng.uniform(0, 1000, (1, 4)).astype(np.float32)} for _ in range(64)]
    alone = [occupancy.infer(f)["probabilities"] for f in feeds]
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=8)
    for n, f in enumerate(feeds):
        assert worker.submit(_job(n, f))
    calls = occupancy.runner.infer_count
    worker.start()
    replies.wait_for(64)
    assert occupancy.runner.infer_count - calls <= 10  # 8 when all 64 were queued first
    for n, expected in enumerate(alone):
        np.testing.assert_allclose(_outputs(replies.by_topic[f"r/{n}"]), expected, rtol=1e-6)
    assert worker.stats.snapshot(0)["mean_batch"] >= 6.4
    worker.stop()


def test_requests_with_several_rows_are_split_back_in_order(occupancy: LoadedModel) -> None:
    rng = np.random.default_rng(1)
    sizes = [1, 3, 2, 5, 1, 4]  # 16 rows; max batch 8: never more than 8 rows per run
    feeds = [{"readings": rng.uniform(0, 1000, (k, 4)).astype(np.float32)} for k in sizes]
    alone = [occupancy.infer(f)["probabilities"] for f in feeds]
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=8)
    for n, f in enumerate(feeds):
        worker.submit(_job(n, f))
    calls = occupancy.runner.infer_count
    worker.start()
    replies.wait_for(len(feeds))
    assert occupancy.runner.infer_count - calls < len(feeds)
    for n, expected in enumerate(alone):
        got = _outputs(replies.by_topic[f"r/{n}"])
        assert got.shape == (sizes[n], 2)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    worker.stop()


def test_a_burst_read_on_the_network_thread_runs_as_batches_of_max_batch(
    occupancy: LoadedModel,
) -> None:
    """A fast model's requests that arrive in one read burst are kept (offer with defer) and run
    at flush, max_batch rows a run, each caller getting its own rows."""
    rng = np.random.default_rng(2)
    sizes = [1] * 10 + [3, 2]  # 15 rows: max batch 8 makes runs of 8 and 7 rows
    feeds = [{"readings": rng.uniform(0, 1000, (k, 4)).astype(np.float32)} for k in sizes]
    alone = [occupancy.infer(f)["probabilities"] for f in feeds]
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=8)
    worker.start()
    assert worker.offer(_job(99, feeds[0]))  # a first run: the worker learns the model is fast
    replies.wait_for(1)
    assert worker.drain(1)
    calls = occupancy.runner.infer_count
    for n, f in enumerate(feeds):
        assert worker.offer(_job(n, f), defer=True)
    assert occupancy.runner.infer_count - calls == 1  # the first 8 rows, when the 9th came
    assert not worker.drain(0.05)  # the rest is kept back until flush
    worker.flush()
    assert worker.drain(1)
    assert occupancy.runner.infer_count - calls == 2
    replies.wait_for(len(feeds) + 1)
    for n, expected in enumerate(alone):
        np.testing.assert_allclose(_outputs(replies.by_topic[f"r/{n}"]), expected, rtol=1e-6)
    worker.stop()


def test_a_partial_batch_flushes_on_the_delay(occupancy: LoadedModel) -> None:
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=8, delay_us=20_000)
    worker.start()
    for n in range(3):  # never a full batch of 8
        worker.submit(_job(n, {"readings": np.full((1, 4), n, np.float32)}))
    replies.wait_for(3, timeout=5)
    worker.stop()


def test_full_queue_is_busy_and_expired_jobs_never_run(occupancy: LoadedModel) -> None:
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=8, queue_size=2)
    reading = {"readings": np.ones((1, 4), np.float32)}
    assert worker.submit(_job(0, reading, deadline=time.monotonic() - 1))
    assert worker.submit(_job(1, reading))
    assert not worker.submit(_job(2, reading))  # full: the service answers busy
    calls = occupancy.runner.infer_count
    worker.start()
    replies.wait_for(2)
    assert b'"code":"expired"' in replies.by_topic["r/0"]
    assert _outputs(replies.by_topic["r/1"]).shape == (1, 2)
    assert occupancy.runner.infer_count - calls == 1
    worker.stop()


def test_a_bad_request_does_not_spoil_its_batch(occupancy: LoadedModel) -> None:
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=8)
    good = {"readings": np.ones((1, 4), np.float32)}
    worker.submit(_job(0, good))
    worker.submit(_job(1, {"readings": np.ones((1, 4), np.float32)[:, :3]}))  # wrong width
    worker.submit(_job(2, good))
    worker.start()
    replies.wait_for(3)
    assert b'"ok":true' in replies.by_topic["r/0"] and b'"ok":true' in replies.by_topic["r/2"]
    assert b'"ok":false' in replies.by_topic["r/1"]
    worker.stop()


@pytest.mark.parametrize(
    "error",
    [
        InputError("rows do not fit"),
        InferenceError("ONNX Runtime inference failed"),
        PayloadError("too_large", "too many elements"),
        ProtocolError(ErrorCode.BUSY, "no room"),
        ModelError("broken"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_failed_run_is_answered_with_the_code_error_code_gives(
    occupancy: LoadedModel, monkeypatch: pytest.MonkeyPatch, error: EdgertError
) -> None:
    """The worker has no error mapping of its own: a run's error is answered with
    replies.error_code's code for it."""

    def failing(feeds: object, *, check: bool = True) -> dict[str, np.ndarray]:
        raise error

    monkeypatch.setattr(occupancy, "infer", failing)
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=8)
    worker.submit(_job(0, {"readings": np.ones((1, 4), np.float32)}))
    worker.start()
    replies.wait_for(1)
    reply = json.loads(replies.by_topic["r/0"])
    assert reply["error"] == {"code": error_code(error).value, "message": error.message}
    assert worker.stats.snapshot(0)["errors"] == {error_code(error).value: 1}
    worker.stop()


def test_plan_batches_only_on_a_shared_leading_dynamic_dim(
    corpus: Callable[[str], Path],
) -> None:
    fixed = open_model_of(corpus, "fixed_mlp")
    assert BatchPlan.for_model(fixed.io, fixed.constants).max_batch == 1
    seq = open_model_of(corpus, "int64_io")  # [batch, seq] → [batch, 8] and [batch]
    plan = BatchPlan.for_model(seq.io, seq.constants)
    assert plan.max_batch == 32 and BatchPlan.for_model(seq.io, seq.constants, 4).max_batch == 4
    a = {"ids": np.zeros((2, 5), np.int64)}
    assert plan.fits(a, {"ids": np.zeros((1, 5), np.int64)})
    assert not plan.fits(a, {"ids": np.zeros((1, 6), np.int64)})  # another seq: not stackable
    constant = open_model_of(corpus, "constant_input")  # fixed [1, 4]
    assert BatchPlan.for_model(constant.io, constant.constants).max_batch == 1


def open_model_of(corpus: Callable[[str], Path], name: str) -> LoadedModel:
    model = ModelDir(corpus(name).parent)
    compile_model(model)
    return open_model(model)


def test_batching_settings_are_checked() -> None:
    ok = ModelConfig.from_dict(
        {"batching": {"max_batch": 8, "max_queue_delay_us": 500, "instances": 2}},
        default_name="m",
    )
    assert BatchSettings.of(ok) == BatchSettings(8, 500, 2)
    assert BatchSettings.of(ok).threads_per_instance(cores=8) == 4  # the cores, split
    assert BatchSettings(instances=1).threads_per_instance(cores=8) == 0  # runtime default
    assert BatchSettings(instances=3, threads=1).threads_per_instance(cores=8) == 1
    assert BatchSettings.of(ModelConfig.from_dict({}, default_name="m")) == BatchSettings()
    for bad in ({"max_batch": 0}, {"instances": "2"}, {"max_delay": 1}, {"threads": -1}):
        with pytest.raises(ConfigError, match=r"\[batching\]"):
            BatchSettings.of(ModelConfig.from_dict({"batching": bad}, default_name="m"))


def test_two_instances_serve_in_parallel_and_agree(
    occupancy: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each instance is a runner of its own; every request still gets its own outputs."""
    second = open_model(occupancy.model, threads=1)
    rng = np.random.default_rng(2)
    feeds = [{"readings": rng.uniform(0, 1000, (1, 4)).astype(np.float32)} for _ in range(40)]
    alone = [occupancy.infer(f)["probabilities"] for f in feeds]
    replies = Replies()
    worker = _worker(occupancy, replies, max_batch=4, queue_size=64, extra=[second])
    for n, f in enumerate(feeds):
        worker.submit(_job(n, f))
    release = threading.Event()
    infer = occupancy.infer

    def held(feeds: Mapping[str, np.ndarray], *, check: bool = True) -> dict[str, np.ndarray]:
        assert release.wait(10)
        return infer(feeds, check=check)

    monkeypatch.setattr(occupancy, "infer", held)  # instance 0 busy: it waits holding a batch
    worker.start()
    replies.wait_for(len(feeds) - 4)  # instance 1 serves all the others meanwhile
    release.set()
    replies.wait_for(len(feeds))
    assert second.runner.infer_count > 0  # it served while instance 0 was busy
    for n, expected in enumerate(alone):
        np.testing.assert_allclose(_outputs(replies.by_topic[f"r/{n}"]), expected, rtol=1e-6)
    worker.stop()
