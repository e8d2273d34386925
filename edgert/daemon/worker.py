"""One model's serving worker: the scheduler, runner and answers stages composed (DESIGN.md,
"Serving core"), behind the surface the request path and the model lifecycle use.

A request goes one way: :class:`~edgert.daemon.scheduler.Scheduler` (queue, batches, where it
runs) → :class:`~edgert.daemon.runner.Runner` (the instances' threads, or the caller's) →
:class:`~edgert.daemon.answers.Answers` (post-processing, reply, ledger, stats, events) → the
publish function. Only this facade knows all three.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from edgert.daemon.answers import Answers, EventsFn, PublishFn
from edgert.daemon.batcher import BatchPlan
from edgert.daemon.ledger import RequestLedger
from edgert.daemon.runner import Runner
from edgert.daemon.scheduler import Batch, Grouping, InlinePolicy, Job, Route, Scheduler
from edgert.daemon.stats import ModelStats
from edgert.daemon.streams import StreamStates
from edgert.pipeline import Postprocess
from edgert.runtime import LoadedModel

__all__ = ["Job", "ModelWorker", "PublishFn"]


class ModelWorker:
    """One model's bounded queue, batched by a :class:`BatchPlan`, and one inference thread per
    instance (each instance a runner of its own: one inference at a time per instance); a fast
    model's requests run on the offering thread as ``inline`` (an :class:`InlinePolicy`)
    says."""

    def __init__(
        self,
        loaded: LoadedModel,
        ledger: RequestLedger,
        publish: PublishFn,
        stats: ModelStats,
        queue_size: int,
        *,
        plan: BatchPlan | None = None,
        max_queue_delay_us: int = 0,
        extra_instances: Sequence[LoadedModel] = (),
        events: EventsFn | None = None,
        streams: StreamStates | None = None,
        post: Postprocess | None = None,
        stream_rows: int = 1,
        inline: InlinePolicy | None = None,
        max_reply: int | None = None,
    ) -> None:
        self.loaded = loaded
        self.instances = (loaded, *extra_instances)
        self.name = loaded.config.name
        self.version = loaded.config.version
        self.plan = plan or BatchPlan.for_model(loaded.io, loaded.constants, 1)
        self.delay = max_queue_delay_us / 1e6
        self.streams = streams  # state per stream id, for stateful models
        self.stream_rows = stream_rows  # rows one run of a stateful model may take
        self.post = post  # model.toml [postprocess]: outputs to a small result
        self.stats = stats
        grouping = (
            Grouping.streams(stream_rows)
            if streams is not None
            else Grouping.batches(self.plan, self.delay)
        )
        self._scheduler = Scheduler(
            grouping, queue_size, instances=len(self.instances), policy=inline
        )
        self.backend = loaded.artifact.manifest.key.backend  # named in every ok reply
        answers = Answers(
            self.name,
            self.version,
            ledger,
            publish,
            stats,
            post=post,
            events=events,
            backend=self.backend,
            max_reply=max_reply,
        )
        self._runner = Runner(
            self.instances, self.plan, answers, stats, streams=streams, name=self.name
        )

    def start(self) -> None:
        self._runner.start(self._scheduler.take, self._scheduler.done)

    def offer(self, job: Job, *, defer: bool = False) -> bool:
        """Run ``job`` on the caller's (network) thread where the inline policy says a hand-off
        would cost more than the inference and the first instance is idle; else queue it. False
        when the queue is full (answer ``busy``).

        ``defer`` (the network thread, reading a burst of messages): a fast model's request is
        kept, to run with the others of the burst as one batch at :meth:`flush`.
        """
        route = self._scheduler.route(self._runner.recent_s, defer=defer)
        if route is Route.KEEP:
            while (earlier := self._scheduler.keep(job)) is not None:
                self._runner.run(earlier)  # what was kept cannot take this one: run it first
            return True
        if route is Route.INLINE and self._runner.try_run(Batch((job,), 0)):
            return True
        return self._scheduler.submit(job)

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers ``busy``)."""
        return self._scheduler.submit(job)

    @property
    def depth(self) -> int:
        return self._scheduler.depth

    def flush(self) -> None:
        """Run the requests :meth:`offer` kept back, as one batch."""
        batch = self._scheduler.flush()
        if batch is not None:
            self._runner.run(batch)

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued (or kept back) has been answered; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._scheduler.settled:
                return True
            time.sleep(0.01)
        return self._scheduler.settled

    def stop(self) -> None:
        self._scheduler.stop()
        self._runner.join(timeout=10)
        for instance in self.instances:
            instance.close()
