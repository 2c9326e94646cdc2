"""Process trees with real processes: found, measured, ended, reaped, detached ones included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest

from sandvisor.prctl import become_subreaper
from sandvisor.supervisor.procfs import read_proc, reap_orphans, signal_process, snapshot
from sandvisor.supervisor.proctree import JOB_ENV_VAR, ProcessTree, job_environ, terminate_tree

# A job that forks a child and a detached (setsid + double fork) grandchild, then waits.
FAMILY = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
middle = os.fork()
if middle == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
os.waitpid(middle, 0)  # the grandchild exists and is an orphan from here on
print("ready", flush=True)
time.sleep(60)
"""

IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    assert become_subreaper()


@pytest.fixture
def job_id() -> str:
    return uuid.uuid4().hex


Spawned = list[tuple[subprocess.Popen[str], str]]


@pytest.fixture
def spawned() -> Iterator[Spawned]:
    """Processes a test started; whatever is left of their jobs is killed and reaped after it."""
    procs: Spawned = []
    yield procs
    for proc, job_id in procs:
        for leftover in job_processes(job_id):
            leftover.kill()
        proc.kill()
        proc.wait()
    for zombie in our_zombies():
        os.waitpid(zombie.pid, 0)


def spawn(spawned: Spawned, job_id: str, code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=os.environ | job_environ(job_id),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    spawned.append((proc, job_id))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdout.close()
    return proc


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def job_processes(job_id: str) -> list[psutil.Process]:
    """Independent of ProcessTree: every live process carrying the job's mark."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(JOB_ENV_VAR) == job_id and proc.status() != "zombie":
                found.append(proc)
        except psutil.Error:
            continue
    return found


def our_zombies() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE]


def test_read_proc_describes_ourselves() -> None:
    info = read_proc(os.getpid())
    assert info is not None
    assert info.ppid == os.getppid() and not info.zombie
    assert info.rss_bytes > 1024 * 1024
    assert read_proc(2**22 + 1) is None


def test_the_whole_family_is_found_and_measured(job_id: str, spawned: Spawned) -> None:
    root = spawn(spawned, job_id, FAMILY)
    tree = ProcessTree(job_id, root.pid)
    wait_for(lambda: tree.sample().procs == 3)
    sample = tree.sample()
    assert root.pid in sample.pids
    assert set(sample.pids) == {p.pid for p in job_processes(job_id)}
    assert sample.rss_bytes > 3 * 1024 * 1024
    assert tree.seen >= 3


async def test_terminate_tree_leaves_nothing(job_id: str, spawned: Spawned) -> None:
    root = spawn(spawned, job_id, FAMILY)
    tree = ProcessTree(job_id, root.pid)
    wait_for(lambda: tree.sample().procs == 3)
    result = await terminate_tree(tree, grace_s=2.0)
    assert result.terminated == 3 and result.killed == 0 and not result.survivors
    root.wait(timeout=5)
    tree.refresh()
    tree.reap()
    assert job_processes(job_id) == []
    assert our_zombies() == []


async def test_a_detached_process_is_claimed_by_its_mark(job_id: str, spawned: Spawned) -> None:
    # The detached grandchild's parents are gone before the tree ever looks.
    root = spawn(spawned, job_id, FAMILY)
    wait_for(lambda: len(job_processes(job_id)) == 3)
    orphan = next(p for p in job_processes(job_id) if p.ppid() == os.getpid() and p.pid != root.pid)
    tree = ProcessTree(job_id, root.pid)
    assert orphan.pid in tree.sample().pids
    await terminate_tree(tree, grace_s=1.0)
    root.wait(timeout=5)
    assert not orphan.is_running()


async def test_sigterm_ignored_means_sigkill_after_grace(job_id: str, spawned: Spawned) -> None:
    root = spawn(spawned, job_id, IGNORES_SIGTERM)
    tree = ProcessTree(job_id, root.pid)
    started = time.monotonic()
    result = await terminate_tree(tree, grace_s=0.3)
    assert result.killed == 1 and not result.survivors
    assert 0.3 <= time.monotonic() - started < 3
    assert root.wait(timeout=5) == -signal.SIGKILL


async def test_other_processes_are_never_touched(job_id: str, spawned: Spawned) -> None:
    bystander = spawn(spawned, "someone-else", IGNORES_SIGTERM)
    root = spawn(spawned, job_id, IGNORES_SIGTERM)
    tree = ProcessTree(job_id, root.pid)
    await terminate_tree(tree, grace_s=0.1)
    assert bystander.poll() is None
    assert bystander.pid not in tree.members


def test_a_reused_pid_is_not_signalled(job_id: str, spawned: Spawned) -> None:
    root = spawn(spawned, job_id, IGNORES_SIGTERM)
    info = read_proc(root.pid)
    assert info is not None
    assert not signal_process(root.pid, info.start_ticks + 1, signal.SIGKILL)
    assert root.poll() is None
    assert signal_process(root.pid, info.start_ticks, signal.SIGKILL)
    assert root.wait(timeout=5) == -signal.SIGKILL
    assert not signal_process(root.pid, info.start_ticks, signal.SIGKILL)


def test_reap_orphans_takes_only_zombie_children_of_ours() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert reap_orphans([child.pid, os.getpid(), 1]) == []  # alive, us, not ours
        child.kill()
        wait_for(lambda: (info := read_proc(child.pid)) is not None and info.zombie)
        assert reap_orphans([child.pid]) == [child.pid]
    finally:
        child.kill()
        child.wait()  # already reaped: Popen copes with ECHILD


def test_the_process_table_is_shared_between_samples() -> None:
    first = snapshot(max_age_s=60)
    assert snapshot(max_age_s=60) is first
    assert snapshot(max_age_s=0) is not first
