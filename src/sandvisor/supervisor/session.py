"""One child process seen from the supervisor: the mechanics a job and an actor share.

    start: pipes -> job frame (in the channel before the child exists) -> fork from the env's
           template, or spawn (and spawn when the template is lost) -> process tree
           -> a pump for the output pipe (fds 1 and 2), a reader for the channel's frames
    exchange: each frame goes to its owner's handler for its kind (a dispatch table); output
           goes to the session's sink, which its owner may swap (an actor's calls)
    end:   terminate the tree (SIGTERM, grace, SIGKILL) -> close

A one-shot job uses one session once; an actor uses one session for N calls. What a frame
means (an answer, a call's result) is the owner's; the session only moves bytes and watches
processes. User code never runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sandvisor.protocol.frames import EndOfStream, Frame, FrameError, encode_frame
from sandvisor.protocol.messages import KIND, REPORT_IMPORTS
from sandvisor.supervisor.channel import read_frame_async
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.heartbeat import heartbeat
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.oom import oom_kill_count
from sandvisor.supervisor.output import OutputDemux, Piece
from sandvisor.supervisor.process import (
    ExitInfo,
    JobPipes,
    kill_group,
    readable,
    spawn_job_child,
    wait_for_exit,
)
from sandvisor.supervisor.proctree import ProcessTree, terminate_tree
from sandvisor.supervisor.templates import TemplateLost, TemplatePool, TemplateProcess
from sandvisor.supervisor.warm_spares import gpu_set
from sandvisor.supervisor.watchdog import GpuMemoryReader, Watchdog

if TYPE_CHECKING:  # job.py runs its job on a session: a runtime import would be a cycle
    from sandvisor.supervisor.job import JobSpec

#: How long output pipes may stay open after the child is gone and its tree killed.
DRAIN_TIMEOUT_S = 2.0
READ_CHUNK = 256 * 1024
#: Room in a frame beyond its result, for the frame's other fields.
FRAME_OVERHEAD = 1024 * 1024

FrameHandler = Callable[[Frame], Awaitable[None]]
#: Called once when the channel ends: None at a clean end, else how it broke.
ChannelEnd = Callable[[Exception | None], Awaitable[None]]
Fallback = Callable[[TemplateLost], Awaitable[None]]


class OutputSink(Protocol):
    """Where the child's output goes (a JobContext, or an actor's idle buffer)."""

    async def emit(self, event: LogEvent) -> None: ...


def send_ahead(channel: socket.socket, frame: bytes) -> bytes:
    """Write what fits of ``frame`` now, without blocking; returns what is left to send."""
    channel.setblocking(False)
    try:
        sent = channel.send(frame)
    except (BlockingIOError, InterruptedError):
        sent = 0
    return frame[sent:]


def read_some(fd: int) -> bytes | None:
    """One non-blocking read: data, ``b""`` at end of file, None when the pipe is empty."""
    try:
        return os.read(fd, READ_CHUNK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""  # closed under us: as good as the end


def oom_kills_since(before: int | None) -> int | None:
    """Kernel OOM kills since ``before`` (a reading of :func:`oom_kill_count`); None unknown."""
    if before is None:
        return None
    return (oom_kill_count() or before) - before


class ChildSession:
    """One child: ``start`` once, exchange frames until the channel ends, ``terminate``, ``close``.

    ``handlers`` maps a frame kind to its handler; a frame of a kind not in it is ignored (the
    child's kinds are a fixed vocabulary, and neither owner has ever acted on others).
    """

    def __init__(
        self,
        spec: JobSpec,
        templates: TemplatePool | None,
        handlers: Mapping[str, FrameHandler],
        sink: OutputSink,
        *,
        max_result_bytes: int,
        on_channel_end: ChannelEnd | None = None,
        on_fallback: Fallback | None = None,
    ) -> None:
        self.spec = spec
        self.sink = sink
        self._templates = templates
        self._handlers = dict(handlers)
        self._max_frame = max_result_bytes + FRAME_OVERHEAD
        self._on_channel_end = on_channel_end
        self._on_fallback = on_fallback
        self.pid: int | None = None
        self.tree: ProcessTree | None = None
        self.template: TemplateProcess | None = None  # the one that forked the child, if any
        self.exited: asyncio.Future[ExitInfo | None] | None = None
        self.launched_at: float | None = None
        self.retried_on_spawn = False
        self._pipes: JobPipes | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Future[None]] = []  # the output pump, then the frame reader
        self._demux = OutputDemux()
        self._output_lock = asyncio.Lock()
        self._output_fd = -1

    # -- start ---------------------------------------------------------------------------------

    async def start(self, extra: Mapping[str, Any] | None = None) -> None:
        """Launch the child with the spec's job frame (plus ``extra`` fields): forked from the
        env's template when there is a pool, spawned when there is none or its template is lost
        (``on_fallback`` is told first). Raises what launching raises (OSError)."""
        if self._templates is not None:
            try:
                await self._launch(extra or {}, use_template=True)
                return
            except TemplateLost as exc:
                self.retried_on_spawn = True
                if self._on_fallback is not None:
                    await self._on_fallback(exc)
        await self._launch(extra or {}, use_template=False)

    async def _launch(self, extra: Mapping[str, Any], use_template: bool) -> None:
        pipes = JobPipes.create()
        try:
            unsent = await self._fork_or_spawn(pipes, extra, use_template)
        except BaseException:
            pipes.close()
            raise
        pipes.close_child_ends()
        self._pipes = pipes
        self.launched_at = time.monotonic()
        # Its template is a subreaper: what the child's processes orphan goes there, not to us.
        assert self.pid is not None
        template = self.template
        identity = self.spec.identity
        self.tree = ProcessTree(
            self.spec.job_id,
            self.pid,
            adopters=(template.pid,) if template is not None else (),
            hosted=template is None,
            uid=identity.uid if identity is not None else None,
        )
        await self._start_readers(pipes, unsent)

    async def _fork_or_spawn(
        self, pipes: JobPipes, extra: Mapping[str, Any], use_template: bool
    ) -> bytes:
        """Send the job frame ahead and start the child; what of the frame is left to send."""
        template = None
        if use_template and self._templates is not None:
            template = await self._template(self._templates)
        # The job frame is in the channel before the child exists: it reads it as soon as it
        # starts, rather than after a round trip that tells us its pid. A forked child gets
        # its environment as the changes from its template's.
        frame = self.spec.job_frame(template.environ if template is not None else None)
        if template is not None and self._templates is not None and self._templates.learning:
            frame[REPORT_IMPORTS] = True  # the pool learns preloads from what jobs import
        unsent = send_ahead(pipes.channel, encode_frame(frame | dict(extra)))
        gpus = self.spec.gpus
        key = gpu_set(gpus.indices) if gpus is not None and gpus.gpus else None
        if key is not None and self._templates is not None:
            # Other warm spares on its GPUs are dropped (all of them for a spawn, which cannot
            # use one): a job or an instance's actor needs their memory.
            await self._templates.warm_spares.take(template, key)
        if template is not None:
            child = await template.fork(pipes, key)
            self.pid, self.exited = child.pid, child.exited
        else:
            self.pid = spawn_job_child(
                self.spec.python, pipes, self.spec.environment(), self.spec.confinement
            )
            self.exited = asyncio.ensure_future(wait_for_exit(self.pid))
        self.template = template
        return unsent

    async def _template(self, pool: TemplatePool) -> TemplateProcess:
        """The env's running template; while one starts (its preloads importing), said."""
        python = self.spec.python
        if pool.warm(python):  # the common case, and the hot path: no notices to arrange
            return await pool.ready(python, self.spec.environment())

        async def say(text: str) -> None:
            await self.sink.emit(LogEvent("system", text, time.time()))

        waiting = "waiting for the env's warm template to start"
        async with heartbeat(say, waiting, self.spec.notice_interval_s):
            return await pool.ready(python, self.spec.environment())

    async def _start_readers(self, pipes: JobPipes, unsent: bytes) -> None:
        self._output_fd = pipes.output_r
        os.set_blocking(self._output_fd, False)
        self._tasks.append(asyncio.ensure_future(self._pump(self._output_fd)))
        if unsent:  # a frame larger than the socket buffer: the rest, as the child reads
            with contextlib.suppress(OSError):
                await asyncio.get_running_loop().sock_sendall(pipes.channel, unsent)
        reader, self._writer = await asyncio.open_unix_connection(sock=pipes.channel)
        self._tasks.append(asyncio.ensure_future(self._read_frames(reader)))

    # -- exchange ------------------------------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        """Send a frame to the child; a child that is gone shows as no answer, not an error."""
        if self._writer is None:
            return
        self._writer.write(encode_frame(frame))
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()

    async def end_input(self) -> None:
        """End of stream on the channel: a child waiting for frames (an actor) then leaves."""
        if self._writer is not None:
            self._writer.close()

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        broken: Exception | None = None
        try:
            await self._dispatch(reader)
        except EndOfStream:
            pass
        except (FrameError, ConnectionError) as exc:
            broken = exc
        except Exception:
            # A handler's own failure: the owner still learns that no more frames will come.
            await self._channel_ended(None)
            raise
        await self._channel_ended(broken)

    async def _dispatch(self, reader: asyncio.StreamReader) -> None:
        """Each frame to the handler of its kind, until the channel ends (EndOfStream)."""
        while True:
            frame = await read_frame_async(reader, self._max_frame)
            handler = self._handlers.get(frame.get(KIND))
            if handler is not None:
                await handler(frame)

    async def _channel_ended(self, broken: Exception | None) -> None:
        if self._on_channel_end is not None:
            await self._on_channel_end(broken)

    async def _pump(self, fd: int) -> None:
        """Deliver the pipe's output as it comes, until end of file (a partial line too).

        Plain reads and a readiness wait, not a transport and a stream reader: a child that
        prints nothing costs one wait for the end, and one that floods is read in big chunks.
        The lock is held from read to delivery, so :meth:`drain` never delivers out of order.
        """
        loop = asyncio.get_running_loop()
        while True:
            async with self._output_lock:
                data = read_some(fd)
                if data == b"":
                    await self._deliver(self._demux.finish())
                    return
                if data is not None:
                    await self._deliver(self._demux.feed(data))
                    continue
            await readable(loop, fd)

    async def drain(self) -> None:
        """Deliver everything in the pipe now, and the last partial line: a cut in the output
        (an actor's answer) is here."""
        if self._output_fd < 0:
            return
        async with self._output_lock:
            while data := read_some(self._output_fd):
                await self._deliver(self._demux.feed(data))
            await self._deliver(self._demux.finish())

    async def _deliver(self, pieces: list[Piece]) -> None:
        now = time.time()
        for stream, text, level in pieces:
            await self.sink.emit(LogEvent(stream, text, now, level))

    async def settle(self, *, frames: bool, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait up to ``timeout_s`` for the output pump (and the frame reader, with ``frames``)
        to reach their ends; False when a pipe is still held open (by a leftover process)."""
        readers = self._tasks if frames else self._tasks[:1]
        pending = [task for task in readers if not task.done()]
        if pending:
            _, pending_set = await asyncio.wait(pending, timeout=timeout_s)
            return not pending_set
        return True

    def watchdog(
        self, limits: Limits, started: float | None, gpu_memory: GpuMemoryReader | None
    ) -> Watchdog:
        """A watchdog over the child's process tree (the one owner of its wall-time limit)."""
        assert self.tree is not None
        return Watchdog(
            self.tree,
            limits,
            interval_s=self.spec.watch_interval_s,
            started=started,
            gpu_memory=gpu_memory,
        )

    # -- end -----------------------------------------------------------------------------------

    async def exit_info(self) -> ExitInfo | None:
        """Wait for the child's exit. Raises :class:`TemplateLost` when its template died first:
        nobody will report its exit then, so it is killed before this raises."""
        assert self.exited is not None
        try:
            return await self.exited
        except TemplateLost:
            self.kill_orphan()
            raise

    def kill_orphan(self) -> None:
        """SIGKILL the child's process group (a child whose exit nobody will report)."""
        if self.pid is not None:
            kill_group(self.pid, signal.SIGKILL)

    async def terminate(self, grace_s: float) -> None:
        """SIGTERM the whole tree, SIGKILL what is left after ``grace_s``, and wait for the exit.

        Never raises for the exit itself; an already ended child whose template died is killed.
        """
        if self.exited is None:
            return
        if self.exited.done():
            if not self.exited.cancelled() and isinstance(self.exited.exception(), TemplateLost):
                self.kill_orphan()
            return
        assert self.tree is not None
        await terminate_tree(self.tree, grace_s)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(self.exited)

    async def close(self) -> None:
        """Stop reading and close the session's ends of the pipes (the child is already gone or
        being killed). Safe to call more than once."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
        self._output_fd = -1
        if self._pipes is not None:
            self._pipes.close()
