"""One class instance's actor process, seen from the supervisor: start, call, stop.

    start:  a ChildSession (job frame with actor: true; forked from the env's template, or
            spawned) -> a watcher for its exit -> wait for ``created`` (or an error, or death)
    call:   ``call`` frame -> wait for ``result``/``error``, its death, a breached limit or a stop
    stop:   end of stream on the channel (the actor leaves by itself) -> grace -> kill the tree

How a long-lived process's output is cut into calls: the actor flushes Python's and C's stdio
before it sends each answer, so when an answer frame arrives here, every byte that call wrote to
fds 1 and 2 (one pipe) is already in it. The answer's handler then drains the pipe (non-blocking
reads until it is empty) into the call's sink *before* it hands the answer on; the session's
pump holds a lock from read to delivery, so no chunk is delivered out of order or after the cut.
Output written while no call runs (a background thread) is kept, bounded, and delivered at the
start of the next call. After the actor dies, the readers run to end of file first.

Limits: a call's wall time is the call's own; memory, processes and CPU time are watched on the
actor's whole process tree during each call (CPU time adds up over the actor's life). A breach,
a timeout or a cancel kills the actor: its state cannot be trusted after an interrupted method.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sandvisor.protocol.frames import Frame
from sandvisor.protocol.messages import KIND, FrameKind
from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.child_frames import (
    MalformedFrame,
    answer_info,
    display_of,
    error_fields,
    malformed_error,
    result_fields,
)
from sandvisor.supervisor.escalation import escalate
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.job import JobSpec
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.oom import oom_kill_count
from sandvisor.supervisor.outcome import Report
from sandvisor.supervisor.process import ExitInfo
from sandvisor.supervisor.proctree import terminate_tree
from sandvisor.supervisor.session import ChildSession, OutputSink, oom_kills_since
from sandvisor.supervisor.templates import TemplateLost, TemplatePool
from sandvisor.supervisor.watchdog import GpuMemoryReader, Watchdog

#: Output written between calls that is kept for the next call; the rest is counted.
IDLE_OUTPUT_LIMIT = 64 * 1024

StopWaiter = Callable[[], Awaitable[tuple[ErrorType, str]]]


@dataclass
class Exchange:
    """What one start or call got from the actor."""

    answer: str | None  # "created", "result", "error"; None: no answer (died, killed, stopped)
    report: Report
    info: dict[str, Any] = field(default_factory=dict)  # pid and memory, from the answer
    running_at: float | None = None  # monotonic time the method started


class IdleOutput:
    """The actor's output while no call runs (a background thread): kept, bounded, for the
    next call."""

    def __init__(self) -> None:
        self._events: list[LogEvent] = []
        self._size = 0
        self._dropped = 0

    async def emit(self, event: LogEvent) -> None:
        if self._size + len(event.text) <= IDLE_OUTPUT_LIMIT:
            self._events.append(event)
            self._size += len(event.text)
        else:
            self._dropped += len(event.text)

    async def release(self, sink: OutputSink) -> None:
        """Hand what was kept to ``sink`` (and a note of what was dropped); then empty."""
        events, dropped = self._events, self._dropped
        self._events, self._size, self._dropped = [], 0, 0
        for event in events:
            await sink.emit(event)
        if dropped:
            note = f"{dropped} characters the instance wrote between calls were dropped\n"
            await sink.emit(LogEvent("system", note, time.time()))


async def _nothing() -> None:
    return None


class ActorProcess:
    """A running actor child; ``start`` once, then ``call`` one at a time, then ``stop``."""

    def __init__(
        self,
        spec: JobSpec,
        templates: TemplatePool | None,
        *,
        max_result_bytes: int,
        on_exit: Callable[[ActorProcess], None] | None = None,
    ) -> None:
        self.spec = spec
        self._idle = IdleOutput()
        answer = self._answer
        self.session = ChildSession(
            spec,
            templates,
            {
                FrameKind.RUNNING: self._running,
                FrameKind.CREATED: answer,
                FrameKind.RESULT: answer,
                FrameKind.ERROR: answer,
                FrameKind.EXITING: self._exiting,
            },
            self._idle,
            max_result_bytes=max_result_bytes,
            on_channel_end=self._channel_ended,
        )
        self._on_exit = on_exit
        self.gpu_memory: GpuMemoryReader | None = None  # set when it holds GPUs: counted too
        self.alive = False
        self.exit_announced = False  # a method raised SystemExit: its exit is the job's
        self.exit_info: ExitInfo | None = None
        self.death: str | None = None  # why it is gone, in words, once it is
        self._exit_task: asyncio.Future[None] | None = None
        self._answers: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._running_at: float | None = None
        self._seq = 0
        self._max_result_bytes = max_result_bytes  # the current call's, once one is sent
        self._stopped = False

    @property
    def pid(self) -> int | None:
        """The actor process's pid, once started."""
        return self.session.pid

    @property
    def retried_on_spawn(self) -> bool:
        """Its template was lost at launch, so it was spawned instead."""
        return self.session.retried_on_spawn

    # -- public --------------------------------------------------------------------------------

    async def start(
        self, sink: OutputSink, limits: Limits, started: float, stopped: StopWaiter
    ) -> Exchange:
        """Launch the actor and wait until its instance exists (answer ``created``) or it failed."""
        await self.session.start({"actor": True})
        self.alive = True
        self._exit_task = asyncio.ensure_future(self._watch_exit())
        return await self._exchange(sink, limits, started, stopped)

    async def call(
        self, call: JobSpec, sink: OutputSink, limits: Limits, started: float, stopped: StopWaiter
    ) -> Exchange:
        """Run ``call``'s method on the instance; its answer, or how it ended without one."""
        self._seq += 1
        self._max_result_bytes = limits.max_result_bytes
        self._drop_stale_answers()
        if self.alive:
            await self.session.send(call.call_frame(self._seq, limits.max_result_bytes))
        return await self._exchange(sink, limits, started, stopped)

    async def stop(self, grace_s: float) -> None:
        """End of stream to the actor, which then leaves; killed if it has not after ``grace_s``."""
        if self._stopped:
            return
        self._stopped = True
        tree = self.session.tree
        if tree is not None and self.alive:
            # Note its descendants while they are still its own: once it leaves, those in
            # sessions of their own are orphans that only this memory ties to the instance.
            tree.refresh()
        if self._exit_task is not None:
            await escalate(
                self._exit_task, self.session.end_input, lambda: self._kill(grace_s), grace_s
            )
        else:
            await self.session.end_input()
        if tree is not None:
            # What the instance started and left running (a server, a detached helper) goes too.
            await terminate_tree(tree, 0.0)
        await self._cleanup()

    # -- life ----------------------------------------------------------------------------------

    async def _watch_exit(self) -> None:
        try:
            self.exit_info = await self.session.exit_info()
            if self.exit_info is not None:
                self.death = f"its actor process ended: {self.exit_info.describe()}"
            else:
                self.death = "its actor process ended and could not be reaped"
        except TemplateLost as exc:
            # Its template no longer reports its exit: a process we cannot watch must not live.
            self.death = f"it was killed because its template died ({exc})"
        finally:
            self.alive = False
        if self._on_exit is not None:
            self._on_exit(self)

    async def _kill(self, grace_s: float) -> None:
        """SIGTERM the actor's tree, SIGKILL after the grace period, and wait for its exit."""
        assert self._exit_task is not None
        await self.session.terminate(grace_s)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(self._exit_task)

    async def _cleanup(self) -> None:
        self.session.kill_orphan()
        await self.session.close()
        if self._exit_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._exit_task
        await asyncio.to_thread(shutil.rmtree, self.spec.workdir, True)

    # -- frames (the session's dispatch table) -------------------------------------------------

    async def _running(self, frame: Frame) -> None:
        self._running_at = time.monotonic()

    async def _exiting(self, frame: Frame) -> None:
        self.exit_announced = True

    async def _answer(self, frame: Frame) -> None:
        if frame.get(KIND) in (FrameKind.RESULT, FrameKind.ERROR) and frame.get("seq") != (
            self._seq or None
        ):
            return  # not the current call's (the constructor's has none): never a later call's
        await self.session.drain()  # the call's output is in the pipe: it goes first
        self._answers.put_nowait(frame)

    def _drop_stale_answers(self) -> None:
        """Forget answers of earlier calls still queued (a second one a call sent); keep the
        channel's end (None)."""
        ended = False
        while not self._answers.empty():
            ended |= self._answers.get_nowait() is None
        if ended:
            self._answers.put_nowait(None)

    async def _channel_ended(self, broken: Exception | None) -> None:
        # A broken channel shows as no answer; the exit says what happened.
        self._answers.put_nowait(None)

    # -- one exchange --------------------------------------------------------------------------

    async def _exchange(
        self, sink: OutputSink, limits: Limits, started: float, stopped: StopWaiter
    ) -> Exchange:
        assert self._exit_task is not None
        self.session.sink = sink
        self._running_at = None
        try:
            await self._idle.release(sink)
            return await self._await_answer(limits, started, stopped)
        except BaseException:
            # The caller went away mid-call (its task cancelled): the method may still be
            # running, and its answer would be taken for the next call's. The actor goes.
            if self.alive:
                await asyncio.shield(self._kill(limits.grace_s))
            raise
        finally:
            self.session.sink = self._idle

    async def _await_answer(self, limits: Limits, started: float, stopped: StopWaiter) -> Exchange:
        """The actor's answer; or, when none came (it died, was stopped, breached a limit),
        how it ended, once it has."""
        oom_kills = oom_kill_count()  # to tell the kernel's OOM killer from other SIGKILLs
        watchdog = self.session.watchdog(limits, started, self.gpu_memory)
        frame, stop_reason = await self._first_of(watchdog, stopped)
        if frame is not None:
            return self._answered(frame)
        report = Report(
            limits=limits,
            peak_rss_bytes=watchdog.record.peak_rss_bytes,
            elapsed_s=time.monotonic() - started,
            stopped=stop_reason,
        )
        exchange = await self._ended(report, limits.grace_s)
        kills = oom_kills_since(oom_kills)
        if kills is not None:
            report.oom_kills = kills
        return exchange

    async def _first_of(
        self, watchdog: Watchdog, stopped: StopWaiter
    ) -> tuple[Frame | None, tuple[ErrorType, str] | None]:
        """Wait for the first of: an answer (the frame), a stop or a breach (its reason), the
        actor's exit or the channel's end (neither)."""
        assert self._exit_task is not None
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
        if answer.done() and not answer.cancelled() and answer.result() is not None:
            return answer.result(), None
        if stop.done() and not stop.cancelled():
            return None, stop.result()
        if breach.done() and not breach.cancelled():
            return None, (breach.result().error_type, breach.result().reason)
        return None, None

    def _answered(self, frame: Frame) -> Exchange:
        # The actor runs the instance's code: its frames are checked (child_frames.py).
        report = Report()
        kind = frame[KIND]
        try:
            if kind == FrameKind.RESULT:
                report.fields = result_fields(frame, self._max_result_bytes)
                report.display = display_of(frame)
            elif kind == FrameKind.ERROR:
                report.error = dict(error_fields(frame))
        except MalformedFrame as exc:
            report.fields, report.error = None, malformed_error(str(kind), str(exc))
        return Exchange(kind, report, answer_info(frame), self._running_at)

    async def _ended(self, report: Report, grace_s: float) -> Exchange:
        """No answer: it died, or we kill it now; its last output still goes to this call."""
        assert self._exit_task is not None
        if report.stopped is not None:
            await self._kill(grace_s)
        else:
            # The channel closed first; the exit follows, unless the actor hangs on in a bad state.
            await escalate(self._exit_task, _nothing, lambda: self._kill(grace_s), grace_s)
        if self.session.tree is not None:
            # What it left running goes too, and with it the last holders of its output pipes.
            await terminate_tree(self.session.tree, 0.0)
        await self.session.settle(frames=False)
        await self.session.drain()
        report.exit = self.exit_info
        report.exit_announced = self.exit_announced
        return Exchange(None, report, {}, self._running_at)
