"""The micro-batcher on its own: grouping, the queue bound, draining on stop, failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from genrec.errors import GenrecError
from genrec.serve.batcher import BatchSettings, MicroBatcher, Overloaded


class Recorder:
    """A batch function that doubles numbers, records batch sizes and can be made slow or failing."""

    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.delay, self.fail_on = delay, fail_on
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, items: list) -> list:
        self.threads.add(threading.current_thread().name)
        self.sizes.append(len(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on in items:
            raise ValueError("poisoned item")
        return [x * 2 for x in items]


async def _with(batcher: MicroBatcher, coro_fn):
    await batcher.start()
    try:
        return await coro_fn()
    finally:
        await batcher.stop()


def test_concurrent_requests_share_a_forward_pass():
    fn = Recorder(delay=0.01)
    b = MicroBatcher(fn, BatchSettings(max_batch_size=8, max_wait_ms=20, queue_size=64))

    async def go():
        return await asyncio.gather(*[b.submit(i) for i in range(20)])

    out = asyncio.run(_with(b, go))
    assert out == [2 * i for i in range(20)]
    assert max(fn.sizes) > 1 and all(s <= 8 for s in fn.sizes) and sum(fn.sizes) == 20
    assert b.stats()["max_batch_size_seen"] > 1 and b.stats()["batches"] == len(fn.sizes)
    assert fn.threads and not any(t == threading.main_thread().name for t in fn.threads)  # off the loop thread


def test_no_batching_serves_requests_alone():
    fn = Recorder()
    b = MicroBatcher(fn, BatchSettings(max_batch_size=8, enabled=False))
    out = asyncio.run(_with(b, lambda: asyncio.gather(*[b.submit(i) for i in range(10)])))
    assert out == [2 * i for i in range(10)] and set(fn.sizes) == {1}


def test_full_queue_answers_overloaded_at_once():
    fn = Recorder(delay=0.2)
    b = MicroBatcher(fn, BatchSettings(max_batch_size=1, max_wait_ms=0, queue_size=2))

    async def go():
        return await asyncio.gather(*[b.submit(i) for i in range(10)], return_exceptions=True)

    t0 = time.perf_counter()
    out = asyncio.run(_with(b, go))
    ok = [r for r in out if isinstance(r, int)]
    over = [r for r in out if isinstance(r, Overloaded)]
    assert len(ok) == 2 and len(over) == 8, out
    assert all(r.retry_after >= 1 and "overloaded" in str(r) for r in over)
    assert b.rejected == 8 and time.perf_counter() - t0 < 2


def test_stop_drains_queued_and_running_requests():
    fn = Recorder(delay=0.05)
    b = MicroBatcher(fn, BatchSettings(max_batch_size=2, max_wait_ms=0, queue_size=16))

    async def go():
        await b.start()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(6)]
        await asyncio.sleep(0.01)  # the first batch is running, the rest queued
        await b.stop()
        results = await asyncio.gather(*tasks)
        with pytest.raises(Overloaded, match="shutting down"):
            await b.submit(1)
        return results

    assert asyncio.run(go()) == [0, 2, 4, 6, 8, 10]


def test_a_failing_item_fails_alone():
    fn = Recorder(fail_on=3)
    b = MicroBatcher(fn, BatchSettings(max_batch_size=8, max_wait_ms=20))
    out = asyncio.run(_with(b, lambda: asyncio.gather(*[b.submit(i) for i in range(6)], return_exceptions=True)))
    assert out[:3] == [0, 2, 4] and out[4:] == [8, 10]
    assert isinstance(out[3], ValueError)


def test_cancelled_request_is_skipped():
    fn = Recorder(delay=0.05)
    b = MicroBatcher(fn, BatchSettings(max_batch_size=1, max_wait_ms=0, queue_size=8))

    async def go():
        first = asyncio.create_task(b.submit(1))
        second = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.01)
        second.cancel()  # the client went away while queued
        return await first

    assert asyncio.run(_with(b, go)) == 2
    assert fn.sizes == [1]


@pytest.mark.parametrize("kw", [{"max_batch_size": 0}, {"queue_size": 0}, {"max_wait_ms": -1}])
def test_settings_are_checked(kw):
    with pytest.raises(GenrecError):
        BatchSettings(**kw)
