"""The Supervisor's thread: one Supervisor per worker process, on a thread with its own loop.

runpod owns the main thread and creates several event loops of its own (fitness checks, the job
loop, uvicorn for ``--rp_serve_api``, one per ``--test_input`` run), so the Supervisor lives on a
thread with its own loop, started once per process. That lets it be warm before the first job is
taken (the concurrency modifier waits for it: runpod calls that just before the first take) and
be shut down cleanly whichever way runpod's ``start`` returns or raises ``SystemExit``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from typing import Any

from sandvisor.supervisor.settings import Settings

log = logging.getLogger(__name__)

#: How long the first job (or the first take) waits for the Supervisor to start.
START_TIMEOUT_S = 600.0

Ended = concurrent.futures.Future[None]


class SupervisorStartError(RuntimeError):
    """The Supervisor could not start, so this worker cannot run any job."""


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
