"""What makes a process a job's own: session, descriptors, limits, environment."""

from __future__ import annotations

import _signal
import fcntl
import io
import os
import resource
import signal
import sys
from typing import Any

from sandvisor.protocol import stdio
from sandvisor.protocol.messages import CHANNEL_FD
from sandvisor.sandbox_child.logs import current_level


def own_session() -> None:
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader (started with start_new_session)


def install_descriptors(channel_fd: int, stdout_fd: int, stderr_fd: int) -> int:
    """Make fds 0/1/2 /dev/null, stdout, stderr; move the channel to fd 3; close all others."""
    # Lift all three out of the way first, so no dup2 below overwrites one still needed.
    channel, stdout, stderr = (
        fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (channel_fd, stdout_fd, stderr_fd)
    )
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    # Not inheritable: a subprocess of the job never holds the protocol channel open.
    os.dup2(channel, CHANNEL_FD, inheritable=False)
    os.closerange(CHANNEL_FD + 1, _max_fd())
    return CHANNEL_FD


def close_other_fds(keep: int) -> None:
    """Close every descriptor above stderr except ``keep``."""
    os.closerange(CHANNEL_FD, keep)
    os.closerange(keep + 1, _max_fd())


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 65536


def reset_signals() -> None:
    """A forked child starts from default dispositions, not the template's.

    Through ``_signal``, the C module under ``signal``: the wrapper turns each previous handler
    into an enum, which for a Python handler raises and formats a ValueError, and in a forked
    child that costs dozens of page copies.
    """
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        _signal.signal(signum, _signal.SIG_DFL)
    _signal.signal(signal.SIGINT, signal.default_int_handler)
    _signal.signal(signal.SIGPIPE, _signal.SIG_IGN)  # as a fresh interpreter has it


def apply_limits(rlimits: dict[str, list[int]], oom_score_adj: int | None) -> None:
    for name, (soft, hard) in rlimits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    if oom_score_adj is not None:
        try:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, str(oom_score_adj).encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # not Linux, or no permission: the watchdog still enforces memory


def name_process(name: str | None) -> None:
    """Take the job's process name: descendants forked without an exec inherit it, and the
    supervisor finds by it those that detached (their environment is still the template's)."""
    if not name:
        return
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY)
        try:
            os.write(fd, name.encode()[:15])
        finally:
            os.close(fd)
    except OSError:
        pass  # not Linux: process groups and the job variable still mark the job's processes


def apply_job_environment(job: dict[str, Any]) -> None:
    """The job's environment: sent whole to a spawned child, as changes to a forked one.

    A forked child starts with its template's environment, so the supervisor sends only what
    differs (``env_set``, ``env_unset``): decoding and comparing the whole of it costs a forked
    hello-world job about a tenth of its time.
    """
    if "env" in job:
        replace_environment(job["env"])
    else:
        for name in job.get("env_unset", ()):
            os.environ.pop(name, None)
        for name, value in job.get("env_set", {}).items():
            os.environ[name] = value
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:  # a preload may have asked it already: TMPDIR is the job's now
        tempfile.tempdir = None


def replace_environment(env: dict[str, str]) -> None:
    """Make the environment exactly ``env``, changing only the variables that differ.

    A forked child starts with its template's environment, which is the job's less its marks;
    touching only the differences keeps the rest of the template's pages shared (a clear and
    refill would copy them all, and costs a forked hello-world job about a tenth of its time).
    """
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def stand_in_stdio() -> None:
    """Put a pipe that nobody reads on fds 1 and 2, until the job's own is put there.

    So that streams made ahead of the job (in a spare) are made for a pipe, as the job's are,
    rather than for the template's /dev/null, which is seekable.
    """
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(read_end)
    os.close(write_end)


class StderrRecords(io.RawIOBase):
    """The raw layer under ``sys.stderr``: each write goes to fd 2 at once, as stderr records.

    fds 1 and 2 are one pipe (so the kernel keeps their writes in order); the records are how the
    supervisor still tells what Python's stderr wrote from stdout (``protocol.stdio``). Writes to
    the descriptor itself (``os.write(2, ...)``, subprocesses, C code) are plain output.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def write(self, data: Any) -> int:  # bytes-like, as io.RawIOBase.write takes
        payload = bytes(data)
        level = current_level()
        if level is not None:  # a logging handler's line: the same text, marked with its level
            stdio.write_records(self._fd, stdio.log_records(level, payload))
        elif len(payload) <= stdio.PAYLOAD_MAX:  # the usual case: one record, no generator
            stdio.write_records(self._fd, (stdio.record(stdio.STDERR, payload),))
        else:
            stdio.write_records(self._fd, stdio.stderr_records(payload))
        return len(payload)


def unbuffered_stdio() -> None:
    """Fresh text streams on fds 1 and 2 that hold nothing back, as ``python -u`` makes them.

    Every write reaches the pipe before it returns (unbuffered raw layer, ``write_through``), so
    output is in program order with logging and subprocesses, and a job that dies abruptly
    (``os._exit``, a signal, SIGKILL) loses nothing it wrote, a partial line included.
    New objects rather than reconfigured ones: in a forked child the inherited wrappers describe
    the template's descriptors (seekable /dev/null), not the job's pipe.
    """
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        StderrRecords(2), encoding="utf-8", errors="backslashreplace", write_through=True
    )
