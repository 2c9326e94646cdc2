"""One warm template interpreter: start it, fork job children from it, watch them, stop it.

A template is started with its env's interpreter (runtime and preloads imported, CUDA never
touched) and speaks the protocol described in ``sandbox_child/template.py``, in the vocabulary of
``protocol/messages.py``. Forking from it costs about a fork; a fresh interpreter costs an
interpreter start and imports. Which templates run, and when they stop, is
``supervisor/templates.py``'s (:class:`~sandvisor.supervisor.templates.TemplatePool`).

A template that dies fails every job it was forking, or whose child it was watching, with
:class:`TemplateLost`; the caller runs that job again on a fresh spawn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sandvisor.protocol.frames import EndOfStream, Frame, FrameError
from sandvisor.protocol.messages import COMMAND_FORK, JOB_ENV_VAR, KIND, SPARE_NAME, FrameKind
from sandvisor.supervisor.channel import read_frame_async
from sandvisor.supervisor.escalation import escalate
from sandvisor.supervisor.process import ExitInfo, JobPipes, child_command, wait_for_exit
from sandvisor.supervisor.procfs import read_proc, scan

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 2.0


class TemplateLost(Exception):
    """The template died or broke its protocol; a job waiting on it must be retried elsewhere."""


@dataclass(frozen=True)
class ForkedChild:
    pid: int
    exited: asyncio.Future[ExitInfo | None]


def template_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A job's environment without what marks one job: a template belongs to none."""
    return {name: value for name, value in env.items() if name != JOB_ENV_VAR}


class TemplateProcess:
    """One running template and the exits of the children it forked."""

    def __init__(
        self, python: str, process: subprocess.Popen[bytes], control: socket.socket
    ) -> None:
        self.python = python
        self.pid = process.pid
        # Which file ``python`` was when this template started: an env that GC removed and a
        # later request rebuilt has the same path but is not the env this template loaded.
        self.interpreter = interpreter_identity(python)
        self._control = control
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending_forks: collections.deque[asyncio.Future[ForkedChild]] = collections.deque()
        self._exits: dict[int, asyncio.Future[ExitInfo | None]] = {}
        #: The child the template forked for the next job (see sandbox_child/template.py).
        self.spare: int | None = None
        self._orphans: set[int] = set()  # its children when it died: ours to reap
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.alive = True
        self.last_used = time.monotonic()
        self.preloaded: list[str] = []
        #: The template's environment, which every child it forks starts with (it never changes).
        self.environ: dict[str, str] = {}
        self.cuda_initialized = False  # a preload did it on import: jobs then cannot use CUDA
        self.preload_failed: dict[str, str] = {}  # module -> its import's error
        self.preload_noisy: dict[str, str] = {}  # module -> the output or warning of its import
        self.threads: list[str] = []  # Python threads a preload left running (a fork has none)
        self.device_open: str | None = None  # a GPU device file a preload opened
        self.rss_kb = 0  # its resident set when ready
        self.forks = 0

    @classmethod
    async def start(
        cls, python: str, preload: list[str], env: Mapping[str, str]
    ) -> TemplateProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = ["--template", "--control-fd", str(theirs.fileno())]
        if preload:
            args += ["--preload", ",".join(preload)]
        try:
            process = subprocess.Popen(
                child_command(python, *args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=template_environment(env),
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise TemplateLost(f"cannot start a template with {python}: {exc}") from exc
        finally:
            theirs.close()
        process.returncode = 0  # reaped by wait_for_exit, never by Popen
        template = cls(python, process, ours)
        await template._connect()
        return template

    async def _connect(self) -> None:
        self._control.setblocking(False)
        reader_sock = self._control.dup()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=reader_sock)
        try:
            ready = await self._ready()
        except TemplateLost:
            self._stopping = True
            await self.stop()
            raise
        except asyncio.CancelledError:
            # Cancelled while it started (its pool closed): it must not outlive the wait.
            self._stopping = True
            self._lost("cancelled while starting")
            if self._writer is not None:
                self._writer.close()
            self._control.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)  # a killed process is reaped at once
            raise
        self.preloaded = list(ready.get("preloaded", []))
        self.environ = dict(ready.get("environ") or {})
        self.spare = ready.get("spare")
        self.preload_failed = dict(ready.get("preload_failed") or {})
        for name, error in self.preload_failed.items():
            log.warning("template %s: preload %s failed: %s", self.python, name, error)
        self.preload_noisy = dict(ready.get("preload_noisy") or {})
        self.threads = list(ready.get("threads") or [])
        self.device_open = ready.get("device_open")
        self.rss_kb = int(ready.get("rss_kb") or 0)
        self.cuda_initialized = bool(ready.get("cuda_initialized"))
        if self.cuda_initialized:
            log.warning(
                "template %s: a preload initialized CUDA on import; jobs forked from it cannot "
                "use CUDA (take that module out of SANDVISOR_PRELOAD)",
                self.python,
            )
        self._tasks = [
            asyncio.create_task(self._read_replies()),
            asyncio.create_task(self._watch_exit()),
        ]

    async def _ready(self) -> Frame:
        assert self._reader is not None
        try:
            return await asyncio.wait_for(read_frame_async(self._reader), START_TIMEOUT_S)
        except EndOfStream:
            why = "it ended before it was ready (did a preload crash it?)"
        except FrameError as exc:
            why = f"it broke its protocol ({exc})"
        except asyncio.TimeoutError:
            why = f"it was not ready within {START_TIMEOUT_S:g} s (is a preload stuck?)"
        raise TemplateLost(f"the template for {self.python} did not start: {why}")

    async def fork(self, pipes: JobPipes) -> ForkedChild:
        """Fork a job child with the pipes' child ends as its channel, stdout and stderr."""
        if not self.alive:
            raise TemplateLost("template is not running")
        loop = asyncio.get_running_loop()
        forked: asyncio.Future[ForkedChild] = loop.create_future()
        self.last_used = time.monotonic()
        async with self._send_lock:
            self._pending_forks.append(forked)
            try:
                await self._send_fds(list(pipes.child_fds))
            except OSError as exc:
                self._lost(f"cannot reach it: {exc}")
                raise TemplateLost(f"cannot reach template: {exc}") from exc
        child = await forked
        self.forks += 1
        return child

    async def _send_fds(self, fds: list[int]) -> None:
        while True:
            try:
                socket.send_fds(self._control, [COMMAND_FORK], fds)
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def _read_replies(self) -> None:
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        reason = "its control socket closed"
        try:
            while True:
                frame = await read_frame_async(self._reader)
                self._dispatch(frame, loop)
        except (EndOfStream, ConnectionError):
            pass
        except FrameError as exc:
            reason = f"it broke its protocol ({exc})"
        finally:
            self._lost(reason)

    def _dispatch(self, frame: Frame, loop: asyncio.AbstractEventLoop) -> None:
        kind = frame[KIND]
        if kind == FrameKind.FORKED:
            # The exit future travels with the pid: a quick job may be reaped (and its exit
            # frame read) before the task that asked for the fork runs again.
            exited: asyncio.Future[ExitInfo | None] = loop.create_future()
            self._exits[frame["pid"]] = exited
            self._resolve_next_fork(result=ForkedChild(frame["pid"], exited))
        elif kind == FrameKind.FORK_FAILED:
            self._resolve_next_fork(
                error=TemplateLost(f"template could not fork: {frame.get('error')}")
            )
        elif kind == FrameKind.SPARE:
            self.spare = frame["pid"]
        elif kind == FrameKind.EXIT:
            waiter = self._exits.pop(frame["pid"], None)
            if waiter is not None and not waiter.done():
                info = ExitInfo(frame["status"], frame["maxrss_kb"], frame["utime"], frame["stime"])
                waiter.set_result(info)

    def _resolve_next_fork(
        self, result: ForkedChild | None = None, error: Exception | None = None
    ) -> None:
        if not self._pending_forks:
            return
        waiter = self._pending_forks.popleft()
        if waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(result)

    async def _watch_exit(self) -> None:
        exit_info = await wait_for_exit(self.pid)
        self._lost(exit_info.describe() if exit_info is not None else "it ended")
        await self._reap_orphans()

    async def _reap_orphans(self) -> None:
        """The dead template's children came to us (we are a subreaper): end and reap them.

        They are its jobs in flight and its spare, which the supervisor knows of, and a spare it
        forked but never announced, found by its name. They would end by themselves or be
        killed by their jobs, but only a parent can reap them, and that is now us.
        """
        me = os.getpid()
        unannounced = {
            info.pid for info in scan().values() if info.ppid == me and info.comm == SPARE_NAME
        }
        orphans, self._orphans = self._orphans | unannounced, set()
        for pid in orphans:
            found = read_proc(pid)
            if found is None or found.ppid != me:
                continue  # reaped by the template before it died, or adopted elsewhere
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await wait_for_exit(pid)

    def _lost(self, reason: str) -> None:
        """The template is gone: every waiter learns it now rather than hanging."""
        if not self.alive:
            return
        self.alive = False
        if not self._stopping:
            log.warning("template %s (pid %d) died: %s", self.python, self.pid, reason)
        while self._pending_forks:
            self._resolve_next_fork(error=TemplateLost(f"template died before forking: {reason}"))
        for waiter in self._exits.values():
            if not waiter.done():
                waiter.set_exception(TemplateLost(f"template died while the job ran: {reason}"))
                waiter.exception()  # a job already gone may never await it; no warning then
        self._orphans.update(self._exits)
        if self.spare is not None:
            self._orphans.add(self.spare)
            self.spare = None
        self._exits.clear()

    def strays(self) -> list[int] | None:
        """The template's children that are not jobs it forked; None if the kernel cannot say.

        The template is a child subreaper: a process that a job left running (or that detached
        with ``setsid`` and a double fork) becomes the template's child once the job's own
        process is gone, unless it is still in the job's process group.
        """
        try:  # raw reads: this runs once per job, and a text file object costs more than it
            fd = os.open(f"/proc/{self.pid}/task/{self.pid}/children", os.O_RDONLY)
        except OSError:
            return None  # no CONFIG_PROC_CHILDREN, or the template is gone
        try:
            data = b"".join(iter(lambda: os.read(fd, 65536), b""))
        except OSError:
            return None
        finally:
            os.close(fd)
        return [
            pid for pid in map(int, data.split()) if pid not in self._exits and pid != self.spare
        ]

    def job_left_nothing(self, pid: int) -> bool:
        """Whether job ``pid``, already reaped, certainly left no process behind.

        True only when its process group is empty and the template has no stray children: then
        a scan of the process table would find nothing (and costs more than a short job).
        """
        try:
            os.killpg(pid, 0)
            return False  # something (perhaps a zombie) is still in its group
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        return self.alive and self.strays() == []

    def leftovers(self) -> list[int]:
        """The template's stray children, when they can only be leftovers of jobs that ended.

        A stray is a child the template did not fork: an orphan of one of its jobs. While no
        job of the template runs or is being started, nothing alive can still want it, however
        it was renamed or whatever environment it was given; otherwise none are returned.
        """
        if self._exits or self._pending_forks or not self.alive:
            return []
        return self.strays() or []

    @property
    def busy(self) -> bool:
        return bool(self._exits) or bool(self._pending_forks)

    async def stop(self) -> None:
        """Close the control socket (the template then kills its jobs and leaves), SIGKILL it
        if it has not left within ``STOP_GRACE_S``, and reap it. Raises nothing of its own."""
        self._stopping = True
        self._lost("stopped")
        exited = (
            asyncio.ensure_future(wait_for_exit(self.pid)) if not self._tasks else self._tasks[1]
        )

        async def close_control() -> None:
            if self._writer is not None:
                self._writer.close()
            self._control.close()

        async def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

        await escalate(exited, close_control, kill, STOP_GRACE_S)
        await exited
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def interpreter_identity(python: str) -> tuple[int, int, int] | None:
    """Which file the interpreter path is (a venv's own symlink), None if it is gone.

    The change time is part of it because a filesystem reuses a freed inode number at once.
    """
    try:
        found = os.lstat(python)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_ctime_ns
