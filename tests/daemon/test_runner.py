"""The runner stage without a broker: real models (occupancy, silero VAD) run batches handed to
it, and each request's result is collected as the replies stage would get it."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from edgert import ModelDir, open_model
from edgert.daemon.batcher import BatchPlan
from edgert.daemon.ledger import Waiter
from edgert.daemon.runner import Failure, Outputs, Result, Runner
from edgert.daemon.scheduler import Batch, Job
from edgert.daemon.stats import ModelStats
from edgert.daemon.streams import StreamPlan, StreamStates
from edgert.errors import InferenceError, InputError
from edgert.protocol import ErrorCode, error_code
from edgert.runtime import LoadedModel

Feeds = Mapping[str, np.ndarray]


class Collected:
    """The results the runner handed on, in order."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.lock = threading.Lock()

    def __call__(self, result: Result) -> None:
        with self.lock:
            self.results.append(result)

    def by_id(self) -> dict[str | int | None, Result]:
        return {r.job.id: r for r in self.results}


def _job(name: str, feeds: Feeds, deadline: float | None = None, stream: str | None = None) -> Job:
    waiter = Waiter(f"r/{name}", None, 0)
    return Job(name, None, waiter, feeds, time.monotonic(), deadline, False, stream)


def _readings(seed: int, rows: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"readings": rng.uniform(0, 1000, (rows, 4)).astype(np.float32)}


@pytest.fixture
def occupancy(compiled_repository: Path) -> Iterator[LoadedModel]:
    loaded = open_model(ModelDir(compiled_repository / "occupancy"))
    yield loaded
    loaded.close()


def _runner(
    loaded: LoadedModel, collected: Collected, *extra: LoadedModel, stats: ModelStats | None = None
) -> Runner:
    plan = BatchPlan.for_model(loaded.io, loaded.constants, 8)
    return Runner((loaded, *extra), plan, collected, stats or ModelStats(), name="occupancy")


def test_a_batch_runs_once_and_each_request_gets_its_own_rows_in_order(
    occupancy: LoadedModel,
) -> None:
    feeds = [_readings(n, rows) for n, rows in enumerate((1, 3, 2))]
    alone = [occupancy.infer(f)["probabilities"] for f in feeds]
    collected, stats = Collected(), ModelStats()
    runner = _runner(occupancy, collected, stats=stats)
    calls = occupancy.runner.infer_count
    runner.run(Batch(tuple(_job(f"j{n}", f) for n, f in enumerate(feeds))))
    assert occupancy.runner.infer_count - calls == 1
    assert [r.job.id for r in collected.results] == ["j0", "j1", "j2"]
    for result, expected in zip(collected.results, alone, strict=True):
        assert isinstance(result, Outputs) and result.start <= result.done
        np.testing.assert_allclose(result.outputs["probabilities"], expected, rtol=1e-6)
    snapshot = stats.snapshot(0)
    assert (snapshot["inferences"], snapshot["mean_batch"]) == (1, 3.0)


def test_requests_past_their_deadline_are_expired_unrun(occupancy: LoadedModel) -> None:
    collected = Collected()
    runner = _runner(occupancy, collected)
    past = time.monotonic() - 1
    calls = occupancy.runner.infer_count
    runner.run(Batch((_job("late", _readings(0), past),)))
    assert occupancy.runner.infer_count == calls  # nothing ran
    runner.run(Batch((_job("old", _readings(1), past), _job("live", _readings(2), past + 60))))
    assert occupancy.runner.infer_count - calls == 1
    late, old, live = collected.results
    assert late == Failure(late.job, ErrorCode.EXPIRED, "deadline passed in queue")
    assert isinstance(old, Failure) and old.code is ErrorCode.EXPIRED
    assert isinstance(live, Outputs) and live.job.id == "live"


def test_a_failing_batch_is_run_one_by_one_to_find_the_bad_request(
    occupancy: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    infer = occupancy.infer

    def picky(feeds: Feeds, *, check: bool = True) -> dict[str, np.ndarray]:
        if np.isnan(feeds["readings"]).any():
            raise InputError("readings hold NaN")
        return infer(feeds, check=check)

    monkeypatch.setattr(occupancy, "infer", picky)
    bad = {"readings": np.full((1, 4), np.nan, np.float32)}
    collected, stats = Collected(), ModelStats()
    runner = _runner(occupancy, collected, stats=stats)
    runner.run(Batch((_job("a", _readings(0)), _job("bad", bad), _job("b", _readings(1)))))
    results = collected.by_id()
    assert isinstance(results["a"], Outputs) and isinstance(results["b"], Outputs)
    assert results["bad"] == Failure(results["bad"].job, ErrorCode.BAD_INPUT, "readings hold NaN")
    assert [r.job.id for r in collected.results] == ["a", "bad", "b"]  # still in order
    assert stats.snapshot(0)["inferences"] == 2  # the two good runs, alone


def test_a_failed_run_carries_the_code_error_code_gives(
    occupancy: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = InferenceError("ONNX Runtime inference failed")

    def failing(feeds: Feeds, *, check: bool = True) -> dict[str, np.ndarray]:
        raise error

    monkeypatch.setattr(occupancy, "infer", failing)
    collected = Collected()
    runner = _runner(occupancy, collected)
    runner.run(Batch((_job("j", _readings(0)),)))
    (result,) = collected.results
    assert result == Failure(result.job, error_code(error), error.message)
    assert runner.recent_s is None  # a failed run says nothing of how long runs take


def test_recent_run_time_is_a_moving_average_of_successful_runs(
    occupancy: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figure the inline policy weighs: the last run counts a fifth."""
    clock = [100.0]
    monkeypatch.setattr(
        "edgert.daemon.runner.time", types.SimpleNamespace(monotonic=lambda: clock[0])
    )
    infer = occupancy.infer
    took = iter([0.010, 0.020])

    def timed(feeds: Feeds, *, check: bool = True) -> dict[str, np.ndarray]:
        clock[0] += next(took)
        return infer(feeds, check=check)

    monkeypatch.setattr(occupancy, "infer", timed)
    runner = _runner(occupancy, Collected())
    assert runner.recent_s is None
    runner.run(Batch((_job("a", _readings(0)),)))
    assert runner.recent_s == pytest.approx(0.010)
    runner.run(Batch((_job("b", _readings(1)),)))
    assert runner.recent_s == pytest.approx(0.8 * 0.010 + 0.2 * 0.020)


def test_try_run_runs_only_on_an_idle_instance(
    occupancy: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    infer = occupancy.infer

    def held(feeds: Feeds, *, check: bool = True) -> dict[str, np.ndarray]:
        entered.set()
        assert release.wait(10)
        return infer(feeds, check=check)

    monkeypatch.setattr(occupancy, "infer", held)
    collected = Collected()
    runner = _runner(occupancy, collected)
    busy = threading.Thread(target=runner.run, args=(Batch((_job("first", _readings(0)),)),))
    busy.start()
    assert entered.wait(10)
    assert not runner.try_run(Batch((_job("second", _readings(1)),)))  # nothing ran
    release.set()
    busy.join(10)
    assert runner.try_run(Batch((_job("third", _readings(2)),)))
    assert [r.job.id for r in collected.results] == ["first", "third"]


def test_each_instance_has_a_thread_taking_batches_until_told_to_stop(
    occupancy: LoadedModel,
) -> None:
    second = open_model(occupancy.model, threads=1)
    collected = Collected()
    runner = _runner(occupancy, collected, second)
    batches = {0: [Batch((_job("a", _readings(0)),), 0)], 1: [Batch((_job("b", _readings(1)),), 1)]}
    answered_first: list[bool] = []

    def take(index: int) -> Batch | None:
        return batches[index].pop() if batches[index] else None

    def done(batch: Batch) -> None:  # told only once the batch's results were handed on
        answered_first.append(batch.jobs[0].id in collected.by_id())

    calls = second.runner.infer_count
    runner.start(take, done)
    runner.join(10)
    assert sorted(collected.by_id()) == ["a", "b"] and answered_first == [True, True]
    assert second.runner.infer_count - calls == 1  # instance 1 ran its own batch
    second.close()


def test_streams_run_together_with_their_state_carried_and_kept_out_of_replies(
    compiled_repository: Path,
) -> None:
    """Two streams' chunks run as one batch each time give what each stream gets run alone,
    and the carried state (an internal output) is not among the outputs handed on."""
    loaded = open_model(ModelDir(compiled_repository / "silero_vad"))
    plan = StreamPlan.of(loaded.config, loaded.io)
    rng = np.random.default_rng(0)
    chunks = {s: rng.uniform(-0.5, 0.5, (3, 1, 512)).astype(np.float32) for s in "ab"}

    def run(batches: list[tuple[Job, ...]]) -> Collected:
        collected = Collected()
        bplan = BatchPlan.for_model(loaded.io, loaded.constants, 1)
        runner = Runner(
            (loaded,), bplan, collected, ModelStats(), streams=StreamStates(plan, loaded.io)
        )
        for jobs in batches:
            runner.run(Batch(jobs))
        return collected

    def job(s: str, i: int, stream: bool = True) -> Job:
        return _job(f"{s}{i}", {"input": chunks[s][i]}, stream=s if stream else None)

    together = run([(job("a", i), job("b", i)) for i in range(3)])
    alone = run([(job(s, i),) for s in "ab" for i in range(3)])
    stateless = run([(job(s, i, stream=False),) for s in "ab" for i in range(3)])
    assert len(together.results) == 6
    for name, result in together.by_id().items():
        reference = alone.by_id()[name]
        assert isinstance(result, Outputs) and isinstance(reference, Outputs)
        assert set(result.outputs) == {"output"}  # stateN only feeds the next chunk
        np.testing.assert_allclose(result.outputs["output"], reference.outputs["output"], atol=1e-5)
    # Without a stream each chunk starts from the initial state: the state above mattered.
    fresh = stateless.by_id()["a2"]
    assert isinstance(fresh, Outputs)
    assert not np.allclose(fresh.outputs["output"], alone.by_id()["a2"].outputs["output"])
    loaded.close()
