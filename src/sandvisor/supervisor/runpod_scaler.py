"""runpod-python's JobScaler, taking the next job as soon as a slot frees instead of after 1 s.

runpod-python 1.12's take loop (``rp_scale.JobScaler.get_jobs``) sleeps a full second whenever
all its slots are busy, so at concurrency 1 a worker takes at most about one job per second
however fast the jobs are. Its loop calls ``await self.set_scale()`` at the top of every
iteration; here that call also waits, on an event that each finished job sets, until a slot is
free. The loop then never reaches its sleep and asks for the next job the moment one ends.
Everything else (taking, running, stopping, posting results, shutdown) is runpod's own code.

Imported only on the ``sandvisor serve`` path: importing runpod is slow.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

#: How often a waiting take loop looks at the shutdown flag.
SHUTDOWN_POLL_S = 1.0


def install_prompt_scaler(rp_scale: ModuleType) -> None:
    """Make runpod's worker (``worker.run_worker`` reads ``rp_scale.JobScaler``) use ours."""
    base = rp_scale.JobScaler
    if getattr(base, "_sandvisor_prompt", False):
        return

    class PromptJobScaler(base):  # type: ignore[misc, valid-type]
        _sandvisor_prompt = True

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__(config)
            self._slot_freed = asyncio.Event()

        async def set_scale(self) -> None:
            await super().set_scale()
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

    PromptJobScaler.__name__ = PromptJobScaler.__qualname__ = "PromptJobScaler"
    rp_scale.JobScaler = PromptJobScaler
