"""Dynamic batching that closes a batch when a worker is free, not when a timer fires.

Ray Serve's ``@serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first
request whether or not the previous batch has finished; when the handler awaits (a
remote encoder, a matrix product in a thread) the loop keeps closing batches of about
rate x timeout requests that then queue behind each other (on bench/serve.py: mostly 1
or 2 requests with 16 in flight). Here a batch is everything that queued while the
workers were busy, up to ``max_batch_size``: batches grow with the load, and an idle
server adds no wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """``await batcher(item)`` -> ``fn``'s result for that item; ``fn`` maps a list of
    items to a list of results of the same length and order.

    ``workers`` batches run at once (2: one can wait on a remote encoder while another
    is scored). ``max_batch_size=1`` is the per-request baseline of the same code.
    """

    def __init__(self, fn: Callable[[list[T]], Awaitable[list[R]]], max_batch_size: int,
                 workers: int = 2) -> None:
        if max_batch_size < 1 or workers < 1:
            raise ValueError(f"max_batch_size and workers must be >= 1, got {max_batch_size}, {workers}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.workers = workers
        self.batches = self.items = 0  # totals: items / batches is the mean batch size
        self._queue: deque[tuple[T, asyncio.Future]] = deque()
        self._tasks: set[asyncio.Task] = set()  # asyncio keeps only weak references

    async def __call__(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if len(self._tasks) < self.workers:
            task = asyncio.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _work(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            batch = [(item, f) for item, f in batch if not f.cancelled()]  # client went away
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            try:
                results = await self.fn([item for item, _ in batch])
            except Exception as err:  # noqa: BLE001 - every request of the batch gets it
                for _, f in batch:
                    if not f.done():
                        f.set_exception(err)
                continue
            for (_, f), result in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(result)
