"""One request's context in the supervisor, whatever runs it: a one-shot job or a method call.

Its stop (a cancel, a breach, a timeout: the first reason wins), its events (live to the caller
and into the response's size-capped output), its timings, and its response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.gpus import GpuLease, GpuPool
from sandvisor.supervisor.heartbeat import heartbeat
from sandvisor.supervisor.outcome import Report, classify
from sandvisor.supervisor.output import OutputBuffer
from sandvisor.supervisor.process import ExitInfo
from sandvisor.supervisor.watchdog import format_bytes

T = TypeVar("T")

#: How long a job waits for a job identity before its output says that it waits.
IDENTITY_QUIET_S = 1.0

if TYPE_CHECKING:
    from sandvisor.supervisor.identities import IdentityLease, IdentityPool
    from sandvisor.supervisor.job import JobSpec

EventSink = Callable[[LogEvent], Awaitable[None]]


@dataclass
class Timings:
    """Monotonic marks of one request: started, child launched, code running, finished."""

    started: float = field(default_factory=time.monotonic)
    launched: float | None = None
    running: float | None = None
    finished: float | None = None

    def as_ms(self, env_ms: float) -> dict[str, float]:
        """The response's ``timings``: env, start, run and total, in milliseconds."""
        end = self.finished or time.monotonic()
        launched = self.launched or end
        running = self.running or end
        return {
            "env": round(env_ms, 3),
            "start": round((running - launched) * 1000, 3),
            "run": round((end - running) * 1000, 3),
            "total": round((end - self.started) * 1000 + env_ms, 3),
        }


class JobContext:
    """One request's life in the supervisor, whatever runs it (a one-shot job, or a method call
    on an instance): its stop, its events and output, its timings, its response."""

    def __init__(self, spec: JobSpec, on_event: EventSink | None = None) -> None:
        self.spec = spec
        self._on_event = on_event
        self.output = OutputBuffer(spec.limits.max_output_bytes)
        self.timings = Timings()
        self.retried = False  # it ran again on a fresh interpreter: its template was lost
        self.env_ms = 0.0  # time spent getting the job's environment before launch
        self._stop_requested = asyncio.Event()
        self._stop_reason: tuple[ErrorType, str] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while the job's exit is awaited

    def stop(self, error_type: ErrorType, reason: str) -> None:
        """Ask the job to stop, for ``reason`` (one line, as the response will say it).

        Never blocks and never raises; safe to call at any time and more than once, also before
        the job runs (it is then ended as soon as it is). The first reason wins: later calls
        change nothing, so a timeout followed by a cancel still reads as a timeout. The job's
        processes get SIGTERM, then SIGKILL after the grace period; :meth:`stopped` waits for
        the request.
        """
        if self._stop_reason is None:
            self._stop_reason = (error_type, reason)
        self._stop_requested.set()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    @property
    def stop_reason(self) -> tuple[ErrorType, str] | None:
        """Why ``stop()`` was called, if it was."""
        return self._stop_reason

    async def stopped(self) -> tuple[ErrorType, str]:
        """Wait until ``stop()`` is called; its reason."""
        await self._stop_requested.wait()
        assert self._stop_reason is not None
        return self._stop_reason

    async def exit_or_stop(self, exited: asyncio.Future[ExitInfo | None]) -> None:
        """Wait until ``exited`` is done or ``stop()`` is called, whichever is first."""
        if self._stop_requested.is_set():
            return
        # A plain future that stop() resolves: no task per job to wait on the event.
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({exited, self._wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake = None

    def environment_ready(self, env_ms: float) -> None:
        """The env took ``env_ms``; the job's own clock starts now, so totals count it once."""
        self.env_ms = env_ms
        self.timings = Timings()

    async def hold_gpus(
        self,
        pool: GpuPool,
        count: int,
        holders: str,
        make_room: Callable[[int], object] | None = None,
    ) -> GpuLease | None:
        """``count`` GPUs from ``pool``, at once or waited for in arrival order; None if the
        request is stopped first (:attr:`stop_reason` then says why).

        A wait is said in the job's output ("waiting for N GPU(s): all are held by
        ``holders``"); ``make_room(count)`` is called first, to let idle holders go.
        """
        lease = pool.try_acquire(count)
        if lease is not None:
            return lease
        if make_room is not None:
            make_room(count)
        await self.say(f"waiting for {count} GPU(s): all are held by {holders}")
        async with heartbeat(self.say, f"waiting for {count} GPU(s)", self.spec.notice_interval_s):
            return await self.acquire_unless_stopped(pool.acquire(count))

    async def hold_identity(self, pool: IdentityPool) -> IdentityLease | None:
        """A job identity from ``pool``, waited for (and said so) when none is free and empty
        now; None if the job is stopped first."""
        lease = pool.try_acquire()
        if lease is not None:
            return lease
        # A burst of jobs waits a moment for identities made ready: that is no news to the job.
        acquiring = asyncio.ensure_future(self.acquire_unless_stopped(pool.acquire()))
        try:
            done, _ = await asyncio.wait({acquiring}, timeout=IDENTITY_QUIET_S)
            if not done:
                await self.say("waiting for a job identity: each is held by a job or an instance")
            return await acquiring
        except BaseException:  # cancelled: an identity it got meanwhile goes back at once
            acquiring.cancel()
            for got in await asyncio.gather(acquiring, return_exceptions=True):
                if got is not None and not isinstance(got, BaseException):
                    got.release(empty=True)
            raise

    async def acquire_unless_stopped(self, waiting: Awaitable[T]) -> T | None:
        """What ``waiting`` (a pool's acquire) gives; None if the job is stopped first."""
        acquiring = asyncio.ensure_future(waiting)
        stop = asyncio.ensure_future(self.stopped())
        try:
            await asyncio.wait({acquiring, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not acquiring.done():
                acquiring.cancel()
            stop.cancel()
            await asyncio.gather(acquiring, stop, return_exceptions=True)
        if acquiring.cancelled() or acquiring.exception() is not None:
            return None
        return acquiring.result()

    async def say(self, text: str) -> None:
        """A line of sandvisor's own about the job (a ``system`` event)."""
        await self.emit(
            LogEvent("system", text if text.endswith("\n") else text + "\n", time.time())
        )

    async def emit(self, event: LogEvent) -> None:
        """An event of the job: into its response's output, and live to the caller. Output
        over the flood limit stops the job."""
        self.output.append(event.as_output())
        limits = self.spec.limits
        if self.output.total > limits.output_flood_bytes:
            self.stop(
                ErrorType.OUTPUT_LIMIT,
                f"killed: output {format_bytes(self.output.total)} over the"
                f" {format_bytes(limits.output_flood_bytes)} limit (only the first and last"
                f" {format_bytes(limits.max_output_bytes)} are kept)",
            )
        if self._on_event is not None:
            await self._on_event(event)

    def respond(self, report: Report) -> FunctionResponse:
        """The response for what the job reported: outcome, output, timings."""
        response = classify(report)
        if report.display is not None and response.success:
            response.result_display = report.display
        timings = self.timings.as_ms(self.env_ms)
        if self.retried:
            timings["retried"] = 1.0
        return response.model_copy(update={"stdout": self.output.text(), "timings": timings})
