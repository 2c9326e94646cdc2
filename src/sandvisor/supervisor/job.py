"""One job, from launch to response: the steps a job goes through in the supervisor.

    launch (fork from the env's template, or spawn a fresh interpreter)
      -> send the job frame -> read frames and the output pipe (fds 1 and 2) concurrently
      -> wait for the exit, or stop it (timeout, cancel, broken channel, a watchdog breach)
      -> terminate what is left of its process tree -> classify -> respond

The job's GPUs (if any) are held from before launch until the response; the watchdog samples its
process tree (memory, processes, CPU, wall time) while it runs.

User code never runs here; this module only moves bytes and watches processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandvisor.protocol.frames import FrameDecoder, FrameError, encode_frame
from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.gpus import GpuLease, GpuPool, gpu_memory_by_pid
from sandvisor.supervisor.limits import CHILD_OOM_SCORE_ADJ, Limits
from sandvisor.supervisor.oom import oom_kill_count
from sandvisor.supervisor.outcome import Report, classify, failure
from sandvisor.supervisor.output import OutputBuffer, OutputDemux, Piece
from sandvisor.supervisor.process import (
    ExitInfo,
    JobPipes,
    kill_group,
    spawn_job_child,
    wait_for_exit,
)
from sandvisor.supervisor.proctree import ProcessTree, job_comm, terminate_tree
from sandvisor.supervisor.templates import TemplateLost, TemplatePool, TemplateProcess
from sandvisor.supervisor.watchdog import Watchdog, format_bytes

EventSink = Callable[[LogEvent], Awaitable[None]]

#: How long output pipes may stay open after the job's process is gone and its group killed.
DRAIN_TIMEOUT_S = 2.0
READ_CHUNK = 256 * 1024
FRAME_OVERHEAD = 1024 * 1024

#: Request fields the child needs; the rest (dependencies, limits, ...) is the supervisor's.
CHILD_REQUEST_FIELDS = (
    "function_name",
    "function_code",
    "args",
    "kwargs",
    "modules",
    "execution_type",
    "class_name",
    "class_code",
    "constructor_args",
    "constructor_kwargs",
    "method_name",
    "serialization_format",
)


@dataclass
class JobSpec:
    """Everything decided about a job before its child starts."""

    job_id: str
    request: dict[str, Any]
    python: str
    workdir: Path
    env: dict[str, str]
    limits: Limits
    deployed_module: str | None = None
    deployed_sys_path: list[str] = field(default_factory=list)
    display: bool = False
    watch_interval_s: float = 0.1

    def job_frame(self, env_base: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The child's job frame; with ``env_base`` (the environment a forked child starts
        with, its template's) the environment goes as the changes from it, not whole."""
        frame = {
            "t": "job",
            "job_id": self.job_id,
            "comm": job_comm(self.job_id),
            "request": {
                name: self.request[name] for name in CHILD_REQUEST_FIELDS if name in self.request
            },
            "module": self.deployed_module,
            "sys_path": self.deployed_sys_path,
            "workdir": str(self.workdir),
            "env": self.env,
            "rlimits": {name: list(pair) for name, pair in self.limits.rlimits().items()},
            "max_result_bytes": self.limits.max_result_bytes,
            "oom_score_adj": CHILD_OOM_SCORE_ADJ,
            "display": self.display,
        }
        if env_base is not None:
            del frame["env"]
            frame["env_set"] = {k: v for k, v in self.env.items() if env_base.get(k) != v}
            frame["env_unset"] = [k for k in env_base if k not in self.env]
        return frame


@dataclass
class Timings:
    started: float = field(default_factory=time.monotonic)
    launched: float | None = None
    running: float | None = None
    finished: float | None = None

    def as_ms(self, env_ms: float) -> dict[str, float]:
        end = self.finished or time.monotonic()
        launched = self.launched or end
        running = self.running or end
        return {
            "env": round(env_ms, 3),
            "start": round((running - launched) * 1000, 3),
            "run": round((end - running) * 1000, 3),
            "total": round((end - self.started) * 1000 + env_ms, 3),
        }


async def launch_child(
    python: str, env: dict[str, str], pipes: JobPipes, templates: TemplatePool | None
) -> tuple[int, asyncio.Future[ExitInfo | None]]:
    """Fork a child from ``python``'s template when a pool is given, else spawn one: pid and exit.

    Raises :class:`TemplateLost` when the template dies before forking; the caller may spawn.
    """
    if templates is not None:
        child = await templates.fork(python, pipes, env)
        return child.pid, child.exited
    pid = spawn_job_child(python, pipes, env)
    return pid, asyncio.ensure_future(wait_for_exit(pid))


async def readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Wait until ``fd`` has data or its end (a non-blocking pipe)."""
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def send_ahead(channel: socket.socket, frame: bytes) -> bytes:
    """Write what fits of ``frame`` now, without blocking; returns what is left to send."""
    channel.setblocking(False)
    try:
        sent = channel.send(frame)
    except (BlockingIOError, InterruptedError):
        sent = 0
    return frame[sent:]


class JobRun:
    """Runs one JobSpec; ``stop()`` may be called from anywhere to end it early."""

    def __init__(
        self,
        spec: JobSpec,
        templates: TemplatePool | None,
        on_event: EventSink | None = None,
        gpus: GpuPool | None = None,
    ) -> None:
        self.spec = spec
        self._templates = templates
        self._on_event = on_event
        self._gpus = gpus
        self.tree: ProcessTree | None = None
        self.watchdog: Watchdog | None = None
        self._gpu_lease: GpuLease | None = None
        self._template: TemplateProcess | None = None  # the one that forked the child, if any
        self.output = OutputBuffer(spec.limits.max_output_bytes)
        self.timings = Timings()
        self.pid: int | None = None
        self.retried = False
        self._stop_requested = asyncio.Event()
        self._stop_reason: tuple[ErrorType, str] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while the job's exit is awaited
        self.env_ms = 0.0  # time spent getting the job's environment before launch

    # -- public --------------------------------------------------------------------------------

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

    def environment_ready(self, env_ms: float) -> None:
        """The env took ``env_ms``; the job's own clock starts now, so totals count it once."""
        self.env_ms = env_ms
        self.timings = Timings()

    @property
    def stop_reason(self) -> tuple[ErrorType, str] | None:
        """Why ``stop()`` was called, if it was."""
        return self._stop_reason

    async def stopped(self) -> tuple[ErrorType, str]:
        """Wait until ``stop()`` is called; its reason."""
        await self._stop_requested.wait()
        assert self._stop_reason is not None
        return self._stop_reason

    async def execute(self) -> FunctionResponse:
        waited = await self._hold_gpus()
        if waited is not None:
            return waited
        oom_kills = oom_kill_count()
        try:
            try:
                report = await self._attempt(use_template=self._templates is not None)
            except TemplateLost as exc:
                self.retried = True
                await self.say(
                    f"template lost ({exc}); running the job again on a fresh interpreter"
                )
                report = await self._attempt(use_template=False)
        finally:
            if self._gpu_lease is not None:
                self._gpu_lease.release()
        # Only a SIGKILL can be the OOM killer's: other jobs skip the second read.
        if (
            oom_kills is not None
            and report.exit is not None
            and report.exit.signal == signal.SIGKILL
        ):
            report.oom_kills = (oom_kill_count() or oom_kills) - oom_kills
        return self.respond(report)

    async def _hold_gpus(self) -> FunctionResponse | None:
        """Wait for the job's GPUs (in arrival order); a failure response if stopped meanwhile."""
        limits = self.spec.limits
        if self._gpus is None or not self._gpus.total:
            return None
        self._gpu_lease = self._gpus.try_acquire(limits.gpus)
        if self._gpu_lease is None:
            await self.say(f"waiting for {limits.gpus} GPU(s): all are held by other jobs")
            waited = await self._wait_for_gpus(limits.gpus)
            if waited is not None:
                return waited
        assert self._gpu_lease is not None
        # Exactly the leased GPUs, none (an empty list hides them all) when it asked for none.
        self.spec.env = self.spec.env | self._gpu_lease.environ()
        return None

    async def _wait_for_gpus(self, count: int) -> FunctionResponse | None:
        assert self._gpus is not None
        self._gpu_lease = await self.acquire_gpus_unless_stopped(self._gpus, count)
        if self._gpu_lease is None:
            error_type, reason = self._stop_reason or (ErrorType.CANCELLED, "cancelled")
            return failure(error_type, reason, stdout=self.output.text())
        return None

    async def acquire_gpus_unless_stopped(self, pool: GpuPool, count: int) -> GpuLease | None:
        """Wait for ``count`` GPUs from ``pool``; None if the job is stopped first."""
        acquiring = asyncio.ensure_future(pool.acquire(count))
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
        await self.emit(
            LogEvent("system", text if text.endswith("\n") else text + "\n", time.time())
        )

    # -- steps ---------------------------------------------------------------------------------

    async def _attempt(self, use_template: bool) -> Report:
        pipes = JobPipes.create()
        try:
            template = None
            if use_template and self._templates is not None:
                template = await self._templates.ready(self.spec.python, self.spec.env)
            # The job frame is in the channel before the child exists: it reads it as soon as it
            # starts, rather than after a round trip that tells us its pid.
            frame = self.spec.job_frame(template.environ if template is not None else None)
            unsent = send_ahead(pipes.channel, encode_frame(frame))
            exited = await self._launch(pipes, template)
            pipes.close_child_ends()
            return await self._supervise(pipes, exited, unsent)
        finally:
            pipes.close()

    async def _launch(
        self, pipes: JobPipes, template: TemplateProcess | None
    ) -> asyncio.Future[ExitInfo | None]:
        """Fork the child from ``template`` (the one whose environment the frame assumed), or
        spawn it. Raises :class:`TemplateLost` when that template is gone."""
        if template is not None:
            child = await template.fork(pipes)
            self.pid, exited = child.pid, child.exited
        else:
            self.pid, exited = await launch_child(self.spec.python, self.spec.env, pipes, None)
        self.timings.launched = time.monotonic()
        # Its template is a subreaper: what the job's processes orphan goes there, not to us.
        self._template = template
        self.tree = ProcessTree(
            self.spec.job_id,
            self.pid,
            adopters=(template.pid,) if template is not None else (),
            hosted=template is None,
        )
        return exited

    async def _supervise(
        self, pipes: JobPipes, exited: asyncio.Future[ExitInfo | None], unsent: bytes
    ) -> Report:
        assert self.pid is not None
        report = Report()
        loop = asyncio.get_running_loop()
        readers = [asyncio.ensure_future(self._read_output(pipes.output_r))]
        pipes.output_r = -1  # the output reader owns it from here on, and closes it
        watching = self._start_watchdog()
        try:
            if unsent:  # a frame larger than the socket buffer: the rest, as the child reads
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(pipes.channel, unsent)
            readers.append(asyncio.ensure_future(self._read_frames(pipes, report)))
            report.exit = await self._wait_or_stop(exited, report)
            await self._end_leftovers()  # whatever the job left behind goes with it
            await self._drain(readers)
        except BaseException:
            await asyncio.shield(self._terminate(exited))
            raise
        finally:
            if watching is not None:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
            self._note_watch(report)
            if all(reader.done() for reader in readers):
                for reader in readers:  # retrieved, as the gather below would
                    if not reader.cancelled():
                        reader.exception()
            else:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
        self.timings.finished = time.monotonic()
        report.elapsed_s = self.timings.finished - self.timings.started
        return report

    async def _wait_or_stop(
        self, exited: asyncio.Future[ExitInfo | None], report: Report
    ) -> ExitInfo | None:
        if not self._stop_requested.is_set():
            # A plain future that stop() resolves: no task per job to wait on the event.
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait(
                    {exited, self._wake},
                    timeout=self.spec.limits.timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                self._wake = None
        if not exited.done():
            if self._stop_reason is None:
                self._stop_reason = (
                    ErrorType.TIMEOUT,
                    f"timed out: still running after the {self.spec.limits.timeout_s:g} s limit",
                )
            report.stopped = self._stop_reason
            await self._terminate(exited)
        return await self._exit_of(exited, report)

    async def _exit_of(
        self, exited: asyncio.Future[ExitInfo | None], report: Report
    ) -> ExitInfo | None:
        try:
            return await exited
        except TemplateLost:
            self._kill_orphan()
            if report.fields is None and report.error is None:
                raise  # it never answered: the caller runs it again on a fresh spawn
            return None  # it had answered before its template died; how it ended is unknown

    def _kill_orphan(self) -> None:
        """The template that forked the child died: nobody will report its exit, so it goes now."""
        if self.pid is not None:
            kill_group(self.pid, signal.SIGKILL)

    async def _terminate(self, exited: asyncio.Future[ExitInfo | None]) -> None:
        """SIGTERM the whole tree, wait the grace period, SIGKILL, and wait for the exit."""
        if self.pid is None:
            return
        if exited.done():
            if not exited.cancelled() and isinstance(exited.exception(), TemplateLost):
                self._kill_orphan()
            await self._end_leftovers()
            return
        if self.tree is not None:
            await terminate_tree(self.tree, self.spec.limits.grace_s)
        else:
            kill_group(self.pid, signal.SIGTERM)
            done, _ = await asyncio.wait({exited}, timeout=self.spec.limits.grace_s)
            if not done:
                kill_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await exited

    async def _end_leftovers(self) -> None:
        """Kill what the job left running after its own process ended (detached ones too)."""
        # Reaped by its template: an empty group and no stray child of the template mean nothing
        # is left, and a scan of /proc (which costs more than a short job) would find nothing.
        if self._template and self.pid and self._template.job_left_nothing(self.pid):
            return
        if self.tree is not None:
            await terminate_tree(self.tree, 0.0)
        elif self.pid is not None:
            kill_group(self.pid, signal.SIGKILL)
        if self._template is not None:
            # Orphans that bear no mark of the job (renamed, given an environment of their own)
            # are still the template's strays, and with no other job on it, leftovers.
            for stray in self._template.leftovers():
                adopters = (self._template.pid,)
                await terminate_tree(ProcessTree(self.spec.job_id, stray, adopters), 0.0)

    # -- watching ------------------------------------------------------------------------------

    def _start_watchdog(self) -> asyncio.Future[None] | None:
        limits = self.spec.limits
        if self.tree is None:
            return None
        gpu_memory = gpu_memory_by_pid if self._gpu_lease and self._gpu_lease.gpus else None
        self.watchdog = Watchdog(
            self.tree,
            limits,
            interval_s=self.spec.watch_interval_s,
            started=self.timings.launched,
            gpu_memory=gpu_memory,
        )
        return asyncio.ensure_future(self._watch(self.watchdog))

    async def _watch(self, watchdog: Watchdog) -> None:
        # The watchdog's first sample is one interval in (see Watchdog.run): a job that ends
        # sooner is never sampled, since a scan of /proc costs more than such a job.
        breach = await watchdog.run()
        self.stop(breach.error_type, breach.reason)

    def _note_watch(self, report: Report) -> None:
        report.limits = self.spec.limits
        if self.watchdog is not None:
            report.peak_rss_bytes = self.watchdog.record.peak_rss_bytes

    async def _drain(self, readers: list[asyncio.Future[None]]) -> None:
        if all(reader.done() for reader in readers):
            return  # the usual case: every pipe ended with the job
        _, pending = await asyncio.wait(readers, timeout=DRAIN_TIMEOUT_S)
        if pending:
            await self.say("output pipes still open after the job ended; stopped reading them")

    # -- readers -------------------------------------------------------------------------------

    async def _read_output(self, fd: int) -> None:
        """The job's output pipe (fds 1 and 2, logging records) as events, until its end;
        closes ``fd``. At the end, a partial line is given out too: nothing written is lost.

        Plain reads and a readiness wait, not a transport and a stream reader: a job that prints
        nothing costs one wait for the end, and one that floods is read in big chunks.
        """
        loop = asyncio.get_running_loop()
        demux = OutputDemux()
        try:
            os.set_blocking(fd, False)
            while True:
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    await readable(loop, fd)
                    continue
                if not chunk:
                    break
                await self._emit_pieces(demux.feed(chunk))
            await self._emit_pieces(demux.finish())
        finally:
            os.close(fd)

    async def _emit_pieces(self, pieces: list[Piece]) -> None:
        now = time.time()
        for stream, text, level in pieces:
            await self.emit(LogEvent(stream, text, now, level))

    async def _read_frames(self, pipes: JobPipes, report: Report) -> None:
        loop = asyncio.get_running_loop()
        decoder = FrameDecoder(self.spec.limits.max_result_bytes + FRAME_OVERHEAD)
        try:
            while data := await loop.sock_recv(pipes.channel, READ_CHUNK):
                for frame in decoder.feed(data):
                    await self._on_frame(frame, report)
            decoder.close()
        except (FrameError, ConnectionError) as exc:
            report.channel_error = str(exc)
            if report.fields is None and report.error is None:
                self.stop(ErrorType.LOST, f"lost: the job broke its protocol channel ({exc})")

    async def _on_frame(self, frame: dict[str, Any], report: Report) -> None:
        kind = frame["t"]
        if kind == "running":
            self.timings.running = time.monotonic()
        elif kind == "result":
            report.fields = dict(frame.get("fields") or {})
            report.display = frame.get("display")
        elif kind == "error":
            report.error = frame

    async def emit(self, event: LogEvent) -> None:
        """An event of the job: into its response's output, and live to the caller."""
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

    # -- response ------------------------------------------------------------------------------

    def respond(self, report: Report) -> FunctionResponse:
        """The response for what the job reported: outcome, output, timings."""
        response = classify(report)
        if report.display is not None and response.success:
            response.result_display = report.display
        timings = self.timings.as_ms(self.env_ms)
        if self.retried:
            timings["retried"] = 1.0
        return response.model_copy(update={"stdout": self.output.text(), "timings": timings})
