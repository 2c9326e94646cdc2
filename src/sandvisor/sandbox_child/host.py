"""A spawned job's parent: the fresh interpreter forks once, and the job runs in the child.

Why: a job that signals its parent (``os.kill(os.getppid(), signal.SIGTERM)``, say) must cost
that job at most. A forked job's parent is its template, whose death costs its jobs a retry;
a spawned job's parent would otherwise be the supervisor itself, and with it the whole worker.
The host ignores the signals that ask a process to stop, waits for the job, and then ends as
the job did (its exit code, or its signal), so the supervisor learns how the job ended from the
host's own exit. The supervisor stops a job through its process group, which the host shares.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time

from sandvisor.prctl import become_subreaper
from sandvisor.sandbox_child.runner import run_job

#: Signals that ask a process to stop: the host, which runs no code of the job's, ignores them.
STOP_REQUESTS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def host_job(channel_fd: int) -> None:
    """Run the job on ``channel_fd`` (stdout and stderr are fds 1 and 2) in a child; never returns."""
    become_subreaper()  # what the job orphans comes here, and goes when the job ends
    pid = os.fork()
    if pid == 0:
        run_job(channel_fd, 1, 2)  # never returns
    for signum in STOP_REQUESTS:
        signal.signal(signum, signal.SIG_IGN)
    # The job's channel and output are the job's: its end of them is its own to close.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.close(channel_fd)
    _, status = os.waitpid(pid, 0)
    end_leftovers()
    end_as(status)


def end_leftovers() -> None:
    """Kill and reap what the job left running: every child the host has now is an orphan of
    the job (renamed or not, with an environment of its own or not), and so are theirs, which
    come to the host as their parents die."""
    while children := _children():
        for child in children:
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)  # its group, if it leads one
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        if not _reap_the_dead():
            time.sleep(0.005)  # SIGKILL takes effect soon, not at once


def _reap_the_dead() -> int:
    reaped = 0
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            reaped += 1
    return reaped


def _children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children", "rb") as handle:
            return [int(pid) for pid in handle.read().split()]
    except OSError:
        return []  # no CONFIG_PROC_CHILDREN: the supervisor's tree still finds marked ones


def end_as(status: int) -> None:
    """Leave as the job left: with its exit code, or killed by its signal (and no core file)."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set, nor need be
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
