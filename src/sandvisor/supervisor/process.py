"""Starting job children and learning how they ended.

A child's end is learned from a pidfd that becomes readable when it exits (no polling, no
SIGCHLD handler that could steal other waiters' statuses), then ``os.wait4`` on exactly that pid,
which also gives its rusage (peak RSS, CPU time) for the classification.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandvisor.protocol.messages import WARM_FAILED_EXIT
from sandvisor.supervisor.confinement import Confinement
from sandvisor.supervisor.procfs import read_proc


@dataclass(frozen=True)
class ExitInfo:
    """How a child ended: its raw wait status and what rusage said about it."""

    status: int
    maxrss_kb: int = 0
    utime: float = 0.0
    stime: float = 0.0

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
        return f"exited with code {self.exit_code}"


def signal_name(signum: int) -> str:
    try:
        return f"{signal.Signals(signum).name}({signum})"
    except ValueError:
        return f"signal {signum}"


@dataclass
class JobPipes:
    """The channels of one job; the child ends go to the child, the rest stay here.

    stdout and stderr are one pipe (the child gets its write end as both): the kernel keeps
    writes to one pipe in the order they were made, so the job's output arrives in program
    order whichever descriptor, stream or process wrote it (see ``protocol.stdio``).
    """

    channel: socket.socket
    child_channel: socket.socket
    output_r: int
    output_w: int
    _child_ends_closed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls) -> JobPipes:
        channel, child_channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output_r, output_w = os.pipe()
        return cls(channel, child_channel, output_r, output_w)

    @property
    def child_fds(self) -> tuple[int, int, int]:
        """The child's channel, stdout and stderr (the same pipe twice)."""
        return self.child_channel.fileno(), self.output_w, self.output_w

    def close_child_ends(self) -> None:
        if not self._child_ends_closed:
            self._child_ends_closed = True
            self.child_channel.close()
            os.close(self.output_w)

    def close(self) -> None:
        self.close_child_ends()
        self.channel.close()
        if self.output_r >= 0:
            try:
                os.close(self.output_r)
            except OSError:
                pass  # a reader already closed it


def child_command(python: Path | str, *args: str) -> list[str]:
    return [str(python), "-m", "sandvisor.sandbox_child", *args]


def start_env_interpreter(
    argv: list[str], confinement: Confinement | None, pass_fds: tuple[int, ...], **kwargs: Any
) -> int:
    """Start an env's interpreter (a template or a job's host) in its own session, in ``/``
    (nothing in the worker's cwd is importable by it), confined when ``confinement`` is given
    (see confinement.py); its pid, reaped by its owner (wait4), never by Popen. Raises OSError."""
    kwargs |= {"stdin": subprocess.DEVNULL, "start_new_session": True, "cwd": "/"}
    if confinement is not None:
        return confinement.popen(argv, pass_fds, **kwargs)
    process = subprocess.Popen(argv, pass_fds=pass_fds, **kwargs)
    process.returncode = 0  # we wait for it ourselves (wait4, for rusage): Popen never tries
    return process.pid


def spawn_job_child(
    python: Path | str,
    pipes: JobPipes,
    env: dict[str, str],
    confinement: Confinement | None = None,
) -> int:
    """A fresh interpreter for one job, in its own session; returns its pid."""
    channel_fd, stdout_w, stderr_w = pipes.child_fds
    argv = child_command(python, "--channel-fd", str(channel_fd))
    return start_env_interpreter(
        argv, confinement, (channel_fd,), stdout=stdout_w, stderr=stderr_w, env=env
    )


def spawn_template(
    python: Path | str,
    preload: list[str],
    env: Mapping[str, str],
    confinement: Confinement | None = None,
) -> tuple[int, socket.socket]:
    """A template interpreter (``sandbox_child --template``) in its own session, importing
    ``preload``, confined when ``confinement`` is given; its pid and our end of its control
    socket. Raises OSError."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    args = ["--template", "--control-fd", str(theirs.fileno())]
    if preload:
        args += ["--preload", ",".join(preload)]
    try:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": dict(env)}
        pid = start_env_interpreter(
            child_command(python, *args), confinement, (theirs.fileno(),), **quiet
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    return pid, ours


async def wait_for_exit(pid: int) -> ExitInfo | None:
    """Wait for our own child ``pid`` to end, without blocking the loop, and reap it.

    None: it was reaped by someone else, so how it ended is unknown.
    """
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return _reap(pid, blocking=True)
    try:
        await readable(loop, pidfd)  # a pidfd reads as ready when its process has exited
    finally:
        os.close(pidfd)
    return _reap(pid, blocking=True)


def _reap(pid: int, blocking: bool) -> ExitInfo | None:
    try:
        waited, status, usage = os.wait4(pid, 0 if blocking else os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    return ExitInfo(status, usage.ru_maxrss, usage.ru_utime, usage.ru_stime)


def warm_loss(status: int) -> str:
    """Why a CUDA-warm spare that exited with wait status ``status`` died, in a few words."""
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == WARM_FAILED_EXIT:
        return "its CUDA warm-up failed"
    return ExitInfo(status).describe()


async def end_adopted(pids: Iterable[int]) -> None:
    """Kill and reap those of ``pids`` that are our children now (a dead template's, which
    came to us as its subreaper's parent); the rest were reaped already or adopted elsewhere."""
    me = os.getpid()
    for pid in pids:
        found = read_proc(pid)
        if found is None or found.ppid != me:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await wait_for_exit(pid)


def group_is_empty(pgid: int) -> bool:
    """Whether process group ``pgid`` has no process left, a zombie included; False when the
    kernel will not say (another user's group)."""
    try:
        os.killpg(pgid, 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


def kill_group(pid: int, signum: int) -> bool:
    """Signal the job's process group (its pid: the child starts its own session)."""
    try:
        os.killpg(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


async def readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Wait until ``fd`` is ready to read: a non-blocking pipe has data or its end, a pidfd's
    process has exited."""
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def interpreter_identity(python: str) -> tuple[int, int, int] | None:
    """Which file the interpreter path is (a venv's own symlink), None if it is gone.

    The change time is part of it because a filesystem reuses a freed inode number at once.
    """
    try:
        found = os.lstat(python)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_ctime_ns
