"""Run as ``python -m benchmarks.rss_probe``: a bare supervisor process reports its own RSS.

Idle (base template warm, no job), then with 50 jobs in flight. The supervisor's process only:
templates and job children are other processes. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json

import psutil

from benchmarks.common import bench_settings, function_request
from sandvisor.supervisor.core import Supervisor

IN_FLIGHT = 50
SLEEP = "import time\n\ndef main():\n    time.sleep(2)\n"


async def measure() -> dict[str, float]:
    me = psutil.Process()
    async with Supervisor(bench_settings()) as sup:
        await sup.run(function_request("def main():\n    return 1\n"))
        await asyncio.sleep(0.2)
        idle = me.memory_info().rss
        jobs = [asyncio.ensure_future(sup.run(function_request(SLEEP))) for _ in range(IN_FLIGHT)]
        while len(sup.running_jobs) < IN_FLIGHT or not all_forked(me):
            await asyncio.sleep(0.05)
        busy = me.memory_info().rss
        for job_id in sup.running_jobs:
            await sup.cancel(job_id)
        await asyncio.gather(*jobs)
    return {"idle_mb": idle / 2**20, "busy_mb": busy / 2**20, "in_flight": IN_FLIGHT}


def all_forked(me: psutil.Process) -> bool:
    templates = [p for p in me.children() if "--template" in " ".join(p.cmdline())]
    return sum(len(t.children()) for t in templates) >= IN_FLIGHT


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure())))
