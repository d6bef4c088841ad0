"""Work the web handlers hand off so they can answer within Label Studio's 1 s webhook timeout.

Tasks are keyed: submitting a key that is already waiting does nothing (a burst of 100 labels causes one refit,
not 100), and a key submitted while it runs runs once more afterwards, after its delay (a periodic task that submits
itself for later waits that long), so the last request is never lost. Periodic chores (``every``) do not count
as work in progress: the service is idle when no one-off task is waiting or running.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Background:
    def __init__(self, threads: int = 2, name: str = "background"):
        self._cond = threading.Condition()
        self._queue: list[tuple[float, int, str]] = []
        self._pending: dict[str, Callable[[], object]] = {}
        self._running: set[str] = set()
        self._rerun: dict[str, tuple[Callable[[], object], float]] = {}
        self._periodic: set[str] = set()
        self._counter = 0
        self._stopped = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, fn: Callable[[], object], delay: float = 0.0) -> None:
        with self._cond:
            if self._stopped:
                return
            if key in self._running:
                self._rerun[key] = (fn, delay)
                return
            if key in self._pending:
                return
            self._pending[key] = fn
            self._counter += 1
            heapq.heappush(self._queue, (time.monotonic() + delay, self._counter, key))
            self._cond.notify()

    def every(self, key: str, fn: Callable[[], object], seconds: float) -> None:
        """Run `fn` every `seconds` (the first time after `seconds`), whether or not it failed the last time."""
        def chore():
            try:
                fn()
            finally:
                self.submit(key, chore, delay=seconds)

        with self._cond:
            self._periodic.add(key)
        self.submit(key, chore, delay=seconds)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._queue and self._queue[0][0] <= time.monotonic():
                        break
                    timeout = (self._queue[0][0] - time.monotonic()) if self._queue else None
                    self._cond.wait(timeout=None if timeout is None else max(timeout, 0.01))
                if self._stopped:
                    return
                _, _, key = heapq.heappop(self._queue)
                fn = self._pending.pop(key)
                self._running.add(key)
            try:
                fn()
            except Exception:
                log.exception("background task %s failed", key)
            finally:
                with self._cond:
                    self._running.discard(key)
                    again = self._rerun.pop(key, None)
                    self._cond.notify_all()
                if again is not None:
                    self.submit(key, *again)

    def _busy(self) -> bool:
        return any(key not in self._periodic for _, _, key in self._queue) or bool(self._running - self._periodic)

    def idle(self) -> bool:
        with self._cond:
            return not self._busy()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no one-off task is queued or running (tests and command-line tools); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(timeout=min(remaining, 0.1))
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
