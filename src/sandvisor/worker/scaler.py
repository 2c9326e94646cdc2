"""runpod-python's JobScaler, taking and starting the next job as soon as a slot frees.

runpod-python 1.12's loop (``rp_scale.JobScaler``) has two pauses that keep a worker idle
between fast jobs: its take loop (``get_jobs``) sleeps a full second whenever all slots are busy,
so at concurrency 1 a worker takes at most about one job per second; and its dispatch loop
(``run_jobs``) looks at the job queue only every 0.1 s. Here both wait on events instead:

- ``set_scale``, which the take loop awaits at the top of every round, also waits until a
  finished job frees a slot; the loop then never reaches its sleep and asks for the next job
  the moment one ends;
- the job queue sets an event on every put, and ``run_jobs`` waits on that event and on the
  running jobs together, so a taken job starts at once. It is runpod's ``run_jobs`` otherwise:
  same queue, same task per job registered for stop signals, same drain at shutdown.

Taking jobs, running the handler, stop signals, posting results and shutdown stay runpod's own
code. Imported only on the ``sandvisor serve`` path: importing runpod is slow.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

#: How often a waiting loop looks at the shutdown flag.
SHUTDOWN_POLL_S = 1.0


class NotifyingQueue(asyncio.Queue):  # type: ignore[type-arg]
    """runpod's job queue, plus an event set on every put (``put`` goes through here too)."""

    def __init__(self, maxsize: int, queued: asyncio.Event) -> None:
        super().__init__(maxsize)
        self._queued = queued

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        self._queued.set()


def install_prompt_scaler(rp_scale: ModuleType) -> None:
    """Make runpod's worker (``worker.run_worker`` reads ``rp_scale.JobScaler``) use ours."""
    base = rp_scale.JobScaler
    if getattr(base, "_sandvisor_prompt", False):
        return
    log = rp_scale.log

    class PromptJobScaler(base):  # type: ignore[misc, valid-type]
        _sandvisor_prompt = True

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__(config)
            self._slot_freed = asyncio.Event()
            self._job_queued = asyncio.Event()
            self._notify_on_put()

        def _notify_on_put(self) -> None:
            # runpod replaces its queue when the concurrency changes (only while it is empty).
            if not isinstance(self.jobs_queue, NotifyingQueue):
                self.jobs_queue = NotifyingQueue(self.jobs_queue.maxsize, self._job_queued)

        async def set_scale(self) -> None:
            await super().set_scale()
            self._notify_on_put()
            while True:
                self._slot_freed.clear()  # before the check: no finish can slip in between
                if not self.is_alive() or self.current_occupancy() < self.current_concurrency:
                    return
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), SHUTDOWN_POLL_S)
                except asyncio.TimeoutError:
                    pass

        async def handle_job(self, session: Any, job: dict[str, Any]) -> None:
            try:
                await super().handle_job(session, job)
            finally:
                # runpod's own finally has removed the job from its progress count by now.
                self._slot_freed.set()

        async def run_jobs(self, session: Any) -> None:
            tasks: set[asyncio.Task[None]] = set()
            while self.is_alive() or not self.jobs_queue.empty():
                while len(tasks) < self.current_concurrency and not self.jobs_queue.empty():
                    job = self.jobs_queue.get_nowait()
                    task = asyncio.create_task(self.handle_job(session, job))
                    tasks.add(task)
                    self.jobs_tasks[job["id"]] = task
                self._job_queued.clear()  # the queue was just looked at, with no await since
                queued = asyncio.ensure_future(self._job_queued.wait())
                try:
                    done, _ = await asyncio.wait(
                        {*tasks, queued},
                        timeout=SHUTDOWN_POLL_S,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    queued.cancel()
                tasks.difference_update(done)
            # As runpod does: let the jobs in flight finish; stopped ones end cancelled.
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
                    log.error(f"JobScaler.run_jobs | Task failed during shutdown drain: {result}")

    PromptJobScaler.__name__ = PromptJobScaler.__qualname__ = "PromptJobScaler"
    rp_scale.JobScaler = PromptJobScaler
