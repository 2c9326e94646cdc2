"""Warm template interpreters, one per environment, that fork a fresh child per job.

A template is started with its env's interpreter (runtime and preloads imported, CUDA never
touched) and speaks the protocol described in ``sandbox_child/template.py``. Forking from it costs
about a fork; a fresh interpreter costs an interpreter start and imports. A template that dies is
replaced on its next use; jobs it was forking for see :class:`TemplateLost` and are retried on a
fresh spawn by the caller.
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
from dataclasses import dataclass
from pathlib import Path

from sandvisor.protocol.frames import EndOfStream, Frame, FrameError
from sandvisor.sandbox_child.template import COMMAND_FORK
from sandvisor.supervisor.channel import read_frame_async
from sandvisor.supervisor.process import ExitInfo, JobPipes, child_command, wait_for_exit

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

    def __init__(
        self, python: str, process: subprocess.Popen[bytes], control: socket.socket
    ) -> None:
        self.python = python
        self.pid = process.pid
        self._control = control
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending_forks: collections.deque[asyncio.Future[int]] = collections.deque()
        self._exits: dict[int, asyncio.Future[ExitInfo | None]] = {}
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.alive = True
        self.last_used = time.monotonic()
        self.preloaded: list[str] = []

    @classmethod
    async def start(cls, python: str, preload: list[str], env: dict[str, str]) -> TemplateProcess:
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
                env=env,
                start_new_session=True,
            )
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
            ready = await asyncio.wait_for(read_frame_async(self._reader), START_TIMEOUT_S)
        except (EndOfStream, FrameError, asyncio.TimeoutError) as exc:
            await self.stop()
            raise TemplateLost(f"template for {self.python} did not start: {exc!r}") from exc
        self.preloaded = list(ready.get("preloaded", []))
        for name, error in (ready.get("preload_failed") or {}).items():
            log.warning("template %s: preload %s failed: %s", self.python, name, error)
        self._tasks = [
            asyncio.create_task(self._read_replies()),
            asyncio.create_task(self._watch_exit()),
        ]

    async def fork(self, pipes: JobPipes) -> ForkedChild:
        """Fork a job child with the pipes' child ends as its channel, stdout and stderr."""
        if not self.alive:
            raise TemplateLost("template is not running")
        loop = asyncio.get_running_loop()
        forked: asyncio.Future[int] = loop.create_future()
        async with self._send_lock:
            self._pending_forks.append(forked)
            try:
                await self._send_fds(list(pipes.child_fds))
            except OSError as exc:
                self._pending_forks.remove(forked)
                self._lost()
                raise TemplateLost(f"cannot reach template: {exc}") from exc
        self.last_used = time.monotonic()
        pid = await forked
        return ForkedChild(pid, self._exits[pid])

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
        try:
            while True:
                frame = await read_frame_async(self._reader)
                self._dispatch(frame, loop)
        except (EndOfStream, FrameError, ConnectionError):
            pass
        finally:
            self._lost()

    def _dispatch(self, frame: Frame, loop: asyncio.AbstractEventLoop) -> None:
        kind = frame["t"]
        if kind == "forked":
            self._exits[frame["pid"]] = loop.create_future()
            self._resolve_next_fork(result=frame["pid"])
        elif kind == "fork_failed":
            self._resolve_next_fork(
                error=TemplateLost(f"template could not fork: {frame.get('error')}")
            )
        elif kind == "exit":
            waiter = self._exits.pop(frame["pid"], None)
            if waiter is not None and not waiter.done():
                info = ExitInfo(frame["status"], frame["maxrss_kb"], frame["utime"], frame["stime"])
                waiter.set_result(info)

    def _resolve_next_fork(self, result: int | None = None, error: Exception | None = None) -> None:
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
        await wait_for_exit(self.pid)
        self._lost()

    def _lost(self) -> None:
        """The template is gone: every waiter learns it now rather than hanging."""
        if not self.alive:
            return
        self.alive = False
        while self._pending_forks:
            self._resolve_next_fork(error=TemplateLost("template died before forking"))
        for waiter in self._exits.values():
            if not waiter.done():
                waiter.set_exception(TemplateLost("template died while the job ran"))
        self._exits.clear()

    @property
    def busy(self) -> bool:
        return bool(self._exits) or bool(self._pending_forks)

    async def stop(self) -> None:
        """Close the control socket (the template then kills its jobs and leaves) and reap it."""
        self._lost()
        if self._writer is not None:
            self._writer.close()
        self._control.close()
        exited = (
            asyncio.ensure_future(wait_for_exit(self.pid)) if not self._tasks else self._tasks[1]
        )
        done, _ = await asyncio.wait({exited}, timeout=STOP_GRACE_S)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await exited
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class TemplatePool:
    """At most ``limit`` templates, keyed by interpreter; the least recently used stops first."""

    def __init__(self, limit: int, preload: list[str], env: dict[str, str]) -> None:
        self._limit = max(1, limit)
        self._preload = preload
        self._env = env
        self._templates: dict[str, TemplateProcess] = {}
        self._starting: dict[str, asyncio.Task[TemplateProcess]] = {}

    async def get(self, python: Path | str) -> TemplateProcess:
        key = str(python)
        template = self._templates.get(key)
        if template is not None and template.alive:
            return template
        if template is not None:
            log.info("template for %s died; starting a new one", key)
            self._templates.pop(key)
            await template.stop()
        if key not in self._starting:
            self._starting[key] = asyncio.create_task(self._start(key))
        try:
            return await asyncio.shield(self._starting[key])
        finally:
            if self._starting.get(key) is not None and self._starting[key].done():
                self._starting.pop(key, None)

    async def _start(self, key: str) -> TemplateProcess:
        template = await TemplateProcess.start(key, self._preload, self._env)
        self._templates[key] = template
        await self._evict_over_limit()
        return template

    async def _evict_over_limit(self) -> None:
        while len(self._templates) > self._limit:
            idle = [name for name, template in self._templates.items() if not template.busy]
            if not idle:
                return  # every template has jobs in flight; trim on a later start
            oldest = min(idle, key=lambda name: self._templates[name].last_used)
            log.info("stopping least recently used template %s", oldest)
            await self._templates.pop(oldest).stop()

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        templates, self._templates = list(self._templates.values()), {}
        await asyncio.gather(*(template.stop() for template in templates), return_exceptions=True)
