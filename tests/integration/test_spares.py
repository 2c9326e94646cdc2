"""Spares: each job's child is forked ahead of its job, used once, and never left behind."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import psutil
import pytest
from tests.helpers import function_request, streamed
from tests.integration.templates_helpers import WHO_AM_I, ok, template_of, wait_until

from sandvisor.protocol.messages import SPARE_NAME
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.settings import Settings


@pytest.fixture
async def sup(settings: Settings) -> AsyncIterator[Supervisor]:
    async with Supervisor(settings) as running:
        yield running


SPARE_SEES = """
import os
def main():
    return {"pid": os.getpid(), "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))}
"""


async def test_a_spare_waits_for_the_next_job_and_is_used_once(sup: Supervisor) -> None:
    template = template_of(sup)
    spare = template.spare
    assert spare is not None
    spare_process = psutil.Process(spare)
    assert spare_process.ppid() == template.pid
    await wait_until(lambda: os.getsid(spare) == spare)  # out of the template's session
    # Named, so that one its template forked but never announced is still found when it dies.
    await wait_until(lambda: spare_process.name() == SPARE_NAME)
    # None of the template's descriptors: stdin, stdout, stderr and the socket it waits on.
    await wait_until(lambda: len(os.listdir(f"/proc/{spare}/fd")) == 4)
    first = await ok(sup, function_request(SPARE_SEES))
    assert first["pid"] == spare  # the job ran in the child forked ahead of it
    # Its descriptors are the job's own: stdin, stdout, stderr, the channel, and the listing's.
    assert len(first["fds"]) == 5
    assert template.spare not in (None, spare)  # a new spare waits for the next job
    second = await ok(sup, function_request(SPARE_SEES))
    assert second["pid"] not in (first["pid"], spare)


STREAMS = """
import logging, os, stat, sys
def main():
    print("to stdout")
    print("to stderr", file=sys.stderr)
    logging.warning("a record")
    return {
        "stdout_is_pipe": stat.S_ISFIFO(os.fstat(1).st_mode),
        "seekable": [sys.stdout.seekable(), sys.stderr.seekable()],
        "write_through": [sys.stdout.write_through, sys.stderr.write_through],
        "same_objects": sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__,
    }
"""


async def test_a_spare_made_its_streams_ahead_and_the_job_output_arrives_through_them(
    sup: Supervisor,
) -> None:
    events, response = await streamed(sup, function_request(STREAMS))
    assert response.success, response.error
    assert response.json_result == {
        "stdout_is_pipe": True,
        "seekable": [False, False],  # made for a pipe, as the job's own are
        "write_through": [True, True],  # nothing held back, as under python -u
        "same_objects": True,
    }
    seen = {(event.stream, event.text.strip()) for event in events}
    assert {
        ("stdout", "to stdout"),
        ("stderr", "to stderr"),
        ("log", "WARNING:root:a record"),
    } <= seen


async def test_a_spare_that_died_is_replaced_without_failing_a_job(sup: Supervisor) -> None:
    template = template_of(sup)
    for _ in range(2):
        dead = template.spare
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        await wait_until(lambda dead=dead: not psutil.pid_exists(dead))  # its template reaped it
        response = await sup.run(function_request(WHO_AM_I))
        assert response.success, response.error
        assert response.timings is not None and "retried" not in response.timings
        assert response.json_result["ppid"] == template.pid != os.getpid()
        assert response.json_result["pid"] != dead


async def test_the_spare_of_a_dead_template_is_reaped(sup: Supervisor) -> None:
    template = template_of(sup)
    spare = template.spare
    assert spare is not None
    os.kill(template.pid, signal.SIGKILL)
    await wait_until(lambda: not template.alive)
    await wait_until(lambda: not psutil.pid_exists(spare))  # it came to us, and we reaped it
