"""The worker-wide memory budget: a unit test of MemoryBudget, then copies through the real app
(Azurite over HTTPS, the identity endpoint, the Responses emulator) that must wait for it."""

from __future__ import annotations

import asyncio
import random

import pytest

from code_interpreter_files.memory_budget import MemoryBudget
from tests.appclient import AppClient

MIB = 1024 * 1024


async def settle() -> None:
    """Let every ready task run until all of them block."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_are_served_in_arrival_order_and_a_later_small_one_does_not_jump_the_line() -> None:
    budget = MemoryBudget(10)
    first = await budget.acquire(8)
    granted: list[str] = []

    async def ask(name: str, nbytes: int) -> None:
        grant = await budget.acquire(nbytes)
        granted.append(name)
        await asyncio.sleep(0.01)
        grant.release()

    block = asyncio.create_task(ask("block", 5))
    await settle()
    small = asyncio.create_task(ask("small", 1))  # would fit now (8 + 1 <= 10), but "block" is first
    await settle()
    assert granted == [] and budget.waiting == 2 and budget.waits == 2
    first.release()
    await asyncio.gather(block, small)
    assert granted == ["block", "small"]
    assert budget.in_use == 0 and budget.peak == 8


async def test_block_sized_requests_keep_a_small_file_from_waiting_for_a_whole_big_one() -> None:
    """Two big copies reserve one block at a time; a small file that arrives while both hold the
    whole budget gets its bytes after at most one block of each, not after either copy ends."""
    block = 4
    budget = MemoryBudget(2 * block)
    order: list[str] = []
    step = {name: asyncio.Event() for name in ("a", "b")}

    async def big_copy(name: str, blocks: int) -> None:
        for index in range(blocks):
            grant = await budget.acquire(block)
            order.append(f"{name}{index}")
            await step[name].wait()  # the block's stage request, completed by the test
            step[name].clear()
            grant.release()

    copies = [asyncio.create_task(big_copy(name, 10)) for name in ("a", "b")]
    await settle()
    assert order == ["a0", "b0"] and budget.in_use == 2 * block

    small_done = asyncio.Event()

    async def small_file() -> None:
        async with budget.reserve(1):
            order.append("small")
        small_done.set()

    small = asyncio.create_task(small_file())
    for _ in range(3):
        if small_done.is_set():
            break
        for name in ("a", "b"):
            step[name].set()
            await settle()
    assert small_done.is_set()
    assert order.index("small") <= 4, order  # behind at most one more block of each copy
    for _ in range(40):
        for name in ("a", "b"):
            step[name].set()
        await settle()
    await asyncio.gather(*copies, small)
    assert order.count("small") == 1 and len(order) == 21
    assert budget.peak <= budget.limit and budget.in_use == 0


async def test_many_tasks_never_hold_more_than_the_limit_and_all_finish() -> None:
    budget = MemoryBudget(100)
    held = 0
    most = 0
    rng = random.Random(7)

    async def worker(sizes: list[int]) -> int:
        nonlocal held, most
        for size in sizes:
            async with budget.reserve(size) as grant:
                held += grant.nbytes
                most = max(most, held)
                await asyncio.sleep(rng.random() / 1000)
                held -= grant.nbytes
        return len(sizes)

    done = await asyncio.gather(*(worker([rng.randint(1, 60) for _ in range(20)]) for _ in range(30)))
    assert sum(done) == 600
    assert most <= 100 and budget.peak <= 100 and budget.waits > 0
    assert most >= 60  # the budget was the limit, not the workers
    assert budget.in_use == 0 and budget.waiting == 0


async def test_a_cancelled_waiter_leaves_the_line_and_the_next_one_gets_its_turn() -> None:
    budget = MemoryBudget(10)
    holder = await budget.acquire(6)
    big = asyncio.create_task(budget.acquire(8))
    await settle()
    small = asyncio.create_task(budget.acquire(3))
    await settle()
    assert not small.done()  # behind "big"
    big.cancel()
    await settle()
    assert big.cancelled() and small.done()
    assert budget.in_use == 9 and budget.waiting == 0
    small.result().release()
    holder.release()
    assert budget.in_use == 0


async def test_a_grant_cancelled_before_its_task_resumed_is_given_back() -> None:
    budget = MemoryBudget(10)
    holder = await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(4))
    await settle()
    holder.release()  # grants the waiter's future ...
    waiter.cancel()  # ... but the task is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 0 and budget.peak == 10


async def test_a_request_larger_than_the_budget_is_cut_to_it_and_release_is_idempotent() -> None:
    budget = MemoryBudget(16)
    grant = await budget.acquire(100)
    assert grant.nbytes == 16 and budget.in_use == 16
    grant.release()
    grant.release()
    assert budget.in_use == 0
    with pytest.raises(RuntimeError):
        async with budget.reserve(5):
            assert budget.in_use == 5
            raise RuntimeError("the block's upload failed")
    assert budget.in_use == 0
    with pytest.raises(ValueError):
        MemoryBudget(0)


# -- through the app ------------------------------------------------------------------------------


async def test_concurrent_runs_wait_for_the_worker_budget_and_every_byte_arrives(app: AppClient, configure) -> None:
    """COPY_MEMORY_MB=16 (the minimum) for 3 runs x 3 files x 9 MiB at once: each copy alone would
    reserve up to 25 MiB (5 blocks of 4 MiB + BLOCK_SLACK_BYTES), so copies must queue for the
    budget; every file still arrives whole (sha256 through its link) and the budget's peak stays
    within it."""
    from code_interpreter_files.services import get_services

    configure(COPY_MEMORY_MB=16, COPY_CONCURRENCY=3)
    runs = [
        app.script(files=[{"path": f"/mnt/data/run{r}-part{i}.bin", "size": 9 * MIB + r * 1000 + i} for i in range(3)])
        for r in range(3)
    ]
    small = app.script(files=[{"path": "/mnt/data/small.csv", "content": "a,b\n1,2\n"}])
    replies = await asyncio.gather(
        *(app.post_run(prompt=run["prompt"]) for run in runs), app.post_run(prompt=small["prompt"])
    )
    budget = (await get_services()).memory_budget
    assert budget.limit == 16 * MIB
    assert budget.waits > 0, "the copies never waited: the budget was not the limit"
    assert MIB < budget.peak <= budget.limit
    assert budget.in_use == 0 and budget.waiting == 0
    for reply in replies:
        assert reply.status == 200, reply.body
        assert reply.json["failed_files"] == []
        app.verify_answer(reply.json)
    assert sorted(len(reply.json["files"]) for reply in replies) == [1, 3, 3, 3]


def test_copy_memory_mb_defaults_to_512_and_is_bounded() -> None:
    from code_interpreter_files.settings import SettingsError, load_settings

    env = {
        "AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4.1",
        "OUTPUT_STORAGE_ACCOUNT_URL": "https://example.blob.core.windows.net",
        "RUNS_QUEUE_STORAGE__queueServiceUri": "https://example.queue.core.windows.net",
    }
    assert load_settings(env).copy_memory_mb == 512
    assert load_settings({**env, "COPY_MEMORY_MB": "16384"}).copy_memory_mb == 16384
    for bad in ("15", "16385", "lots"):
        with pytest.raises(SettingsError) as raised:
            load_settings({**env, "COPY_MEMORY_MB": bad})
        assert "COPY_MEMORY_MB" in raised.value.invalid
