"""A spawned job's host ends exactly as its job did: the supervisor reads the job's end from it."""

from __future__ import annotations

import os
import signal

import pytest

from sandvisor.sandbox_child.host import end_as


def status_of(job: str) -> int:
    """The wait status of a process that ran ``job`` (exit 3, or a signal) in a child of its own."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        if job == "exit 3":
            os._exit(3)
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGKILL if job == "sigkill" else signal.SIGSEGV)
        os._exit(99)
    return os.waitpid(pid, 0)[1]


def hosted_status(job: str) -> int:
    """The wait status of a host whose job ended as ``job`` did."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            end_as(status_of(job))
        finally:
            os._exit(98)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("job", ["exit 3", "sigkill", "segfault"])
def test_the_host_ends_as_its_job_did(job: str) -> None:
    # Compared as exit codes (-N for signal N): a core dump flag may differ, the end may not.
    assert os.waitstatus_to_exitcode(hosted_status(job)) == os.waitstatus_to_exitcode(
        status_of(job)
    )
