"""GPU inventory parsing and the pool's fair, cancellable hand-out."""

from __future__ import annotations

import asyncio

import pytest

from sandvisor.supervisor.gpus import (
    Gpu,
    GpuError,
    GpuPool,
    detect_gpus,
    gpu_memory_by_pid,
    parse_declared,
    parse_smi_listing,
)
from sandvisor.supervisor.settings import Settings


def pool(count: int) -> GpuPool:
    return GpuPool([Gpu(index) for index in range(count)])


def test_declared_gpus_override_detection() -> None:
    assert detect_gpus(Settings.from_env({}, gpus="")) == []
    assert [gpu.index for gpu in detect_gpus(Settings.from_env({}, gpus="0, 1"))] == [0, 1]
    with pytest.raises(GpuError, match="not a GPU index"):
        parse_declared("0,x")


def test_detection_without_a_driver_finds_none_or_real_ones() -> None:
    # This machine may or may not have a GPU; either way detection must answer, not raise.
    gpus = detect_gpus(Settings.from_env({}))
    assert all(isinstance(gpu, Gpu) for gpu in gpus)
    assert isinstance(gpu_memory_by_pid(), dict)


def test_nvidia_smi_listing() -> None:
    listing = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1f2e)\n"
        "  MIG 1g.10gb Device 0: (UUID: MIG-abc)\n"
        "GPU 1: Tesla T4 (UUID: GPU-77)\n"
    )
    assert parse_smi_listing(listing) == [
        Gpu(0, "NVIDIA H100 80GB HBM3", "GPU-1f2e"),
        Gpu(1, "Tesla T4", "GPU-77"),
    ]


async def test_a_lease_names_exactly_its_gpus() -> None:
    gpus = pool(3)
    first = await gpus.acquire(2)
    second = await gpus.acquire(1)
    assert first.cuda_visible_devices == "0,1"
    assert second.environ() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2"}
    none = await gpus.acquire(0)
    assert none.environ()["CUDA_VISIBLE_DEVICES"] == ""
    for lease in (first, second, none):
        lease.release()
    assert gpus.free == 3


async def test_jobs_wait_while_all_gpus_are_held() -> None:
    gpus = pool(1)
    async with await gpus.acquire(1):
        waiting = asyncio.create_task(gpus.acquire(1))
        await asyncio.sleep(0.01)
        assert not waiting.done() and gpus.waiting == 1
    lease = await asyncio.wait_for(waiting, 1)
    assert lease.indices == (0,)
    lease.release()
    lease.release()  # a second release changes nothing
    assert gpus.free == 1


async def test_first_come_first_served_so_big_requests_do_not_starve() -> None:
    gpus = pool(2)
    held = await gpus.acquire(1)
    big = asyncio.create_task(gpus.acquire(2))
    await asyncio.sleep(0)
    small = asyncio.create_task(gpus.acquire(1))
    await asyncio.sleep(0.01)
    # One GPU is free, but the big request came first: the small one waits behind it.
    assert not small.done() and not big.done()
    held.release()
    big_lease = await asyncio.wait_for(big, 1)
    assert not small.done()
    big_lease.release()
    (await asyncio.wait_for(small, 1)).release()
    assert gpus.free == 2 and gpus.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_loses_nothing() -> None:
    gpus = pool(1)
    held = await gpus.acquire(1)
    cancelled = asyncio.create_task(gpus.acquire(1))
    behind = asyncio.create_task(gpus.acquire(1))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    held.release()
    (await asyncio.wait_for(behind, 1)).release()
    assert gpus.free == 1 and gpus.waiting == 0


async def test_cancelled_right_after_the_grant_gives_the_gpus_back() -> None:
    gpus = pool(1)
    held = await gpus.acquire(1)
    waiter = asyncio.create_task(gpus.acquire(1))
    await asyncio.sleep(0.01)
    held.release()  # grants to the waiter, which has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gpus.free == 1


async def test_more_than_the_worker_has_is_an_error_not_a_wait() -> None:
    with pytest.raises(GpuError, match="asked for 3 GPU"):
        await pool(2).acquire(3)
