"""The ingress's dynamic batching (rsir.serve.batching.Batcher), without Ray."""

from __future__ import annotations

import asyncio

import pytest

from rsir.serve.batching import Batcher


def _recording(calls: list[list[int]], seconds: float = 0.05):
    async def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        await asyncio.sleep(seconds)
        return [10 * x for x in items]
    return fn


def test_a_batch_is_what_queued_while_the_worker_was_busy():
    calls: list[list[int]] = []
    b = Batcher(_recording(calls), max_batch_size=4, workers=1)

    async def run():
        first = asyncio.create_task(b(0))
        await asyncio.sleep(0.01)  # the worker is busy with [0]; 9 more arrive meanwhile
        return await first, await asyncio.gather(*(b(i) for i in range(1, 10)))

    first, rest = asyncio.run(run())
    assert first == 0 and rest == [10 * i for i in range(1, 10)]
    assert calls == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert (b.batches, b.items) == (4, 10)


def test_batch_size_one_runs_each_request_alone_two_at_a_time():
    running, peak = 0, 0

    async def fn(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return items

    b = Batcher(fn, max_batch_size=1)

    async def run():
        return await asyncio.gather(*(b(i) for i in range(6)))

    assert asyncio.run(run()) == [0, 1, 2, 3, 4, 5]
    assert (b.batches, b.items, peak) == (6, 6, 2)


def test_an_error_reaches_every_request_of_its_batch_only():
    async def fn(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("bad batch")
        return items

    b = Batcher(fn, max_batch_size=8, workers=1)

    async def run():
        failed = await asyncio.gather(b("bad"), b("x"), return_exceptions=True)
        return failed, await b("ok")

    failed, ok = asyncio.run(run())
    assert [type(e) for e in failed] == [ValueError, ValueError] and ok == "ok"
    assert (b.batches, b.items) == (2, 3)


def test_a_cancelled_request_leaves_its_batch():
    calls: list[list[int]] = []
    b = Batcher(_recording(calls), max_batch_size=8, workers=1)

    async def run():
        first = asyncio.create_task(b(0))
        await asyncio.sleep(0.01)
        gone, kept = asyncio.create_task(b(1)), asyncio.create_task(b(2))
        await asyncio.sleep(0)  # both queued behind [0]
        gone.cancel()
        return await first, await kept

    assert asyncio.run(run()) == (0, 20)
    assert calls == [[0], [2]]


def test_rejects_empty_batches():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(_recording([]), max_batch_size=0)
