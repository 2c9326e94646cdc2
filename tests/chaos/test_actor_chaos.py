"""Hostile and unlucky instances: killed from outside, leaving processes behind, exiting, flooding."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import class_request, eventually, function_request, make_settings, process_gone

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor

pytestmark = pytest.mark.chaos

ROGUE = """
import os
import subprocess
import sys
import threading
import time


class Rogue:
    def __init__(self):
        self.children = []

    def ping(self):
        return os.getpid()

    def leave_children(self):
        # One in the actor's group, one in a session of its own (as a daemon would).
        self.children.append(subprocess.Popen(["sleep", "300"]))
        self.children.append(subprocess.Popen(["sleep", "301"], start_new_session=True))
        return [child.pid for child in self.children]

    def leave(self, code):
        sys.exit(code)

    def chatter_later(self, flag):
        def talk():
            time.sleep(0.2)
            print("said between calls", flush=True)
            open(flag, "w").close()

        threading.Thread(target=talk, daemon=True).start()
        return "ok"

    def crash(self):
        import ctypes

        ctypes.string_at(0)

    def talk_then_sleep(self):
        print("started", flush=True)
        time.sleep(300)

    def flood(self, megabytes):
        line = "x" * 1023 + "\\n"
        for _ in range(megabytes * 1024):
            sys.stdout.write(line)
        return megabytes

    def hang_ignoring_sigterm(self):
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(300)
"""


def rogue(method: str, *args: Any, **fields: Any) -> dict[str, Any]:
    return class_request("Rogue", ROGUE, method, *args, **fields)


def again(instance_id: str, method: str, *args: Any, **fields: Any) -> dict[str, Any]:
    return rogue(method, *args, instance_id=instance_id, create_new_instance=False, **fields)


def ok(response: FunctionResponse) -> FunctionResponse:
    assert response.success, response.error
    return response


@pytest.fixture(params=["template", "spawn"])
async def sup(request, tmp_path: Path):
    settings = make_settings(
        tmp_path / "home",
        templates=request.param == "template",
        max_instances=2,
        instance_ttl_s=60.0,
    )
    async with Supervisor(settings) as running:
        yield running


async def test_an_idle_actor_killed_from_outside_is_noticed_and_recreated(sup: Supervisor):
    first = ok(await sup.run(rogue("ping")))
    pid = first.json_result
    os.kill(pid, signal.SIGKILL)
    assert sup.instances is not None
    assert await eventually(lambda: first.instance_id not in sup.instances.live)
    back = ok(await sup.run(again(first.instance_id, "ping")))
    assert back.json_result != pid and back.instance_info["recreated"] is True
    assert "died while idle" in back.stdout and "SIGKILL" in back.stdout


async def test_processes_an_instance_leaves_behind_go_with_it(sup: Supervisor):
    first = ok(await sup.run(rogue("leave_children")))
    children = first.json_result
    assert not any(process_gone(pid) for pid in children)
    ok(await sup.run(rogue("ping")))
    ok(await sup.run(rogue("ping")))  # the first instance is evicted (at most 2)
    assert await eventually(lambda: all(process_gone(pid) for pid in children))


async def test_a_crash_takes_what_the_instance_left_running_with_it(sup: Supervisor):
    first = ok(await sup.run(rogue("leave_children")))
    started = time.monotonic()
    crashed = await sup.run(again(first.instance_id, "crash"))
    assert crashed.error_type == ErrorType.SIGNAL and "SIGSEGV" in crashed.error
    assert time.monotonic() - started < 1.5  # not held up by children keeping its pipes open
    assert await eventually(lambda: all(process_gone(pid) for pid in first.json_result))


async def test_sys_exit_in_a_method_ends_only_that_instance(sup: Supervisor):
    first = ok(await sup.run(rogue("ping")))
    left = await sup.run(again(first.instance_id, "leave", 3))
    assert not left.success and left.error_type == ErrorType.EXIT and left.exit_code == 3
    assert left.instance_info["alive"] is False
    plain = ok(await sup.run(function_request("def main():\n    return 1\n")))
    assert plain.json_result == 1


async def test_output_between_calls_goes_to_the_next_call(sup: Supervisor, tmp_path: Path):
    flag = tmp_path / "said"
    first = ok(await sup.run(rogue("chatter_later", str(flag))))
    assert "said between calls" not in first.stdout
    assert await eventually(flag.exists)
    second = ok(await sup.run(again(first.instance_id, "ping")))
    assert "said between calls" in second.stdout


async def test_a_flood_of_output_is_bounded_and_the_instance_lives_on(sup: Supervisor):
    first = ok(await sup.run(rogue("ping")))
    flooded = ok(
        await sup.run(again(first.instance_id, "flood", 8, limits={"max_output_bytes": 20000}))
    )
    assert len(flooded.stdout) < 25000 and "bytes of output dropped" in flooded.stdout
    after = ok(await sup.run(again(first.instance_id, "ping")))
    assert after.json_result == first.json_result and after.stdout == ""


async def test_a_hang_that_ignores_sigterm_is_killed_at_the_timeout(sup: Supervisor):
    first = ok(await sup.run(rogue("ping")))
    started = time.monotonic()
    hung = await sup.run(
        again(first.instance_id, "hang_ignoring_sigterm", limits={"timeout_s": 0.5})
    )
    assert hung.error_type == ErrorType.TIMEOUT and hung.instance_info["alive"] is False
    assert time.monotonic() - started < 5
    assert process_gone(first.json_result)


async def test_a_caller_that_leaves_mid_call_takes_the_instance_down(sup: Supervisor):
    first = ok(await sup.run(rogue("ping")))
    async with contextlib.aclosing(
        sup.stream(again(first.instance_id, "talk_then_sleep"))
    ) as events:
        async for event in events:
            assert "started" in event.text
            break
    assert await eventually(lambda: process_gone(first.json_result))
    back = ok(await sup.run(again(first.instance_id, "ping")))
    assert back.instance_info["recreated"] is True and "interrupted" in back.stdout


async def test_shutdown_stops_every_actor(tmp_path: Path):
    settings = make_settings(tmp_path / "home", max_instances=8)
    async with Supervisor(settings) as sup:
        responses = await asyncio.gather(*(sup.run(rogue("ping")) for _ in range(6)))
        pids = [ok(r).json_result for r in responses]
        slow = asyncio.ensure_future(sup.run(again(responses[0].instance_id, "leave", 0)))
        await slow
    assert all(process_gone(pid) for pid in pids)


async def test_an_actor_whose_template_dies_is_ended_and_recreated(tmp_path: Path):
    async with Supervisor(make_settings(tmp_path / "home")) as sup:
        first = ok(await sup.run(rogue("ping")))
        assert sup.templates is not None
        (template,) = sup.templates.running.values()
        os.kill(template.pid, signal.SIGKILL)
        assert await eventually(lambda: process_gone(first.json_result))
        back = ok(await sup.run(again(first.instance_id, "ping")))
        assert back.json_result != first.json_result
        assert back.instance_info["recreated"] is True and "template died" in back.stdout
