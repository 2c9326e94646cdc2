"""Threads count toward max_procs: the watchdog counts every task of the job's tree, and a job
identity's RLIMIT_NPROC (max_procs plus a margin) bounds its processes and threads kernel-side.
Runs as root, where jobs run as identities."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from tests.helpers import function_request, make_settings

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.limits import NPROC_MARGIN

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="job identities need a root supervisor"),
]

# Starts up to ``count`` threads that wait (those the kernel refuses are counted), then waits,
# bounded, for the watchdog.
THREADS = """
import threading, time
def main(count):
    threading.stack_size(65536)
    stop, started, refused = threading.Event(), 0, 0
    for _ in range(count):
        try:
            threading.Thread(target=stop.wait, args=(60,), daemon=True).start()
            started += 1
        except RuntimeError:
            refused += 1
    time.sleep(30)
    stop.set()
    return [started, refused]
"""


async def test_a_job_starting_many_threads_is_stopped_with_process_limit(
    identity_sup: Supervisor,
) -> None:
    request = function_request(THREADS, args=[300], limits={"max_procs": 50, "timeout_s": 60})
    response = await asyncio.wait_for(identity_sup.run(request), 60)
    assert not response.success
    assert response.error_type is ErrorType.PROCESS_LIMIT, response.error
    assert "threads" in (response.error or "")


async def test_a_job_identity_has_rlimit_nproc_of_its_max_procs(tmp_path: Path) -> None:
    code = (
        "import resource, threading\n"
        "def main():\n"
        "    stop, started = threading.Event(), 0\n"
        "    threading.stack_size(65536)\n"
        "    try:\n"
        "        for _ in range(500):\n"
        "            threading.Thread(target=stop.wait, args=(30,), daemon=True).start()\n"
        "            started += 1\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "    stop.set()\n"
        "    return [resource.getrlimit(resource.RLIMIT_NPROC)[0], started]\n"
    )
    limits = {"max_procs": 100, "timeout_s": 60}
    # The watchdog looks seldom here: the kernel's limit is what stops the threads.
    settings = make_settings(tmp_path / "home", watch_interval_s=30.0)
    async with Supervisor(settings) as sup:
        assert sup.privilege.switching, sup.privilege.reason
        response = await asyncio.wait_for(sup.run(function_request(code, limits=limits)), 60)
    assert response.success, response.error
    nproc, started = response.json_result
    assert nproc == 100 + NPROC_MARGIN
    assert started < nproc  # refused by the kernel before 500
