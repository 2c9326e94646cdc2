"""GPUs per job, with GPUs declared through settings (this machine may have none)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.helpers import eventually, function_request, make_settings

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor

SEES = """
import os, time
def main(pause=0.0):
    started = time.time()
    time.sleep(pause)
    return [os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER"),
            started, time.time()]
"""


@pytest.fixture
async def two_gpus(tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(make_settings(tmp_path / "home", gpus="0,1")) as sup:
        yield sup


async def test_a_job_sees_exactly_its_gpus(two_gpus: Supervisor) -> None:
    default = await two_gpus.run(function_request(SEES))
    assert default.json_result[:2] == ["0", "PCI_BUS_ID"]
    both = await two_gpus.run(function_request(SEES, limits={"gpus": 2}))
    assert both.json_result[0] == "0,1"
    none = await two_gpus.run(function_request(SEES, limits={"gpus": 0}))
    assert none.json_result[0] == ""
    assert two_gpus.gpus.free == 2


async def test_more_gpus_than_the_worker_has_is_an_invalid_request(two_gpus: Supervisor) -> None:
    response = await two_gpus.run(function_request(SEES, limits={"gpus": 3}))
    assert response.error_type is ErrorType.INVALID_REQUEST
    assert "limits.gpus 3 is more than the 2 GPU(s)" in (response.error or "")


async def test_jobs_wait_while_every_gpu_is_held(tmp_path: Path) -> None:
    async with Supervisor(make_settings(tmp_path / "home", gpus="0")) as sup:
        first, second = await asyncio.gather(
            sup.run(function_request(SEES, args=[0.5])),
            sup.run(function_request(SEES, args=[0.5])),
        )
    assert first.json_result[0] == second.json_result[0] == "0"
    spans = sorted([first.json_result[2:], second.json_result[2:]])
    assert spans[1][0] >= spans[0][1] - 0.01, "two jobs held the one GPU at once"
    assert "waiting for 1 GPU(s)" in (first.stdout or "") + (second.stdout or "")


async def test_a_job_waiting_for_a_gpu_can_be_cancelled(tmp_path: Path) -> None:
    async with Supervisor(make_settings(tmp_path / "home", gpus="0")) as sup:
        holder = asyncio.ensure_future(sup.run(function_request(SEES, args=[2.0])))
        assert await eventually(lambda: sup.gpus.free == 0)
        waiter = asyncio.ensure_future(sup.run(function_request(SEES), job_id="waiting"))
        assert await eventually(lambda: sup.gpus.waiting == 1)
        assert await sup.cancel("waiting")
        response = await waiter
        assert response.error_type is ErrorType.CANCELLED
        assert not holder.done()  # the cancel did not wait for the GPU to come free
        assert (await holder).success
        assert sup.gpus.waiting == 0
        assert sup.gpus.free == 1 and sup.gpus.waiting == 0
