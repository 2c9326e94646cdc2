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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sandvisor.protocol.frames import EndOfStream, Frame, FrameError, encode_frame
from sandvisor.protocol.messages import (
    COMMAND_DROP_WARM,
    COMMAND_FORK,
    COMMAND_FORK_WARM,
    COMMAND_WARM,
    KIND,
    SPARE_NAME,
    FrameKind,
    warm_frame,
)
from sandvisor.supervisor.channel import read_frame_async
from sandvisor.supervisor.confinement import Confinement
from sandvisor.supervisor.escalation import escalate
from sandvisor.supervisor.policy import template_environment
from sandvisor.supervisor.process import (
    ExitInfo,
    JobPipes,
    end_adopted,
    group_is_empty,
    interpreter_identity,
    spawn_template,
    wait_for_exit,
    warm_loss,
)
from sandvisor.supervisor.procfs import children_of, scan
from sandvisor.supervisor.template_ready import TemplateReady

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 2.0


class TemplateLost(Exception):
    """The template died or broke its protocol; a job waiting on it must be retried elsewhere."""


@dataclass(frozen=True)
class ForkedChild:
    pid: int
    exited: asyncio.Future[ExitInfo | None]


class TemplateProcess:
    """One running template and the exits of the children it forked."""

    def __init__(self, python: str, pid: int, control: socket.socket) -> None:
        self.python = python
        self.pid = pid
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
        self.ready = TemplateReady()  # what it said of itself when it started
        #: GPU set -> pid of its CUDA-warm spare, as the template announced them (once warm)
        self.warm_spares: dict[str, int] = {}
        #: Told of each announcement: (this template, GPU set, [free, total] MiB per device)
        self.on_warm: Callable[[TemplateProcess, str, list[list[int]]], None] | None = None
        #: GPU set -> warm spares of it that died before a job (their warm-up failed, mostly)
        self.warm_failures: collections.Counter[str] = collections.Counter()
        self.forks = 0

    @classmethod
    async def start(
        cls,
        python: str,
        preload: list[str],
        env: Mapping[str, str],
        confinement: Confinement | None = None,
    ) -> TemplateProcess:
        """A template of ``python`` importing ``preload``, started with ``env`` (less any job's
        marks), confined when ``confinement`` is given, and ready. Raises TemplateLost when it
        cannot start or never gets ready."""
        try:
            environ = template_environment(env)
            pid, control = spawn_template(python, preload, environ, confinement)
        except OSError as exc:
            raise TemplateLost(f"cannot start a template with {python}: {exc}") from exc
        template = cls(python, pid, control)
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
        self.ready = TemplateReady.from_frame(ready)
        self.spare = self.ready.spare
        for name, error in self.ready.preload_failed.items():
            log.warning("template %s: preload %s failed: %s", self.python, name, error)
        if self.ready.cuda_initialized:
            log.warning(
                "template %s: a preload initialized CUDA on import; jobs forked from it cannot "
                "use CUDA (take that module out of SANDVISOR_PRELOAD)",
                self.python,
            )
        self._tasks = [
            asyncio.create_task(self._read_replies()),
            asyncio.create_task(self._watch_exit()),
        ]

    @property
    def environ(self) -> dict[str, str]:
        """The environment every child it forks starts with."""
        return self.ready.environ

    @property
    def preloaded(self) -> list[str]:
        """The modules it imported before forking anything."""
        return self.ready.preloaded

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

    async def fork(self, pipes: JobPipes, gpus: str | None = None) -> ForkedChild:
        """Fork a job child with the pipes' child ends as its channel, stdout and stderr.

        ``gpus`` (the job's CUDA_VISIBLE_DEVICES): the child is that set's CUDA-warm spare when
        the template has one (:meth:`warm`), the plain spare otherwise.
        """
        if not self.alive:
            raise TemplateLost("template is not running")
        loop = asyncio.get_running_loop()
        forked: asyncio.Future[ForkedChild] = loop.create_future()
        self.last_used = time.monotonic()
        warm = gpus is not None and self.warm_spares.pop(gpus, None) is not None
        async with self._send_lock:
            self._pending_forks.append(forked)
            try:
                await self._send_fds(COMMAND_FORK_WARM if warm else COMMAND_FORK, pipes.child_fds)
                if warm:
                    await loop.sock_sendall(self._control, encode_frame(warm_frame(gpus)))
            except OSError as exc:
                self._lost(f"cannot reach it: {exc}")
                raise TemplateLost(f"cannot reach template: {exc}") from exc
        child = await forked
        self.forks += 1
        return child

    async def warm(self, gpus: str, library: str, warmup: str = "") -> None:
        """Have the template fork a spare CUDA-warm for ``gpus`` (see sandbox_child/cuda_warm.py),
        unless it has one; it is announced in :attr:`warm_spares`. Raises TemplateLost."""
        await self._command(COMMAND_WARM, warm_frame(gpus, library=library, warmup=warmup))

    async def drop_warm(self, gpus: str) -> None:
        """Kill the spare warm for ``gpus``, if any, announced yet or not (its GPU memory is
        needed elsewhere). Raises TemplateLost."""
        self.warm_spares.pop(gpus, None)
        await self._command(COMMAND_DROP_WARM, warm_frame(gpus))

    async def _command(self, command: bytes, frame: Frame) -> None:
        if not self.alive:
            raise TemplateLost("template is not running")
        async with self._send_lock:
            try:
                await asyncio.get_running_loop().sock_sendall(
                    self._control, command + encode_frame(frame)
                )
            except OSError as exc:
                self._lost(f"cannot reach it: {exc}")
                raise TemplateLost(f"cannot reach template: {exc}") from exc

    async def _send_fds(self, command: bytes, fds: tuple[int, ...]) -> None:
        while True:
            try:
                socket.send_fds(self._control, [command], list(fds))
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
        elif kind == FrameKind.WARM:
            self.warm_spares[frame["gpus"]] = frame["pid"]
            if self.on_warm is not None:
                self.on_warm(self, frame["gpus"], list(frame.get("memory") or []))
        elif kind == FrameKind.WARM_LOST:
            self._warm_lost(frame)
        elif kind == FrameKind.EXIT:
            waiter = self._exits.pop(frame["pid"], None)
            if waiter is not None and not waiter.done():
                info = ExitInfo(frame["status"], frame["maxrss_kb"], frame["utime"], frame["stime"])
                waiter.set_result(info)

    def _warm_lost(self, frame: Frame) -> None:
        gpus = frame["gpus"]
        if self.warm_spares.get(gpus) == frame["pid"]:
            del self.warm_spares[gpus]
        self.warm_failures[gpus] += 1
        why = warm_loss(frame["status"])
        log.warning("template %s: the warm spare for GPU(s) %s died: %s", self.python, gpus, why)

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
        await end_adopted(orphans)

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
        self._orphans.update(self.warm_spares.values())
        self.warm_spares.clear()
        self._exits.clear()

    def strays(self) -> list[int] | None:
        """The template's children that are not jobs it forked; None if the kernel cannot say.

        The template is a child subreaper: a process that a job left running (or that detached
        with ``setsid`` and a double fork) becomes the template's child once the job's own
        process is gone, unless it is still in the job's process group.
        """
        children = children_of(self.pid)
        if children is None:
            return None
        warm = self.warm_spares.values()
        return [
            pid
            for pid in children
            if pid not in self._exits and pid != self.spare and pid not in warm
        ]

    def job_left_nothing(self, pid: int) -> bool:
        """Whether job ``pid``, already reaped, certainly left no process behind.

        True only when its process group is empty and the template has no stray children: then
        a scan of the process table would find nothing (and costs more than a short job).
        """
        return group_is_empty(pid) and self.alive and self.strays() == []

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
