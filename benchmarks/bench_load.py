"""(d) 200 concurrent sleeping jobs, (e) log throughput and first-line latency."""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import Row, checked, function_request, ms, p50, supervisor
from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.events import LogEvent

SLEEP = "import time\n\ndef main():\n    time.sleep(0.5)\n    return 'slept'\n"
CONCURRENT = 200

FLOOD_MB = 64
FLOOD = f"""
import os

def main():
    block = (b"x" * 1023 + b"\\n") * 64
    for _ in range({FLOOD_MB} * 16):
        os.write(1, block)
    return {FLOOD_MB}
"""
FIRST_LINE = "import time\n\ndef main():\n    print('first', flush=True)\n    time.sleep(0.05)\n"


async def concurrent_sleepers() -> list[Row]:
    request = function_request(SLEEP)
    async with supervisor() as sup:
        await checked(sup.run(function_request("def main():\n    return 1\n")))
        started = time.perf_counter()
        responses = await asyncio.gather(*(sup.run(request) for _ in range(CONCURRENT)))
        wall = time.perf_counter() - started
    failed = sum(not r.success for r in responses)
    return [
        Row(
            "(d)",
            f"{CONCURRENT} concurrent sleep(0.5) jobs, all done in",
            f"{wall:.2f} s",
            "<= 1.5 s",
            wall <= 1.5 and not failed,
            f"{failed} failed" if failed else "all succeeded",
        )
    ]


async def log_throughput() -> list[Row]:
    async with supervisor() as sup:
        await checked(sup.run(function_request("def main():\n    return 1\n")))
        received = 0
        started = time.perf_counter()
        async for item in sup.stream(function_request(FLOOD)):
            if isinstance(item, LogEvent) and item.stream == "stdout":
                received += len(item.text)
            elif isinstance(item, FunctionResponse) and not item.success:
                raise RuntimeError(f"benchmark job failed: {item.error}")
        elapsed = time.perf_counter() - started
        latencies = [await first_line_ms(sup) for _ in range(20)]
    rate = received / elapsed / 1e6
    return [
        Row(
            "(e)",
            "log throughput, child stdout to caller",
            f"{rate:.0f} MB/s",
            ">= 200 MB/s",
            rate >= 200 and received >= FLOOD_MB * 1024 * 1024,
            f"{received / 1e6:.0f} MB in {elapsed:.2f} s through Supervisor.stream",
        ),
        Row(
            "(e)",
            "first line, stream() call to first stdout event, p50",
            ms(p50(latencies)),
            "<= 20 ms",
            p50(latencies) <= 20,
        ),
    ]


async def first_line_ms(sup) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    first = None
    async for item in sup.stream(function_request(FIRST_LINE)):
        if first is None and isinstance(item, LogEvent) and item.stream == "stdout":
            first = (time.perf_counter() - started) * 1000
    assert first is not None
    return first


async def rows() -> list[Row]:
    return [*await concurrent_sleepers(), *await log_throughput()]
