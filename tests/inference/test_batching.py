"""The micro-batcher: merging, limits, failures, and model work off the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from inference.batching import BackendError, BatchRecord, MicroBatcher


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1, thread_name_prefix="line-test-device")
    yield pool
    pool.shutdown()


async def test_concurrent_requests_are_merged_up_to_max_batch(executor):
    records: list[BatchRecord] = []
    threads = set()

    def double(items):
        threads.add(threading.current_thread().name)
        return [item * 2 for item in items]

    batcher = MicroBatcher("double", double, executor, 8, 50, on_batch=records.append)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    assert results == [i * 2 for i in range(20)]
    assert max(r.size for r in records) == 8
    assert sum(r.size for r in records) == 20
    assert len(records) == 3
    assert threads == {name for name in threads if name.startswith("line-test-device")}
    await batcher.aclose()


async def test_a_lone_request_waits_at_most_max_wait(executor):
    batcher = MicroBatcher("echo", lambda items: items, executor, 64, 20)
    started = asyncio.get_running_loop().time()
    assert await batcher.submit("x") == "x"
    assert asyncio.get_running_loop().time() - started < 5
    await batcher.aclose()


async def test_a_failing_batch_fails_only_its_own_requests(executor):
    def fussy(items):
        if "bad" in items:
            raise RuntimeError("CUDA out of memory")
        return items

    batcher = MicroBatcher("fussy", fussy, executor, 2, 1000)
    first = asyncio.gather(batcher.submit("bad"), batcher.submit("a"), return_exceptions=True)
    failed = await first
    ok = await asyncio.gather(batcher.submit("b"), batcher.submit("c"))
    assert all(isinstance(result, BackendError) for result in failed)
    assert "fussy failed on a batch of 2: CUDA out of memory" in str(failed[0])
    assert ok == ["b", "c"]
    await batcher.aclose()


async def test_the_event_loop_stays_free_while_a_batch_runs(executor):
    release = threading.Event()

    def slow(items):
        release.wait(5)
        return items

    batcher = MicroBatcher("slow", slow, executor, 4, 1)
    pending = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.05)
    assert not pending.done()  # the loop runs this line while the batch blocks its thread
    release.set()
    assert await pending == 1
    await batcher.aclose()


async def test_busy_time_counts_model_work_not_the_wait_for_a_shared_device(executor):
    records: list[BatchRecord] = []
    release = threading.Event()

    def blocker(items):
        release.wait(5)
        return items

    def quick(items):
        return items

    slow = MicroBatcher("slow", blocker, executor, 1, 1)
    fast = MicroBatcher("fast", quick, executor, 1, 1, on_batch=records.append)
    first = asyncio.ensure_future(slow.submit(1))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(fast.submit(2))  # waits for the shared worker thread
    await asyncio.sleep(0.3)
    release.set()
    assert await first == 1 and await second == 2
    assert records[0].seconds < 0.1  # the 0.3 s spent queued is not counted as busy
    await slow.aclose()
    await fast.aclose()
