"""One class instance's actor process, seen from the supervisor: start, call, stop.

    start:  pipes -> job frame (actor: true) -> fork from the env's template, or spawn
            -> readers for the channel, stdout and stderr, a watcher for its exit
            -> wait for ``created`` (or an error, or its death)
    call:   ``call`` frame -> wait for ``result``/``error``, its death, a breached limit or a stop
    stop:   end of stream on the channel (the actor leaves by itself) -> grace -> kill the tree

How a long-lived process's output is cut into calls: the actor flushes Python's and C's stdio
before it sends each answer, so when an answer frame arrives here, every byte that call wrote to
fds 1 and 2 (one pipe) is already in it. The channel reader then drains the pipe (non-blocking
reads until it is empty) into the call's sink *before* it hands the answer on; the pipe's reader
holds a lock from read to delivery, so no chunk is delivered out of order or after the cut.
Output written while no call runs (a background thread) is kept, bounded, and delivered at the
start of the next call. After the actor dies, the readers run to end of file first.

Limits: a call's wall time is the call's own; memory, processes and CPU time are watched on the
actor's whole process tree during each call (CPU time adds up over the actor's life). A breach,
a timeout or a cancel kills the actor: its state cannot be trusted after an interrupted method.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sandvisor.protocol.frames import EndOfStream, Frame, FrameError, encode_frame
from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.channel import read_frame_async
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.job import (
    FRAME_OVERHEAD,
    JobSpec,
    launch_child,
    readable,
    send_ahead,
)
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.oom import oom_kill_count
from sandvisor.supervisor.outcome import Report
from sandvisor.supervisor.output import OutputDemux, Piece
from sandvisor.supervisor.process import ExitInfo, JobPipes, kill_group
from sandvisor.supervisor.proctree import ProcessTree, terminate_tree
from sandvisor.supervisor.templates import TemplateLost, TemplatePool
from sandvisor.supervisor.watchdog import GpuMemoryReader, Watchdog

READ_CHUNK = 256 * 1024
#: How long output pipes may stay open after the actor is gone and its tree killed.
DRAIN_TIMEOUT_S = 2.0
#: Output written between calls that is kept for the next call; the rest is counted.
IDLE_OUTPUT_LIMIT = 64 * 1024

StopWaiter = Callable[[], Awaitable[tuple[ErrorType, str]]]


class OutputSink(Protocol):
    """Where one call's output goes (a JobRun): its response and the caller's live events."""

    async def emit(self, event: LogEvent) -> None: ...


@dataclass
class Exchange:
    """What one start or call got from the actor."""

    answer: str | None  # "created", "result", "error"; None: no answer (died, killed, stopped)
    report: Report
    info: dict[str, Any] = field(default_factory=dict)  # pid and memory, from the answer
    running_at: float | None = None  # monotonic time the method started


class ActorProcess:
    """A running actor child; ``start`` once, then ``call`` one at a time, then ``stop``."""

    def __init__(
        self,
        spec: JobSpec,
        templates: TemplatePool | None,
        *,
        max_result_bytes: int,
        watch_interval_s: float,
        on_exit: Callable[[ActorProcess], None] | None = None,
    ) -> None:
        self.spec = spec
        self._templates = templates
        self._max_frame = max_result_bytes + FRAME_OVERHEAD
        self._watch_interval_s = watch_interval_s
        self._on_exit = on_exit
        self.gpu_memory: GpuMemoryReader | None = None  # set when it holds GPUs: counted too
        self.pid: int | None = None
        self.alive = False
        self.exit_info: ExitInfo | None = None
        self.death: str | None = None  # why it is gone, in words, once it is
        self.retried_on_spawn = False
        self._pipes: JobPipes | None = None
        self._tree: ProcessTree | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._exit_task: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Future[None]] = []
        self._answers: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._demux = OutputDemux()
        self._output_lock = asyncio.Lock()
        self._output_fd = -1
        self._sink: OutputSink | None = None
        self._idle: list[LogEvent] = []
        self._idle_size = 0
        self._idle_dropped = 0
        self._running_at: float | None = None
        self._seq = 0
        self._stopped = False

    # -- public --------------------------------------------------------------------------------

    async def start(
        self, sink: OutputSink, limits: Limits, started: float, stopped: StopWaiter
    ) -> Exchange:
        """Launch the actor and wait until its instance exists (answer ``created``) or it failed."""
        frame = encode_frame(self.spec.job_frame() | {"actor": True})
        try:
            await self._launch(frame, self._templates)
        except TemplateLost:
            self.retried_on_spawn = True
            await self._launch(frame, None)
        return await self._exchange(sink, limits, started, stopped)

    async def call(
        self,
        request: dict[str, Any],
        sink: OutputSink,
        limits: Limits,
        started: float,
        stopped: StopWaiter,
        display: bool = False,
    ) -> Exchange:
        """Run one method call on the instance."""
        self._seq += 1
        frame = {
            "t": "call",
            "seq": self._seq,
            "method_name": request.get("method_name", "__call__"),
            "args": request.get("args", []),
            "kwargs": request.get("kwargs", {}),
            "serialization_format": request.get("serialization_format", "cloudpickle"),
            "max_result_bytes": limits.max_result_bytes,
            "display": display,
        }
        if self._writer is not None and self.alive:
            self._writer.write(encode_frame(frame))
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.drain()
        return await self._exchange(sink, limits, started, stopped)

    async def stop(self, grace_s: float) -> None:
        """End of stream to the actor, which then leaves; killed if it has not after ``grace_s``."""
        if self._stopped:
            return
        self._stopped = True
        if self._tree is not None and self.alive:
            # Note its descendants while they are still its own: once it leaves, those in
            # sessions of their own are orphans that only this memory ties to the instance.
            self._tree.refresh()
        if self._writer is not None:
            self._writer.close()
        if self._exit_task is not None and not self._exit_task.done():
            done, _ = await asyncio.wait({self._exit_task}, timeout=grace_s)
            if not done:
                await self._kill(grace_s)
        if self._tree is not None:
            # What the instance started and left running (a server, a detached helper) goes too.
            await terminate_tree(self._tree, 0.0)
        await self._cleanup()

    # -- start ---------------------------------------------------------------------------------

    async def _launch(self, job_frame: bytes, templates: TemplatePool | None) -> None:
        pipes = JobPipes.create()
        try:
            unsent = send_ahead(pipes.channel, job_frame)
            self.pid, exited = await launch_child(self.spec.python, self.spec.env, pipes, templates)
        except BaseException:
            pipes.close()
            raise
        pipes.close_child_ends()
        self._pipes = pipes
        self.alive = True
        # A template is a subreaper: what a forked actor leaves behind when it dies goes there.
        template = templates.running.get(self.spec.python) if templates is not None else None
        self._tree = ProcessTree(
            job_id=self.spec.job_id,
            root_pid=self.pid,
            adopters=(template.pid,) if template is not None else (),
            hosted=templates is None,
        )
        self._exit_task = asyncio.ensure_future(self._watch_exit(exited))
        self._output_fd = pipes.output_r
        os.set_blocking(self._output_fd, False)
        self._tasks.append(asyncio.ensure_future(self._pump(self._output_fd)))
        if unsent:
            with contextlib.suppress(OSError):
                await asyncio.get_running_loop().sock_sendall(pipes.channel, unsent)
        reader, self._writer = await asyncio.open_unix_connection(sock=pipes.channel)
        self._tasks.append(asyncio.ensure_future(self._read_frames(reader)))

    async def _watch_exit(self, exited: asyncio.Future[ExitInfo | None]) -> None:
        try:
            self.exit_info = await exited
            if self.exit_info is not None:
                self.death = f"its actor process ended: {self.exit_info.describe()}"
            else:
                self.death = "its actor process ended and could not be reaped"
        except TemplateLost as exc:
            # Its template no longer reports its exit: a process we cannot watch must not live.
            if self.pid is not None:
                kill_group(self.pid, signal.SIGKILL)
            self.death = f"it was killed because its template died ({exc})"
        finally:
            self.alive = False
        if self._on_exit is not None:
            self._on_exit(self)

    # -- one exchange --------------------------------------------------------------------------

    async def _exchange(
        self, sink: OutputSink, limits: Limits, started: float, stopped: StopWaiter
    ) -> Exchange:
        assert self._exit_task is not None and self._tree is not None
        self._sink = sink
        self._running_at = None
        try:
            await self._release_idle_output(sink)
            oom_kills = oom_kill_count()  # to tell the kernel's OOM killer from other SIGKILLs
            watchdog = Watchdog(
                self._tree,
                limits,
                interval_s=self._watch_interval_s,
                started=started,
                gpu_memory=self.gpu_memory,
            )
            answer = asyncio.ensure_future(self._answers.get())
            stop = asyncio.ensure_future(stopped())
            breach = asyncio.ensure_future(watchdog.run())
            try:
                await asyncio.wait(
                    {answer, stop, breach, self._exit_task}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in (answer, stop, breach):
                    if not waiter.done():
                        waiter.cancel()
            frame = answer.result() if answer.done() and not answer.cancelled() else None
            if frame is not None:
                return self._answered(frame)
            report = Report(
                limits=limits,
                peak_rss_bytes=watchdog.record.peak_rss_bytes,
                elapsed_s=time.monotonic() - started,
            )
            if stop.done() and not stop.cancelled():
                report.stopped = stop.result()
            elif breach.done() and not breach.cancelled():
                found = breach.result()
                report.stopped = (found.error_type, found.reason)
            exchange = await self._ended(report, limits.grace_s)
            if oom_kills is not None:
                report.oom_kills = (oom_kill_count() or oom_kills) - oom_kills
            return exchange
        except BaseException:
            # The caller went away mid-call (its task cancelled): the method may still be
            # running, and its answer would be taken for the next call's. The actor goes.
            if self.alive:
                await asyncio.shield(self._kill(limits.grace_s))
            raise
        finally:
            self._sink = None

    def _answered(self, frame: Frame) -> Exchange:
        report = Report()
        if frame["t"] == "result":
            report.fields = dict(frame.get("fields") or {})
            report.display = frame.get("display")
        elif frame["t"] == "error":
            report.error = frame
        return Exchange(frame["t"], report, dict(frame.get("info") or {}), self._running_at)

    async def _ended(self, report: Report, grace_s: float) -> Exchange:
        """No answer: it died, or we kill it now; its last output still goes to this call."""
        if report.stopped is not None:
            await self._kill(grace_s)
        elif self._exit_task is not None and not self._exit_task.done():
            # The channel closed first; the exit follows, unless the actor hangs on in a bad state.
            done, _ = await asyncio.wait({self._exit_task}, timeout=grace_s)
            if not done:
                await self._kill(grace_s)
        if self._tree is not None:
            # What it left running goes too, and with it the last holders of its output pipes.
            await terminate_tree(self._tree, 0.0)
        pumps = [task for task in self._tasks[:1] if not task.done()]  # the output pump
        if pumps:
            await asyncio.wait(pumps, timeout=DRAIN_TIMEOUT_S)
        await self._drain()
        report.exit = self.exit_info
        return Exchange(None, report, {}, self._running_at)

    async def _kill(self, grace_s: float) -> None:
        """SIGTERM the actor's tree, SIGKILL after the grace period, and wait for its exit."""
        assert self._tree is not None and self._exit_task is not None
        await terminate_tree(self._tree, grace_s)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(self._exit_task)

    # -- readers -------------------------------------------------------------------------------

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await read_frame_async(reader, self._max_frame)
                kind = frame["t"]
                if kind == "running":
                    self._running_at = time.monotonic()
                elif kind in ("created", "result", "error"):
                    await self._drain()  # the call's output is in the pipe: it goes first
                    self._answers.put_nowait(frame)
        except (EndOfStream, FrameError, ConnectionError):
            pass  # a broken channel shows as no answer; the exit says what happened
        finally:
            self._answers.put_nowait(None)

    async def _pump(self, fd: int) -> None:
        """Deliver the pipe's output as it comes, until end of file."""
        while True:
            await readable(asyncio.get_running_loop(), fd)
            async with self._output_lock:
                data = _read_some(fd)
                if data is None:
                    continue
                if not data:
                    return
                await self._deliver_pieces(self._demux.feed(data))

    async def _drain(self) -> None:
        """Everything in the pipe now, and the last partial line: the call ends here."""
        if self._output_fd < 0:
            return
        async with self._output_lock:
            while data := _read_some(self._output_fd):
                await self._deliver_pieces(self._demux.feed(data))
            await self._deliver_pieces(self._demux.finish())

    async def _deliver_pieces(self, pieces: list[Piece]) -> None:
        now = time.time()
        for stream, text, level in pieces:
            await self._deliver(LogEvent(stream, text, now, level))

    async def _deliver(self, event: LogEvent) -> None:
        if self._sink is not None:
            await self._sink.emit(event)
        elif self._idle_size + len(event.text) <= IDLE_OUTPUT_LIMIT:
            self._idle.append(event)
            self._idle_size += len(event.text)
        else:
            self._idle_dropped += len(event.text)

    async def _release_idle_output(self, sink: OutputSink) -> None:
        idle, dropped = self._idle, self._idle_dropped
        self._idle, self._idle_size, self._idle_dropped = [], 0, 0
        for event in idle:
            await sink.emit(event)
        if dropped:
            note = f"{dropped} characters the instance wrote between calls were dropped\n"
            await sink.emit(LogEvent("system", note, time.time()))

    # -- end -----------------------------------------------------------------------------------

    async def _cleanup(self) -> None:
        if self.pid is not None:
            kill_group(self.pid, signal.SIGKILL)
        if self._output_fd >= 0:
            asyncio.get_running_loop().remove_reader(self._output_fd)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._exit_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._exit_task
        if self._pipes is not None:
            self._pipes.close()
        await asyncio.to_thread(shutil.rmtree, self.spec.workdir, True)


def _read_some(fd: int) -> bytes | None:
    """One non-blocking read: data, ``b""`` at end of file, None when the pipe is empty."""
    try:
        return os.read(fd, READ_CHUNK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""  # closed under us: as good as the end
