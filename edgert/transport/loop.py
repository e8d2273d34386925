"""The event loop that owns the daemon's network I/O, in a thread of its own, and the one way
other threads hand it work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["EventLoopThread", "new_event_loop"]

T = TypeVar("T")

log = logging.getLogger("edgert.mqtt")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it installs (its sockets and callbacks cost less CPU per message),
    else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EventLoopThread:
    """An event loop run by one thread. :meth:`call` runs a function on it from any thread:
    calls queued while the loop is busy are run together on one wake-up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._woken = False
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._stopped

    def in_loop(self) -> bool:
        return threading.get_ident() == self._ident

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=self.name, daemon=True
        )
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._ident = threading.get_ident()
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop: now, from the loop's own thread (or before the loop
        starts, when there is no other); else soon, in the order called. Dropped once stopped."""
        loop = self._loop
        if loop is None or self.in_loop():
            if not self._stopped:
                fn(*args)
            return
        with self._lock:
            if self._stopped:
                return
            self._calls.append((fn, args))
            wake, self._woken = not self._woken, True
        if wake:
            loop.call_soon_threadsafe(self._run_calls)

    def _run_calls(self) -> None:
        with self._lock:
            self._woken = False
            calls, self._calls = self._calls, deque()
        for fn, args in calls:
            try:
                fn(*args)
            except Exception:  # one failing call must not lose the others
                log.exception("a call on the %s loop failed", self.name)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """On the loop's thread: run ``fn`` after what is ready to run now."""
        assert self._loop is not None
        self._loop.call_soon(fn)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task of the loop, from any thread."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T | None:
        """Run ``coro`` on the loop and wait for it (at most ``timeout`` s; None then), after the
        calls queued before it. From the loop's own thread it is only started."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._after_calls(coro), self._loop)
        if self.in_loop():
            return None
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return None

    async def _after_calls(self, coro: Coroutine[Any, Any, T]) -> T:
        self._run_calls()
        return await coro

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (its tasks cancelled) and wait for its thread."""
        loop, thread = self._loop, self._thread
        with self._lock:
            self._stopped = True
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        if not self.in_loop():
            thread.join(timeout)
