"""A job's tree claims detached processes by its own name, never by a look-alike's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from tests.helpers import eventually, function_request

from sandvisor.protocol.messages import SPARE_NAME
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.proctree import ProcessTree, job_comm

# Takes the name it is given, leaves our session, and waits: a detached process of some job.
NAMED = """
import sys
with open("/proc/self/comm", "w") as comm:
    comm.write(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def named_process(procs: list[subprocess.Popen[str]], name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", NAMED, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(
    ("owner", "claimed"),
    [("sync-aaaaaaaa-1", True), ("sync-aaaaaaaa-2", False), ("spare", False)],
)
def test_a_detached_process_is_claimed_by_its_own_jobs_name_only(
    started: list[subprocess.Popen[str]], owner: str, claimed: bool
) -> None:
    root = named_process(started, "root")
    detached = named_process(started, job_comm(owner))
    tree = ProcessTree("sync-aaaaaaaa-1", root.pid)
    assert (detached.pid in tree.sample().pids) is claimed


async def test_a_job_named_spare_is_not_taken_for_a_spare(supervisor: Supervisor) -> None:
    code = "def main():\n    return open('/proc/self/comm').read().strip()\n"
    response = await supervisor.run(function_request(code), job_id="spare")
    assert response.success, response.error
    assert response.json_result == job_comm("spare") != SPARE_NAME
    templates = supervisor.templates
    assert templates is not None
    spares = [t.spare for t in templates.running.values() if t.spare is not None]
    # The next spare is forked after the answer and names itself a moment later.
    assert await eventually(lambda: all(psutil.Process(p).name() == SPARE_NAME for p in spares))
