"""A bounded, ordered background worker: overlap one step of a DoFn with the rest of its work.

``OrderedWorker`` runs calls on a background thread (or ``threads`` of them: calls then run side by
side, the oldest first). ``submit`` queues a call and hands back the
results of earlier calls that had to finish to keep at most ``limit`` calls unreturned, oldest
first; ``drain`` waits for and hands back the rest. Results come back in submission order, each
exactly once, and an exception raised by a call is raised again, in the caller's thread, by the
``submit`` or ``drain`` that would have returned its result (so a DoFn using it fails its bundle as
if it had made the call itself; the calls after it are cancelled or waited for, never returned).

Memory stays bounded: at most ``limit`` calls' arguments and results are held besides what the
caller holds. The worker is meant for calls that release the GIL for most of their time (DuckDB
queries, Arrow compute, IPC or Parquet writes): Python-heavy calls gain nothing from it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class OrderedWorker:
    def __init__(self, limit: int = 1, name: str = "ordered-worker", threads: int = 1):
        if limit < 1 or threads < 1:
            raise ValueError("limit and threads must be >= 1")
        self.limit = limit
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._unreturned: deque[tuple[Any, Future]] = deque()

    def __len__(self) -> int:
        """Calls submitted and not yet returned."""
        return len(self._unreturned)

    def submit(self, tag: Any, fn: Callable[..., Any], *args: Any) -> list[tuple[Any, Any]]:
        """Queue ``fn(*args)``; return ``(tag, result)`` of the oldest calls while more than ``limit`` are unreturned."""
        self._unreturned.append((tag, self._executor.submit(fn, *args)))
        out = []
        while len(self._unreturned) > self.limit:
            out.append(self._pop())
        return out

    def drain(self) -> list[tuple[Any, Any]]:
        """Wait for every unreturned call; their ``(tag, result)`` in submission order."""
        out = []
        while self._unreturned:
            out.append(self._pop())
        return out

    def _pop(self) -> tuple[Any, Any]:
        tag, future = self._unreturned.popleft()
        try:
            result = future.result()
        except BaseException:
            self.discard()  # the later calls' results would follow a failed one: none is returned
            raise
        return tag, result

    def discard(self) -> None:
        """Forget every unreturned call: cancel those not started, wait for those running."""
        pending, self._unreturned = self._unreturned, deque()
        for _, future in pending:
            future.cancel()
        for tag, future in pending:
            # waits for it; its outcome belongs to a bundle that has already failed or been abandoned
            if not future.cancelled() and (error := future.exception()) is not None:
                log.warning("a discarded background call (%r) failed too: %r", tag, error)

    def close(self) -> None:
        self.discard()
        self._executor.shutdown(wait=True)
