"""Class instances in their own actor processes: persistence, isolation, limits, bounds, order."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from runpod_flash.execute_class import create_remote_class
from runpod_flash.protos.remote_execution import FunctionResponse as FlashResponse
from runpod_flash.stubs.live_serverless import LiveServerlessStub
from tests.helpers import class_request, eventually, function_request, make_settings, process_gone

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor

COUNTER = """
import asyncio
import os
import sys
import time


class Counter:
    def __init__(self, start=0):
        self.value = start
        self.seen = []
        self.lock = None
        print(f"constructed at {start}")

    def add(self, amount=1):
        self.value += amount
        print(f"counter is now {self.value}")
        return self.value

    def get_state(self):
        return {"value": self.value, "seen": self.seen}

    def append(self, item, pause=0.0):
        time.sleep(pause)
        self.seen.append(item)
        return list(self.seen)

    async def add_later(self, amount):
        # A lock made on the first call must still work on later ones: one loop per actor.
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            await asyncio.sleep(0.01)
            self.value += amount
        return self.value

    def fail(self):
        raise ValueError("no such thing")

    def crash(self):
        import ctypes

        ctypes.string_at(0)

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def meet(self, mine, other):
        # Says it runs (file ``mine``), then waits for ``other`` to appear: True only if it did,
        # so no test guesses how long a call takes.
        open(mine, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(other) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.path.exists(other)

    def hog(self, megabytes):
        self.blob = b"x" * (megabytes * 1024 * 1024)
        time.sleep(30)

    def chatter(self, lines):
        for i in range(lines):
            print(f"line {i:06d} " + "." * 60)
        sys.stderr.write("no newline at the end")
        return lines

    def pid(self):
        import os

        return os.getpid()

    def visible_gpus(self):
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES")
"""


def counter(method: str, *args: Any, **fields: Any) -> dict[str, Any]:
    return class_request("Counter", COUNTER, method, *args, **fields)


def again(instance_id: str, method: str, *args: Any, **fields: Any) -> dict[str, Any]:
    """A call to an existing instance, as a runpod-flash client sends it."""
    return counter(method, *args, instance_id=instance_id, create_new_instance=False, **fields)


@pytest.fixture(params=["template", "spawn"])
async def sup(request, tmp_path: Path):
    settings = make_settings(
        tmp_path / "home", templates=request.param == "template", max_instances=4
    )
    async with Supervisor(settings) as running:
        yield running


@pytest.fixture
async def small(tmp_path: Path):
    """Forked actors, at most 2 instances."""
    async with Supervisor(make_settings(tmp_path / "home", max_instances=2)) as running:
        yield running


def ok(response: FunctionResponse) -> FunctionResponse:
    assert response.success, response.error
    return response


# -- persistence ------------------------------------------------------------------------------


async def test_state_persists_across_calls_like_worker_flash(sup: Supervisor):
    first = ok(await sup.run(counter("add", 5, constructor_kwargs={"start": 10})))
    assert first.json_result == 15
    instance_id = first.instance_id
    assert re.fullmatch(r"Counter_[0-9a-f]{8}", instance_id or "")
    assert "creating instance" in first.stdout and "constructed at 10" in first.stdout
    info = first.instance_info
    assert info is not None and info["method_calls"] == 1 and info["recreated"] is False
    assert {"class_name", "created_at", "method_calls", "last_used", "pid", "memory"} <= set(info)
    assert info["memory"]["rss_bytes"] > 0

    for expected in (16, 17):
        again_response = ok(await sup.run(again(instance_id, "add", 1)))
        assert again_response.json_result == expected
        assert again_response.stdout == f"counter is now {expected}\n"
    state = ok(await sup.run(again(instance_id, "get_state")))
    assert state.json_result == {"value": 17, "seen": []}
    assert state.instance_info["method_calls"] == 4
    assert (
        state.instance_info["pid"]
        == info["pid"]
        == ok(await sup.run(again(instance_id, "pid"))).json_result
    )
    assert state.instance_info["created_at"] == info["created_at"]


async def test_async_methods_share_one_event_loop(sup: Supervisor):
    first = ok(await sup.run(counter("add_later", 2)))
    second = ok(await sup.run(again(first.instance_id, "add_later", 3)))
    assert (first.json_result, second.json_result) == (2, 5)


async def test_a_method_that_raises_leaves_the_instance_alive(sup: Supervisor):
    first = ok(await sup.run(counter("add", 1)))
    failed = await sup.run(again(first.instance_id, "fail"))
    assert not failed.success and failed.error_type == ErrorType.USER_EXCEPTION
    assert failed.error.startswith("ValueError: no such thing")
    assert failed.instance_info["alive"] is True
    assert ok(await sup.run(again(first.instance_id, "add", 1))).json_result == 2


async def test_create_new_instance_true_replaces_the_live_one(small: Supervisor):
    first = ok(await small.run(counter("add", 1)))
    old_pid = first.instance_info["pid"]
    fresh = ok(await small.run(counter("add", 1, instance_id=first.instance_id)))
    assert fresh.instance_id == first.instance_id
    assert fresh.json_result == 1 and fresh.instance_info["pid"] != old_pid
    assert await eventually(lambda: process_gone(old_pid))


async def test_an_unknown_id_is_created_and_the_caller_is_told(small: Supervisor):
    response = ok(await small.run(again("Counter_0123abcd", "add", 3)))
    assert response.instance_id == "Counter_0123abcd"
    assert response.instance_info["recreated"] is True
    assert "Counter_0123abcd is not on this worker" in response.stdout


async def test_a_constructor_that_raises_fails_the_call_and_keeps_nothing(small: Supervisor):
    request = counter("add", 1, constructor_kwargs={"start": 1, "bogus": 2})
    response = await small.run(request)
    assert not response.success and response.error_type == ErrorType.USER_EXCEPTION
    assert "bogus" in response.error
    assert small.instances is not None and small.instances.live == {}


async def test_requests_from_runpod_flash_s_class_wrapper(small: Supervisor):
    class Accumulator:
        def __init__(self, start):
            self.total = start

        def add(self, *amounts):
            self.total += sum(amounts)
            return self.total

    stub = LiveServerlessStub(server=None)
    wrapper = create_remote_class(Accumulator, None, None, None, True)(10)
    first = await small.run(wrapper._build_class_request("add", (1, 2), {}).model_dump())
    wrapper._stub = stub  # what the client's first call leaves behind: later calls reuse
    second = await small.run(wrapper._build_class_request("add", (3,), {}).model_dump())
    decoded = [
        stub.handle_response(FlashResponse(**json.loads(json.dumps(r.to_wire()))))
        for r in (first, second)
    ]
    assert decoded == [13, 16]
    assert second.instance_id == first.instance_id == wrapper._instance_id


# -- output -----------------------------------------------------------------------------------


async def test_each_call_gets_exactly_its_own_output(small: Supervisor):
    first = ok(await small.run(counter("chatter", 3000)))  # ~200 KB: more than a pipe holds
    lines = [line for line in first.stdout.splitlines() if line.startswith("line ")]
    assert len(lines) == 3000 and lines[-1].startswith("line 002999")
    assert first.stdout.endswith("no newline at the end")
    second = ok(await small.run(again(first.instance_id, "add", 1)))
    assert second.stdout == "counter is now 1\n"


# -- failures ---------------------------------------------------------------------------------


async def test_a_segfault_loses_only_that_instance(sup: Supervisor):
    doomed = ok(await sup.run(counter("add", 1)))
    bystander = ok(await sup.run(counter("add", 100)))
    crashed = await sup.run(again(doomed.instance_id, "crash"))
    assert not crashed.success and crashed.error_type == ErrorType.SIGNAL
    assert "SIGSEGV" in crashed.error and f"{doomed.instance_id} is gone" in crashed.error
    assert crashed.instance_info["alive"] is False
    assert await eventually(lambda: process_gone(doomed.instance_info["pid"]))

    assert ok(await sup.run(again(bystander.instance_id, "add", 1))).json_result == 101
    plain = ok(await sup.run(function_request("def main():\n    return 'fine'\n")))
    assert plain.json_result == "fine"

    back = ok(await sup.run(again(doomed.instance_id, "add", 1)))
    assert back.json_result == 1 and back.instance_info["recreated"] is True
    assert "SIGSEGV" in back.stdout and "recreating it" in back.stdout


async def test_a_call_timeout_kills_the_actor(small: Supervisor):
    first = ok(await small.run(counter("add", 1)))
    slow = await small.run(again(first.instance_id, "sleep", 30, limits={"timeout_s": 0.5}))
    assert not slow.success and slow.error_type == ErrorType.TIMEOUT
    assert f"{first.instance_id} is gone" in slow.error
    assert slow.timings["total"] < 5000
    assert await eventually(lambda: process_gone(first.instance_info["pid"]))
    back = ok(await small.run(again(first.instance_id, "get_state")))
    assert back.instance_info["recreated"] is True and back.json_result["value"] == 0


async def test_the_actor_s_memory_limit(small: Supervisor):
    first = ok(await small.run(counter("add", 1, limits={"memory_mb": 150})))
    hog = await small.run(again(first.instance_id, "hog", 400))
    assert not hog.success and hog.error_type == ErrorType.MEMORY_LIMIT, hog.error
    assert hog.instance_info["alive"] is False


async def test_cancel_stops_the_call_and_the_instance(small: Supervisor, tmp_path: Path):
    first = ok(await small.run(counter("add", 1)))
    started, release = tmp_path / "started", tmp_path / "release"
    call = asyncio.ensure_future(
        small.run(again(first.instance_id, "meet", str(started), str(release)), job_id="j1")
    )
    assert await eventually(started.exists, within_s=30)
    assert await small.cancel("j1")
    response = await call
    assert response.error_type == ErrorType.CANCELLED
    assert await eventually(lambda: process_gone(first.instance_info["pid"]))


# -- bounds -----------------------------------------------------------------------------------


async def test_least_recently_used_is_evicted_over_the_count(small: Supervisor):
    a = ok(await small.run(counter("add", 1)))
    b = ok(await small.run(counter("add", 1)))
    ok(await small.run(again(a.instance_id, "add", 1)))  # a is now more recent than b
    c = ok(await small.run(counter("add", 1)))
    assert small.instances is not None
    assert set(small.instances.live) == {a.instance_id, c.instance_id}
    assert await eventually(lambda: process_gone(b.instance_info["pid"]))
    back = ok(await small.run(again(b.instance_id, "get_state")))
    assert back.instance_info["recreated"] is True and "was evicted" in back.stdout


async def test_idle_instances_stop_after_the_ttl(tmp_path: Path):
    settings = make_settings(tmp_path / "home", instance_ttl_s=0.3)
    async with Supervisor(settings) as sup:
        first = ok(await sup.run(counter("add", 1)))
        assert await eventually(lambda: process_gone(first.instance_info["pid"]), within_s=3.0)
        assert sup.instances is not None and sup.instances.live == {}
        back = ok(await sup.run(again(first.instance_id, "add", 1)))
        assert back.json_result == 1 and "idle (TTL)" in back.stdout


async def test_a_hundred_instances_come_and_go_without_leftovers(small: Supervisor):
    pids = []
    for _ in range(100):
        pids.append(ok(await small.run(counter("add", 1))).instance_info["pid"])
    assert small.instances is not None and len(small.instances.live) == 2
    for pid in pids[:-2]:
        assert await eventually(lambda pid=pid: process_gone(pid))
    assert all(not process_gone(pid) for pid in pids[-2:])
    jobs_dir = small.settings.jobs_dir
    assert await eventually(lambda: len(os.listdir(jobs_dir)) <= 2)  # the live actors' dirs only


# -- order and parallelism --------------------------------------------------------------------


async def test_concurrent_calls_to_one_instance_run_in_arrival_order(small: Supervisor):
    first = ok(await small.run(counter("get_state")))
    # Later calls pause less: were they not queued, they would finish first.
    calls = [again(first.instance_id, "append", i, round(0.05 - i * 0.005, 3)) for i in range(8)]
    responses = await asyncio.gather(*(small.run(call) for call in calls))
    assert [ok(r).json_result for r in responses] == [list(range(i + 1)) for i in range(8)]


async def test_different_instances_run_in_parallel(small: Supervisor, tmp_path: Path):
    a = ok(await small.run(counter("add", 1)))
    b = ok(await small.run(counter("add", 1)))
    flag_a, flag_b = str(tmp_path / "a"), str(tmp_path / "b")
    both = await asyncio.gather(
        small.run(again(a.instance_id, "meet", flag_a, flag_b)),
        small.run(again(b.instance_id, "meet", flag_b, flag_a)),
    )
    assert [ok(r).json_result for r in both] == [True, True]  # each saw the other running


async def test_a_call_cancelled_while_queued_leaves_the_instance_alone(
    small: Supervisor, tmp_path: Path
):
    first = ok(await small.run(counter("add", 1)))
    started, release = tmp_path / "started", tmp_path / "release"
    hold = again(first.instance_id, "meet", str(started), str(release))
    running = asyncio.ensure_future(small.run(hold))
    assert await eventually(started.exists, within_s=30)
    queued = asyncio.ensure_future(small.run(again(first.instance_id, "add", 1), job_id="q1"))
    assert await eventually(lambda: "q1" in small.running_jobs)
    assert await small.cancel("q1")
    cancelled = await queued
    assert cancelled.error_type == ErrorType.CANCELLED and not running.done()
    release.touch()
    assert ok(await running).json_result is True
    state = ok(await small.run(again(first.instance_id, "get_state")))
    assert (
        state.json_result["value"] == 1 and state.instance_info["pid"] == first.instance_info["pid"]
    )


async def test_streaming_a_class_call(small: Supervisor):
    events = [item async for item in small.stream(counter("add", 2))]
    *logs, response = events
    assert ok(response).json_result == 2
    texts = "".join(event.text for event in logs)
    assert "creating instance" in texts and "counter is now 2" in texts


# -- GPUs -------------------------------------------------------------------------------------


async def test_an_instance_holds_its_gpu_and_gives_it_up_when_idle_and_needed(tmp_path: Path):
    async with Supervisor(make_settings(tmp_path / "home", gpus="0,1")) as sup:
        a = ok(await sup.run(counter("visible_gpus")))
        b = ok(await sup.run(counter("visible_gpus")))
        assert {a.json_result, b.json_result} == {"0", "1"}
        assert ok(await sup.run(again(a.instance_id, "visible_gpus"))).json_result == a.json_result
        # Both GPUs are held by idle instances: a job that needs one gets the older one's.
        job = ok(await sup.run(function_request(GPU_JOB, limits={"gpus": 1})))
        assert job.json_result == b.json_result
        assert await eventually(lambda: process_gone(b.instance_info["pid"]))
        assert sup.instances is not None and set(sup.instances.live) == {a.instance_id}
        c = ok(await sup.run(counter("visible_gpus")))  # the job's GPU is free again
        assert c.json_result == b.json_result and "waiting" not in c.stdout
        d = ok(await sup.run(counter("visible_gpus")))  # none free: idle a gives its GPU up
        assert d.json_result == a.json_result and "waiting for 1 GPU" in d.stdout
        assert set(sup.instances.live) == {c.instance_id, d.instance_id}


GPU_JOB = "import os\ndef main():\n    return os.environ.get('CUDA_VISIBLE_DEVICES')\n"
