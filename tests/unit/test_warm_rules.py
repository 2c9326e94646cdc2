"""WarmSpares' rules without templates: which spares are warmed, kept, dropped, and what each
holds, against a fake template and a free-memory reading the test sets (MiB, by GPU index)."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

import pytest

from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.template_process import TemplateLost, TemplateProcess
from sandvisor.supervisor.warm_spares import WarmPolicy, WarmSpares

MIN_FREE = 4096


class FakeTemplate:
    """What WarmSpares uses of a TemplateProcess; announcements are the test's to make."""

    def __init__(self, python: str = "/env/bin/python") -> None:
        self.python = python
        self.alive = True
        self.warm_spares: dict[str, int] = {}
        self.warm_failures: collections.Counter[str] = collections.Counter()
        self.on_warm: Any = None
        self.warmed: list[str] = []
        self.dropped: list[str] = []
        self._pids = iter(range(1000, 2000))

    async def warm(self, gpus: str, library: str, warmup: str = "") -> None:
        if not self.alive:
            raise TemplateLost("template is not running")
        self.warmed.append(gpus)

    async def drop_warm(self, gpus: str) -> None:
        self.dropped.append(gpus)
        self.warm_spares.pop(gpus, None)

    def announce(self, gpus: str, memory: list[list[int]]) -> None:
        """The template says its spare for ``gpus`` is warm, with the driver's figures."""
        self.warm_spares[gpus] = next(self._pids)
        self.on_warm(self, gpus, memory)


class FreeMemory:
    """NVML as the test sets it: free MiB by GPU index; ``None``: NVML does not answer."""

    def __init__(self, free: Mapping[int, int] | None) -> None:
        self.free = free
        self.fail: Exception | None = None

    def __call__(self, indices: Iterable[int]) -> dict[int, int]:
        if self.fail is not None:
            raise self.fail
        if self.free is None:
            return {}
        return {index: self.free[index] for index in indices if index in self.free}


def as_template(fake: FakeTemplate) -> TemplateProcess:
    return cast(TemplateProcess, fake)


def spares(
    free: Mapping[int, int] | None, interval: float = 0.0, **sleep: Any
) -> tuple[WarmSpares, FreeMemory]:
    reading = FreeMemory(free)
    policy = WarmPolicy(library="libfake.so", min_free_mb=MIN_FREE, check_interval_s=interval)
    return WarmSpares(policy, reading, **sleep), reading


async def warmed(
    pool: WarmSpares, template: FakeTemplate, key: str, memory: list[list[int]]
) -> None:
    await pool.released(as_template(template), key, still_free=True)
    template.announce(key, memory)


async def test_a_warm_spare_holds_what_its_warm_up_took_per_gpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool, _ = spares({0: 40000, 1: 30000})
    template = FakeTemplate()
    with caplog.at_level(logging.INFO, logger="sandvisor.supervisor.warm_spares"):
        await warmed(pool, template, "0,1", [[39500, 81559], [29480, 81559]])
    (spare,) = pool.spares
    assert spare.gpus == "0,1" and spare.announced
    assert spare.held_mb == {0: 500, 1: 520}
    assert spare.device_mb == {0: (39500, 81559), 1: (29480, 81559)}
    holding = "holding GPU 0: 500 MiB, GPU 1: 520 MiB"
    assert pool.describe() == [f"GPU(s) 0,1: pid 1000 of template /env/bin/python, {holding}"]
    assert "ready (pid 1000" in caplog.text and "GPU 1: 520 MiB" in caplog.text


@pytest.mark.parametrize(
    ("before", "memory", "held", "shown"),
    [
        (None, [[39500, 81559]], {}, "GPU 0: unknown"),
        ({0: 40000}, [], {}, "GPU 0: unknown"),
        ({0: 40000}, [[40100, 81559]], {0: 0}, "GPU 0: 0 MiB"),
    ],
    ids=["nvml-silent", "driver-silent", "freed-meanwhile"],
)
async def test_a_hold_is_known_only_from_both_figures(
    before: dict[int, int] | None, memory: list[list[int]], held: dict[int, int], shown: str
) -> None:
    pool, _ = spares(before)
    await warmed(pool, FakeTemplate(), "0", memory)
    assert pool.spares[0].held_mb == held
    assert pool.describe()[0].endswith(shown)


@pytest.mark.parametrize(
    ("free_now", "fail", "dropped"),
    [
        ({0: 30000, 1: 30000}, None, []),
        ({0: 30000, 1: 3000}, None, ["0,1"]),
        ({0: 30000, 1: 3700}, None, []),
        ({0: 30000, 1: 3500}, None, ["0,1"]),
        (None, None, []),
        ({0: 100, 1: 100}, RuntimeError("NVML: GPU is lost"), []),
    ],
    ids=[
        "memory-fine",
        "short-on-one-gpu-of-two",
        "short-only-counting-its-own-hold",
        "short-even-with-its-hold",
        "nvml-silent",
        "nvml-failing",
    ],
)
async def test_a_warm_spare_is_dropped_when_memory_becomes_short(
    free_now: dict[int, int] | None, fail: Exception | None, dropped: list[str]
) -> None:
    pool, reading = spares({0: 40000, 1: 40000})
    template = FakeTemplate()
    await warmed(pool, template, "0,1", [[39500, 81559], [39500, 81559]])  # 500 MiB each
    reading.free, reading.fail = free_now, fail
    assert await pool.check() == dropped
    assert template.dropped == dropped
    assert [spare.gpus for spare in pool.spares] == ([] if dropped else ["0,1"])


@pytest.mark.parametrize(
    ("free", "warms"),
    [({0: 5000}, True), ({0: 4000}, False), (None, True)],
    ids=["enough", "short", "nvml-silent"],
)
async def test_a_spare_is_warmed_only_where_memory_allows(
    free: dict[int, int] | None, warms: bool
) -> None:
    pool, _ = spares(free)
    template = FakeTemplate()
    await pool.released(as_template(template), "0", still_free=True)
    assert template.warmed == (["0"] if warms else [])


async def test_replacing_a_spare_counts_its_hold_as_free() -> None:
    pool, reading = spares({0: 40000})
    first, second = FakeTemplate("/a/bin/python"), FakeTemplate("/b/bin/python")
    await warmed(pool, first, "0", [[39000, 81559]])  # holds 1000
    reading.free = {0: 3500}  # short, but 4500 without the spare the new one replaces
    await pool.released(as_template(second), "0", still_free=True)
    assert first.dropped == ["0"] and second.warmed == ["0"]
    second.announce("0", [[3400, 81559]])
    assert pool.spares[0].held_mb == {0: 1100}


@pytest.mark.parametrize(
    ("taker", "key", "dropped", "kept"),
    [
        ("own", "0", [], []),
        ("other", "0", ["0"], []),
        ("spawn", "0", ["0"], []),
        ("own", "0,1", ["0"], []),
        ("spawn", "1", [], ["0"]),
    ],
    ids=["own-set-forks-it", "other-template", "spawn-drops-all", "larger-set", "other-gpu"],
)
async def test_a_child_taking_gpus_drops_the_spares_on_them(
    taker: str, key: str, dropped: list[str], kept: list[str]
) -> None:
    pool, _ = spares({0: 40000, 1: 40000})
    own, other = FakeTemplate("/a/bin/python"), FakeTemplate("/b/bin/python")
    await warmed(pool, own, "0", [[39500, 81559]])
    template = {"own": as_template(own), "other": as_template(other), "spawn": None}[taker]
    await pool.take(template, key)
    assert own.dropped == dropped
    assert [spare.gpus for spare in pool.spares] == kept


async def test_a_spare_of_a_lost_template_is_forgotten() -> None:
    pool, _ = spares({0: 40000})
    template = FakeTemplate()
    await warmed(pool, template, "0", [[39500, 81559]])
    template.alive = False
    assert await pool.check() == [] and pool.spares == []


async def test_the_sweep_checks_each_interval_while_a_spare_is_warm() -> None:
    intervals: list[float] = []
    ticks: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        intervals.append(seconds)
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await ticks.put(woken)
        await woken

    async def tick() -> None:
        (await ticks.get()).set_result(None)
        for _ in range(5):  # let the sweep run its check up to its next sleep
            await asyncio.sleep(0)

    pool, reading = spares({0: 40000}, interval=5.0, sleep=sleep)
    template = FakeTemplate()
    await warmed(pool, template, "0", [[39500, 81559]])
    reading.fail = RuntimeError("NVML: unknown error")
    await tick()  # a failing reading: kept, and the sweep goes on
    assert template.dropped == [] and ticks.qsize() == 1
    reading.fail, reading.free = None, {0: 1000}
    await tick()
    assert template.dropped == ["0"] and pool.spares == []
    await asyncio.sleep(0)
    assert ticks.qsize() == 0 and intervals == [5.0, 5.0]  # none left: the sweep ended
    await pool.close()


async def test_closing_cancels_the_sweep() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def sleep(seconds: float) -> None:
        await never

    pool, _ = spares({0: 40000}, interval=5.0, sleep=sleep)
    await warmed(pool, FakeTemplate(), "0", [[39500, 81559]])
    sweep = pool._sweep
    assert sweep is not None and not sweep.done()
    await pool.close()
    assert sweep.cancelled()


def test_the_policy_reads_the_check_interval_from_settings() -> None:
    settings = Settings(cuda_warm_check_interval_s=0.5, cuda_warm_min_free_mb=1024)
    policy = WarmPolicy.from_settings(settings)
    assert policy.check_interval_s == 0.5 and policy.min_free_mb == 1024
    with pytest.raises(ValueError):
        Settings(cuda_warm_check_interval_s=-1)
