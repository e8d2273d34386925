"""The event loop thread: calls from other threads run on it in order, one wake-up for many."""

from __future__ import annotations

import asyncio
import threading

from edgert.transport.loop import EventLoopThread


def test_calls_from_other_threads_run_on_the_loop_in_order() -> None:
    loop = EventLoopThread("test-loop")
    loop.start()
    try:
        seen: list[tuple[int, int | None]] = []
        done = threading.Event()
        for n in range(100):
            loop.call(lambda n=n: seen.append((n, threading.get_ident())))
        loop.call(done.set)
        assert done.wait(5)
        assert [n for n, _ in seen] == list(range(100))
        assert {ident for _, ident in seen} == {loop.run(_ident(), 5)}
    finally:
        loop.stop()


async def _ident() -> int:
    await asyncio.sleep(0)
    return threading.get_ident()


def test_before_start_a_call_runs_at_once_and_after_stop_it_is_dropped() -> None:
    loop = EventLoopThread("test-loop")
    seen: list[int] = []
    loop.call(seen.append, 1)
    assert seen == [1]
    loop.start()
    loop.stop()
    loop.call(seen.append, 2)
    assert seen == [1] and not loop.running


def test_a_failing_call_does_not_lose_the_others() -> None:
    loop = EventLoopThread("test-loop")
    loop.start()
    try:
        seen: list[int] = []
        done = threading.Event()
        loop.call(seen.append, 1)
        loop.call(lambda: 1 / 0)
        loop.call(seen.append, 2)
        loop.call(done.set)
        assert done.wait(5) and seen == [1, 2]
    finally:
        loop.stop()
