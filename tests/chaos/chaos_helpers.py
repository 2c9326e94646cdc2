"""What every chaos scenario checks after a hostile job: nothing of it left, nothing leaked."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psutil
from tests.helpers import function_request

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.proctree import JOB_ENV_VAR, job_comm

T = TypeVar("T")

HELLO = function_request("def main(name):\n    return f'hello {name}'\n", args=["again"])


def own_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def own_threads() -> int:
    return psutil.Process().num_threads()


def job_processes(job_id: str) -> list[psutil.Process]:
    """Every process on the machine that bears the job's name or variable, zombies included."""
    found = []
    comm = job_comm(job_id)
    for proc in psutil.process_iter():
        try:
            if proc.name() == comm or proc.environ().get(JOB_ENV_VAR) == job_id:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def zombies_of_ours() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def settled(check: Callable[[], T], within_s: float = 2.0) -> T:
    """``check()``'s value once it is falsy (all settled), else its last value after ``within_s``.

    The opposite sense of ``tests.helpers.eventually`` (which waits for a truthy condition): here
    the check lists what is still left over, and the value is there for the assert's message.
    """
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@dataclass
class Baseline:
    fds: int
    threads: int
    children: int

    @classmethod
    def take(cls) -> Baseline:
        return cls(own_fds(), own_threads(), len(psutil.Process().children()))


async def assert_clean(sup: Supervisor, job_id: str, baseline: Baseline) -> None:
    """No process of the job, no zombie, fds/threads/children back to baseline, next job runs."""
    # No wait: when run() has answered, the job's processes must already be gone.
    assert [p.pid for p in job_processes(job_id) if _alive(p)] == []
    assert settled(lambda: [p.pid for p in job_processes(job_id)]) == []
    assert settled(zombies_of_ours) == []
    assert settled(lambda: own_fds() > baseline.fds) is False, (own_fds(), baseline.fds)
    assert settled(lambda: own_threads() > baseline.threads) is False
    children = len(psutil.Process().children())
    assert children <= baseline.children, (children, baseline.children)
    response = await sup.run(HELLO)
    assert response.success, response.error
    assert response.json_result == "hello again"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
