"""RunPod queue worker: runpod-python's own loop in front of one process-wide Supervisor.

    runpod loop (main thread)                    supervisor thread (its own event loop)
    handler(job) ------ SupervisorHost.spawn ----> drive(): Supervisor.stream(request)
         ^                                             | LogEvents, batched every
         |  FunctionResponse.to_wire()                 | progress_interval_s
         +---------------------------------------------+--> runpod.serverless.progress_update

runpod owns the main thread and creates several event loops of its own (fitness checks, the job
loop, uvicorn for ``--rp_serve_api``, one per ``--test_input`` run), so the Supervisor lives on a
thread with its own loop, started once per process. That lets it be warm before the first job is
taken (the concurrency modifier waits for it: runpod calls that just before the first take) and
be shut down cleanly whichever way runpod's ``start`` returns or raises ``SystemExit``.

A stop signal from the platform cancels the handler's task. The cancel crosses to the supervisor
thread, where the job's process group gets SIGTERM, the grace period, SIGKILL; the handler waits
for that before it lets the cancel go on, so the next job starts on a clean worker.

``import runpod`` costs about 2.6 s, so it happens only in :func:`serve` and the functions runpod
itself calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.outcome import failure
from sandvisor.supervisor.settings import Settings, volume_present

log = logging.getLogger(__name__)

#: A progress update carries at most this much log text; the final ``stdout`` has all of it.
MAX_PROGRESS_BYTES = 64 * 1024
#: How long a stopped job may take to be gone, beyond its grace period, before we stop waiting.
SETTLE_MARGIN_S = 5.0
#: How long the first job (or the first take) waits for the Supervisor to start.
START_TIMEOUT_S = 600.0

_SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

LogSink = Callable[[dict[str, Any]], None]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


#: ``call_later(delay_s, callback) -> handle``: asyncio's ``loop.call_later`` shape.
Scheduler = Callable[[float, Callable[[], None]], Cancellable]
Ended = concurrent.futures.Future[None]


class SupervisorStartError(RuntimeError):
    """The Supervisor could not start, so this worker cannot run any job."""


# -- the Supervisor's thread ---------------------------------------------------------------------


class SupervisorHost:
    """One Supervisor on its own thread and event loop; jobs are submitted from any loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=asyncio.run,
                    args=(self._serve(),),
                    name="sandvisor-supervisor",
                    daemon=True,
                )
                self._thread.start()

    async def _serve(self) -> None:
        from sandvisor.supervisor.core import Supervisor

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with Supervisor(self.settings) as supervisor:
                self._ready.set_result(supervisor)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(
                    SupervisorStartError(f"the supervisor failed to start: {exc}")
                )
            else:
                log.exception("the supervisor failed while shutting down")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> Any:
        """The running Supervisor, started if needed; blocks the calling thread."""
        self.start()
        return self._ready.result(timeout)

    async def ready(self) -> Any:
        self.start()
        return await asyncio.wrap_future(self._ready)

    def spawn(self, coroutine: Any) -> tuple[concurrent.futures.Future[Any], Ended]:
        """Run ``coroutine`` on the supervisor's loop: its result, and when its task ended.

        Like ``asyncio.run_coroutine_threadsafe`` (cancelling the result cancels the task), plus
        a future set once the task is over, even when it was cancelled before it began.
        """
        loop = self._loop
        assert loop is not None, "spawn() before ready()"
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        ended: Ended = concurrent.futures.Future()

        def on_done(task: asyncio.Task[Any]) -> None:
            ended.set_result(None)
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled by caller
                if task.cancelled():
                    result.cancel()
                elif (error := task.exception()) is not None:
                    result.set_exception(error)
                else:
                    result.set_result(task.result())

        def start() -> None:
            task = loop.create_task(coroutine)
            task.add_done_callback(on_done)
            result.add_done_callback(
                lambda done: done.cancelled() and loop.call_soon_threadsafe(task.cancel)
            )

        loop.call_soon_threadsafe(start)
        return result, ended

    def close(self, timeout: float = 60.0) -> None:
        """Stop the Supervisor (running jobs are cancelled, templates closed) and its thread."""
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, SupervisorStartError):
            self._ready.result(timeout)
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout)


_host: SupervisorHost | None = None
_host_lock = threading.Lock()


def get_host(settings: Settings | None = None) -> SupervisorHost:
    """The process-wide host; created on first use with ``settings`` or from the environment."""
    global _host
    with _host_lock:
        if _host is None:
            _host = SupervisorHost(settings or Settings.from_env())
        return _host


# -- live logs -----------------------------------------------------------------------------------


def event_record(event: LogEvent) -> dict[str, Any]:
    record: dict[str, Any] = {"stream": event.stream, "text": event.text, "ts": event.ts}
    if event.level is not None:
        record["level"] = event.level
    return record


class LogBatcher:
    """Collects a job's log events and hands them on at most once per interval.

    Runs on the supervisor's loop. A batch is capped at MAX_PROGRESS_BYTES of text; what does
    not fit is counted, not sent (the final stdout has everything). The first event after a
    quiet interval goes out at once; later ones wait until ``interval_s`` (seconds) has passed
    since the last batch. ``clock`` (monotonic seconds) and ``call_later`` are the time it
    reads and the timer it sets: the running loop's by default, a test's own when given.
    """

    def __init__(
        self,
        interval_s: float,
        sink: LogSink,
        *,
        clock: Callable[[], float] = time.monotonic,
        call_later: Scheduler | None = None,
    ) -> None:
        self._interval = interval_s
        self._sink = sink
        self._clock = clock
        self._call_later = call_later
        self._records: list[dict[str, Any]] = []
        self._bytes = 0
        self._left_out = 0
        self._last: float | None = None  # when the last batch went out; None: none yet
        self._timer: Cancellable | None = None

    def add(self, event: LogEvent) -> None:
        size = len(event.text.encode("utf-8", "replace"))
        if self._bytes + size > MAX_PROGRESS_BYTES:
            self._left_out += size
        else:
            self._records.append(event_record(event))
            self._bytes += size
        if self._timer is None:
            due = self._clock() if self._last is None else self._last + self._interval
            delay = max(0.0, due - self._clock())
            call_later = self._call_later or asyncio.get_running_loop().call_later
            self._timer = call_later(delay, self.flush)

    def flush(self) -> None:
        self._timer = None
        if not self._records and not self._left_out:
            return
        payload: dict[str, Any] = {"logs": self._records}
        if self._left_out:
            payload["logs_left_out_bytes"] = self._left_out
        self._records, self._bytes, self._left_out = [], 0, 0
        self._last = self._clock()
        try:
            self._sink(payload)
        except Exception:  # a lost progress update must never fail the job
            log.exception("sending a progress update failed")

    def close(self, flush: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if flush:
            self.flush()


async def drive(
    supervisor: Any,
    request: Any,
    job_id: str,
    sink: LogSink | None,
    interval_s: float,
    flush_at_end: bool,
) -> FunctionResponse:
    """Run one job on the supervisor's loop; its logs go to ``sink`` in batches."""
    if sink is None:
        return await supervisor.run(request, job_id=job_id)
    batcher = LogBatcher(interval_s, sink)
    try:
        async for item in supervisor.stream(request, job_id=job_id):
            if isinstance(item, FunctionResponse):
                batcher.close(flush=flush_at_end)
                return item
            batcher.add(item)
    finally:
        batcher.close(flush=False)
    raise RuntimeError("the job stream ended without a response")


# -- the handlers runpod calls -------------------------------------------------------------------


def supervisor_job_id(job: dict[str, Any], running: Sequence[str]) -> str:
    """The job's own id when it is a safe directory name not already running, else a fresh one."""
    raw = str(job.get("id", ""))
    if _SAFE_JOB_ID.match(raw) and raw not in running:
        return raw
    return f"job-{uuid.uuid4().hex[:16]}"


def queue_mode() -> bool:
    """True when results go to RunPod's job API, the only place progress updates can go."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"))


def progress_sink(job: dict[str, Any]) -> LogSink | None:
    if not queue_mode():
        return None
    from runpod.serverless import progress_update  # runpod is loaded: it called us

    return lambda payload: progress_update(job, payload)


async def _start_job(
    job: dict[str, Any], sink: LogSink | None, flush_at_end: bool
) -> tuple[concurrent.futures.Future[Any], Ended] | FunctionResponse:
    host = get_host()
    try:
        supervisor = await host.ready()
    except SupervisorStartError as exc:
        return failure(ErrorType.LOST, f"lost: {exc}")
    job_id = supervisor_job_id(job, supervisor.running_jobs)
    interval = host.settings.progress_interval_s
    return host.spawn(drive(supervisor, job.get("input"), job_id, sink, interval, flush_at_end))


async def _settle(ended: Ended) -> None:
    """After a stop: wait (bounded) until the job's task, and so its process tree, is gone."""
    limit = get_host().settings.grace_s + SETTLE_MARGIN_S
    done, _ = await asyncio.wait({asyncio.wrap_future(ended)}, timeout=limit)
    if not done:
        log.error("a stopped job was still being cleaned up after %.1f s", limit)


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """runpod handler: the job's input is a FunctionRequest; returns the FunctionResponse dict."""
    started = await _start_job(job, progress_sink(job), flush_at_end=False)
    if isinstance(started, FunctionResponse):
        return started.to_wire()
    future, ended = started
    try:
        response: FunctionResponse = await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        # runpod stopped the job; the cancel reaches the supervisor's task through the future.
        future.cancel()
        await _settle(ended)
        raise
    return response.to_wire()


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Generator mode (``SANDVISOR_RUNPOD_STREAM``): log batches, then the FunctionResponse dict."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def sink(payload: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(items.put_nowait, payload)

    started = await _start_job(job, sink, flush_at_end=True)
    if isinstance(started, FunctionResponse):
        yield started.to_wire()
        return
    future, ended = started
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(items.put_nowait, None))
    try:
        while (item := await items.get()) is not None:
            yield item
        yield future.result().to_wire()
    finally:
        if not future.done():
            future.cancel()
            await _settle(ended)


# -- the worker ----------------------------------------------------------------------------------


def default_concurrency(settings: Settings) -> int:
    """Jobs at once: configured, else one per GPU, else one per CPU this process may use."""
    if settings.concurrency:
        return settings.concurrency
    from sandvisor.supervisor.gpus import detect_gpus

    gpus = detect_gpus(settings)
    if gpus:
        return len(gpus)
    return max(1, len(os.sched_getaffinity(0)))


def place_caches(settings: Settings, environ: dict[str, str] | Any = os.environ) -> list[str]:
    """On a RunPod network volume, keep model caches there too; returns what was set."""
    if not volume_present():
        return []
    placed = []
    if "HF_HOME" not in environ:
        environ["HF_HOME"] = str(settings.home / "huggingface")
        placed.append(f"HF_HOME={environ['HF_HOME']}")
    return placed


def concurrency_modifier_for(host: SupervisorHost, concurrency: int) -> Callable[[int], int]:
    def concurrency_modifier(current: int) -> int:
        # runpod calls this just before each take: the first call holds the first take until
        # the Supervisor (and its base template) is warm.
        host.wait_ready()
        return concurrency

    return concurrency_modifier


def serve(argv: Sequence[str]) -> int:
    """Start runpod's worker with our handler; ``argv`` are runpod's own flags, untouched."""
    settings = Settings.from_env()
    for line in place_caches(settings):
        print(f"sandvisor: {line}", file=sys.stderr)
    host = get_host(settings)
    concurrency = default_concurrency(settings)
    test_input = "--test_input" in argv or any(a.startswith("--test_input=") for a in argv)
    # runpod's --test_input path cannot run a generator handler; /stream needs one.
    streaming = settings.runpod_stream and not test_input

    import runpod
    from runpod.serverless.modules import rp_scale

    from sandvisor.supervisor.runpod_scaler import install_prompt_scaler

    if settings.runpod_prompt_take:
        install_prompt_scaler(rp_scale)
    config: dict[str, Any] = {
        "handler": stream_handler if streaming else handler,
        "concurrency_modifier": concurrency_modifier_for(host, concurrency),
        "return_aggregate_stream": streaming,
    }
    sys.argv = [sys.argv[0], *argv]  # runpod parses sys.argv itself
    code: int = 0
    try:
        runpod.serverless.start(config)
    except SupervisorStartError as exc:
        print(f"sandvisor serve: {exc}", file=sys.stderr)
        code = 1
    except SystemExit as exc:  # --test_input ends with sys.exit(0|1)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        host.close()
    return code
