"""RunPod queue worker: runpod-python's own loop in front of one process-wide Supervisor.

    runpod loop (main thread)                    supervisor thread (its own event loop)
    handler(job) ------ SupervisorHost.spawn ----> drive(): Supervisor.stream(request)
         ^                                             | LogEvents, batched every
         |  FunctionResponse.to_wire()                 | progress_interval_s
         +---------------------------------------------+--> runpod.serverless.progress_update

The Supervisor lives on a thread of its own (``host.py``); ``serve.py`` starts runpod's loop.

A stop signal from the platform cancels the handler's task. The cancel crosses to the supervisor
thread, where the job's process group gets SIGTERM, the grace period, SIGKILL; the handler waits
for that before it lets the cancel go on, so the next job starts on a clean worker.

``import runpod`` costs about 2.6 s, so it happens only in ``serve.py`` and the functions runpod
itself calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.outcome import failure
from sandvisor.worker.deployed import DeployedApp
from sandvisor.worker.host import Ended, SupervisorStartError, get_host

log = logging.getLogger(__name__)

#: A progress update carries at most this much log text; the final ``stdout`` has all of it.
MAX_PROGRESS_BYTES = 64 * 1024
#: How long a stopped job may take to be gone, beyond its grace period, before we stop waiting.
SETTLE_MARGIN_S = 5.0

_SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

LogSink = Callable[[dict[str, Any]], None]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


#: ``call_later(delay_s, callback) -> handle``: asyncio's ``loop.call_later`` shape.
Scheduler = Callable[[float, Callable[[], None]], Cancellable]


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

#: The deployed app as the worker's start found it (``serve.py`` sets it); None: plain worker.
_deployed: DeployedApp | None = None


def set_deployed_app(app: DeployedApp | None) -> None:
    global _deployed
    _deployed = app


async def _preflight(job: dict[str, Any]) -> dict[str, Any] | None:
    """The answer when the job is not to run here: a broken app, or another resource's code."""
    if _deployed is None:
        return None
    early = await _deployed.preflight(job.get("input"))
    return None if early is None else early.to_wire()


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
    if (early := await _preflight(job)) is not None:
        return early
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

    if (early := await _preflight(job)) is not None:
        yield early
        return
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
