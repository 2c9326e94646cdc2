"""(a) hello world, (b) a job with a cached dependency env, (c) a job importing a preloaded module,
(b') the same job with no preload configured, after its template learned the import."""

from __future__ import annotations

import json
import shutil
from typing import Any

from benchmarks.common import (
    Row,
    bench_settings,
    checked,
    function_request,
    ms,
    p50,
    p90,
    supervisor,
    time_calls,
    time_jobs,
)

HELLO = "def main():\n    return 'hello world'\n"
NUMPY_JOB = "import numpy\n\ndef main():\n    return int(numpy.arange(10).sum())\n"
NUMPY = ["numpy"]
#: worker-flash, per request, with dependencies=["numpy"] already installed (issue 5's machine).
WORKER_FLASH_DEPS_MS = 90.0
#: Build time allowed for the numpy env on a first run (later runs find it cached).
BUILD_TIMEOUT_S = 150.0

TEMPLATE_JOBS = 300
FRESH_JOBS = 30


def in_process(request: dict[str, Any]) -> None:
    """What worker-flash does with a request: exec the source, call, encode. No isolation."""
    namespace: dict[str, Any] = {}
    exec(compile(request["function_code"], "<function_code>", "exec"), namespace)
    json.dumps(namespace[request["function_name"]]())


async def hello_world() -> tuple[list[Row], float]:
    request = function_request(HELLO)
    async with supervisor() as sup:
        forked = await time_jobs(sup, request, TEMPLATE_JOBS)
    async with supervisor(templates=False) as sup:
        fresh = await time_jobs(sup, request, FRESH_JOBS, warmup=2)
    exec_ms = time_calls(lambda: in_process(request), 2000)
    speedup = p50(fresh) / p50(forked)
    rows = [
        Row(
            "(a)",
            "hello world, Supervisor.run, template fork p50",
            ms(p50(forked)),
            "<= 3 ms",
            p50(forked) <= 3.0,
            f"p90 {ms(p90(forked))}, n={TEMPLATE_JOBS}",
        ),
        Row(
            "(a)",
            "  baseline: fresh interpreter per job p50",
            ms(p50(fresh)),
            note=f"n={FRESH_JOBS}",
        ),
        Row("(a)", "  baseline: in-process exec + call p50", ms(p50(exec_ms)), note="no isolation"),
        Row(
            "(a)",
            "  template fork vs fresh interpreter",
            f"{speedup:.1f}x faster",
            ">= 25x",
            speedup >= 25,
            f"isolation costs {p50(forked) / p50(exec_ms):.0f}x in-process exec",
        ),
    ]
    return rows, p50(forked)


async def cached_env() -> list[Row]:
    request = function_request(HELLO, dependencies=NUMPY, limits={"timeout_s": BUILD_TIMEOUT_S})
    async with supervisor() as sup:
        first = await sup.run(request)
        if not first.success:
            reason = (first.error or "").splitlines()[0]
            return [
                Row(
                    "(b)",
                    'dependencies=["numpy"], cached env p50',
                    "-",
                    "<= 5 ms",
                    None,
                    f"skipped: {reason}",
                )
            ]
        forked = await time_jobs(sup, request, 200)
    async with supervisor(templates=False) as sup:
        fresh = await time_jobs(sup, request, 15, warmup=2)
    vs_flash = WORKER_FLASH_DEPS_MS / p50(forked)
    return [
        Row(
            "(b)",
            'dependencies=["numpy"], cached env, p50',
            ms(p50(forked)),
            "<= 5 ms",
            p50(forked) <= 5.0,
            f"p90 {ms(p90(forked))}; {p50(fresh) / p50(forked):.0f}x a fresh interpreter ({ms(p50(fresh))})",
        ),
        Row(
            "(b)",
            "  vs worker-flash (90 ms, quoted in the issue)",
            f"{vs_flash:.0f}x faster",
            ">= 15x",
            vs_flash >= 15,
        ),
    ]


async def preloaded(hello_ms: float) -> list[Row]:
    request = function_request(NUMPY_JOB, dependencies=NUMPY, limits={"timeout_s": BUILD_TIMEOUT_S})
    async with supervisor(preload=NUMPY) as sup:
        first = await sup.run(request)
        if not first.success:
            reason = (first.error or "").splitlines()[0]
            return [
                Row(
                    "(c)",
                    "import a preloaded module (numpy) p50",
                    "-",
                    "(a) + 2 ms",
                    None,
                    f"skipped: {reason}",
                )
            ]
        warm = await time_jobs(sup, request, 200)
    async with supervisor(adaptive_preload=False) as sup:
        await checked(sup.run(request))
        cold = await time_jobs(sup, request, 20, warmup=2)
    return [
        Row(
            "(c)",
            "import numpy, preloaded in the template, p50",
            ms(p50(warm)),
            f"<= {ms(hello_ms + 2)} ((a) + 2 ms)",
            p50(warm) <= hello_ms + 2,
            f"p90 {ms(p90(warm))}; {p50(cold) / p50(warm):.0f}x the same job without preload ({ms(p50(cold))})",
        ),
    ]


async def learned(hello_ms: float) -> list[Row]:
    """(b'): the numpy job, no preload configured, timed after its env's first 10 jobs, from
    which its template learns (in the background) to import numpy."""
    request = function_request(NUMPY_JOB, dependencies=NUMPY, limits={"timeout_s": BUILD_TIMEOUT_S})
    shutil.rmtree(bench_settings().preloads_dir, ignore_errors=True)  # learn from nothing
    async with supervisor(adaptive_preload=True, preload=[]) as sup:
        first = await sup.run(request)
        if not first.success:
            reason = (first.error or "").splitlines()[0]
            return [Row("(b')", "import numpy, learned preload, p50", "-", "", None, reason)]
        early = await time_jobs(sup, request, 9, warmup=0)
        after = await time_jobs(sup, request, 200, warmup=0)
    ratio = p50(after) / hello_ms
    return [
        Row(
            "(b')",
            "import numpy, no preload configured, p50 after 10 jobs",
            ms(p50(after)),
            "<= 1.3x (a)",
            ratio <= 1.3,
            f"{ratio:.2f}x (a); p90 {ms(p90(after))}; jobs 2-10 p50 {ms(p50(early))}",
        ),
    ]


async def rows() -> list[Row]:
    hello_rows, hello_ms = await hello_world()
    return [
        *hello_rows,
        *await cached_env(),
        *await preloaded(hello_ms),
        *await learned(hello_ms),
    ]
