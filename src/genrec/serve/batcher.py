"""Micro-batching of concurrent requests into one forward pass, independent of HTTP.

A single worker task takes the first waiting request, then keeps collecting until it has
``max_batch_size`` requests or ``max_wait_ms`` has passed, and runs the whole batch in a
one-thread executor. One thread because the forward pass already uses every core through torch's
intra-op threads, and because it keeps the model out of concurrent use; off the event loop so the
server keeps accepting (and rejecting) requests while the model computes. Throughput therefore
grows with load: the busier the server, the fuller each forward pass.

With arrival tracking (:meth:`MicroBatcher.arriving`, which the HTTP app wraps around every
``/recommend`` request from its first byte), the wait ends early once every request inside the
server is in the batch: nobody else can join, so waiting would only add latency. A lone client
then gets unbatched latency, and ``max_wait_ms`` is only spent when company is already on its way.
Without tracking (plain library use) the worker always waits up to ``max_wait_ms``.

The queue is bounded: when ``queue_size`` requests are waiting, :meth:`MicroBatcher.submit`
raises :class:`Overloaded` at once (the server answers 503 with ``Retry-After``) instead of letting
latency and memory grow without limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from genrec.errors import GenrecError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("genrec.serve")


@dataclass(frozen=True)
class BatchSettings:
    """Micro-batching knobs; ``enabled=False`` serves every request alone (the benchmark baseline)."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    queue_size: int = 256
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise GenrecError(f"max_batch_size={self.max_batch_size}: must be at least 1")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise GenrecError(f"max_wait_ms={self.max_wait_ms}: must be between 0 and 10000")
        if self.queue_size < 1:
            raise GenrecError(f"queue_size={self.queue_size}: must be at least 1")

    @property
    def batch_limit(self) -> int:
        return self.max_batch_size if self.enabled else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Overloaded(Exception):
    """The queue is full (or the batcher is shutting down); retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MicroBatcher(Generic[T, R]):
    """Groups concurrent :meth:`submit` calls into calls of ``fn(list_of_items) -> list_of_results``.

    ``fn`` must return one result per item, in order. If a batch raises, its items are retried one
    by one, so one poisoned request fails alone instead of taking its batch-mates down with it.
    """

    def __init__(self, fn: Callable[[list[T]], list[R]], settings: BatchSettings | None = None) -> None:
        self.fn = fn
        self.settings = settings or BatchSettings()
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._tracking = False
        self._inside = 0  # tracked requests between their first byte and their answer
        self._batch_seconds = 0.0  # moving average, for Retry-After
        self.requests = 0
        self.rejected = 0
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()

    # lifecycle
    async def start(self) -> None:
        """Create the queue, executor and worker on the running event loop."""
        if self._worker is not None:
            return
        self._queue = asyncio.Queue(maxsize=self.settings.queue_size)
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-model")
        self._closing = False
        self._worker = asyncio.create_task(self._loop(), name="genrec-batcher")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish every queued and running request (up to ``timeout`` s), then stop."""
        if self._worker is None or self._queue is None:
            return
        self._closing = True
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            log.warning("shutdown: %d queued request(s) not served within %.0fs", self._queue.qsize(), timeout)
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(Overloaded("the server is shutting down"))
                self._queue.task_done()
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._closing

    @property
    def queue_depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def retry_after(self) -> int:
        """Seconds until a full queue has likely drained: queued batches times recent batch time."""
        batches = math.ceil(self.settings.queue_size / self.settings.batch_limit)
        return max(1, min(60, math.ceil(batches * self._batch_seconds)))

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "rejected": self.rejected, "batches": self.batches,
                "mean_batch_size": round(sum(k * v for k, v in self.batch_sizes.items()) / max(1, self.batches), 3),
                "max_batch_size_seen": max(self.batch_sizes, default=0),
                "batch_size_counts": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "queue_depth": self.queue_depth}

    # requests
    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark one request as inside the server (from arrival to answer) so the worker knows whom to wait for."""
        self._tracking = True
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1
            if self._wake is not None:
                self._wake.set()

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result; raises :class:`Overloaded` when the queue is full."""
        if self._queue is None or self._closing:
            raise Overloaded("the server is shutting down" if self._closing else "the batcher is not started",
                             self.retry_after())
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, fut))
        except asyncio.QueueFull:
            self.rejected += 1
            raise Overloaded(f"server overloaded: {self.settings.queue_size} requests already waiting",
                             self.retry_after()) from None
        self.requests += 1
        if self._wake is not None:
            self._wake.set()
        return await fut

    async def run_alone(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(*args)`` on the model thread, outside any batch (for endpoints that do not batch)."""
        if self._executor is None or self._closing:
            raise Overloaded("the server is shutting down", self.retry_after())
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # worker
    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        limit = self.settings.batch_limit
        wait = self.settings.max_wait_ms / 1000.0 if self.settings.enabled else 0.0
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait
            while len(batch) < limit:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0 or (self._tracking and self._inside <= len(batch)):
                    break
                assert self._wake is not None
                self._wake.clear()  # no await since the queue was checked: no wake-up can be missed
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:  # not the builtin on Python 3.10
                    break
            try:
                await self._run(batch)
            except Exception:  # never let the worker die: the futures would hang forever
                log.exception("micro-batch worker failed")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("internal error while computing the batch"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.done()]  # skip requests whose client left
        if not live:
            return
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except Exception as exc:
            if len(live) == 1:
                if not live[0][1].done():
                    live[0][1].set_exception(exc)
            else:
                for one in live:
                    await self._run([one])
            return
        finally:
            dt = time.perf_counter() - t0
            self._batch_seconds = dt if self.batches == 0 else 0.9 * self._batch_seconds + 0.1 * dt
        self.batches += 1
        self.batch_sizes[len(live)] += 1
        for (_, fut), res in zip(live, results):
            if not fut.done():
                fut.set_result(res)
