"""ChildSession: one child, started, exchanging frames, terminated and closed (spawned here)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.helpers import class_request, function_request, make_settings

from sandvisor.protocol.frames import Frame, FrameError, encode_frame
from sandvisor.protocol.models import FunctionRequest
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.job import JobSpec
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.policy import child_environment
from sandvisor.supervisor.session import ChildSession

COUNTER = """
class Counter:
    def __init__(self):
        self.value = 0

    def add(self, amount):
        self.value += amount
        print(f"now {self.value}")
        return self.value
"""


def make_spec(tmp_path: Path, request: dict[str, Any], job_id: str = "sess1") -> JobSpec:
    settings = make_settings(tmp_path / "home")
    return JobSpec(
        job_id=job_id,
        request=FunctionRequest.model_validate(request),
        python=sys.executable,
        workdir=tmp_path / job_id,
        base_env=child_environment(settings, os.environ),
        limits=Limits.resolve(settings),
    )


class Recorder:
    """The session's owner in these tests: frames by kind, output, and how the channel ended."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.output: list[str] = []
        self.ended: list[Exception | None] = []

    async def emit(self, event: LogEvent) -> None:
        self.output.append(event.text)

    async def frame(self, frame: Frame) -> None:
        self.frames.put_nowait(frame)

    async def channel_end(self, broken: Exception | None) -> None:
        self.ended.append(broken)

    def session(self, spec: JobSpec, kinds: tuple[str, ...]) -> ChildSession:
        return ChildSession(
            spec,
            None,
            {kind: self.frame for kind in kinds},
            self,
            max_result_bytes=spec.limits.max_result_bytes,
            on_channel_end=self.channel_end,
        )


async def test_a_session_used_for_many_exchanges(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, class_request("Counter", COUNTER, "add", 1))
    owner = Recorder()
    session = owner.session(spec, ("created", "result", "error"))
    try:
        await session.start({"actor": True})
        assert (await asyncio.wait_for(owner.frames.get(), 30))["t"] == "created"
        for seq in range(1, 4):
            await session.send(spec.call_frame(seq, spec.limits.max_result_bytes))
            answer = await asyncio.wait_for(owner.frames.get(), 30)
            assert answer["t"] == "result", answer
            await session.drain()
        assert "".join(owner.output) == "now 1\nnow 2\nnow 3\n"  # one process kept its state
        await session.end_input()  # an actor leaves at the end of its channel
        info = await asyncio.wait_for(session.exit_info(), 30)
        assert info is not None and info.exit_code == 0
    finally:
        await session.terminate(0.5)
        await session.close()


async def test_a_one_shot_session_ends_with_its_child(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, function_request("def main():\n    print('hi')\n    return 7\n"))
    owner = Recorder()
    session = owner.session(spec, ("result",))
    try:
        await session.start()
        info = await asyncio.wait_for(session.exit_info(), 30)
        assert await session.settle(frames=True)
    finally:
        await session.close()
    assert info is not None and info.exit_code == 0
    assert owner.frames.get_nowait()["t"] == "result"
    assert owner.output == ["hi\n"] and owner.ended == [None]


async def test_terminate_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "def main():\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    spec = make_spec(tmp_path, function_request(code))
    owner = Recorder()
    session = owner.session(spec, ())
    try:
        await session.start()
        while "ready\n" not in owner.output:  # SIGTERM is ignored from here on
            await asyncio.sleep(0.01)
        await session.terminate(0.2)
        info = await session.exit_info()
    finally:
        await session.close()
    assert info is not None and info.signal == signal.SIGKILL


async def test_the_dispatch_table_ignores_unknown_kinds_and_reports_a_broken_channel(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, function_request("def main():\n    return 1\n"))
    owner = Recorder()
    session = owner.session(spec, ("result",))
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame({"t": "no-such-kind"}))
    reader.feed_data(encode_frame({"t": "result", "fields": {}}))
    reader.feed_data(encode_frame({"t": "result"})[:-1])  # cut inside a frame
    reader.feed_eof()
    await session._read_frames(reader)  # the reader task's body, fed by hand
    assert owner.frames.qsize() == 1 and owner.frames.get_nowait()["t"] == "result"
    assert len(owner.ended) == 1 and isinstance(owner.ended[0], FrameError)
