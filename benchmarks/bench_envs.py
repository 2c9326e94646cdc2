"""Dependency environments (issue 3): what a cache hit costs, a cold build against bare uv.

    uv run python -m benchmarks.bench_envs [--requests 200] [--builds 5] [--no-cold]

Its rows are part of ``python -m benchmarks`` (``just bench``); alone it prints them the same way.

1. Cache-hit overhead per request over the base-env path (goal: under 2 ms):
   - EnvStore alone: acquire+release of a published env, against the base env (no dependencies);
   - end to end: ``Supervisor.run`` of a tiny function with a dependency that hits, against the
     same function with none (medians; both forked from a warm template);
   - for scale, what worker-flash pays per request instead: ``uv pip install`` of an already
     installed package.
   Offline: the dependency is a tiny wheel built here, installed with --no-index --find-links.
2. Cold build of {numpy} with a warm uv cache, against a bare ``uv venv && uv pip install numpy``
   timed in the same run on the same cache (goal: ratio at most 1.2). The cache lives in the
   bench home (see ``benchmarks.common.bench_home``), so only the first run downloads numpy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from uv import find_uv_bin

from benchmarks.common import Row, bench_home, ms, p50
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.envs import EnvStore
from sandvisor.supervisor.errors import EnvError
from sandvisor.supervisor.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wheelhouse import build_wheel

CODE = "def main():\n    return 1\n"
HIT_OVERHEAD_GOAL_MS = 2.0
BUILD_RATIO_GOAL = 1.2
REQUESTS = 200
#: Cold builds of each kind; each takes a fraction of a second with a warm cache.
BUILDS = 5


def settings_for(home: Path) -> Settings:
    return Settings.from_env(environ={}, home=home, gpus="")


def no_log(line: str) -> None:
    pass


def micro(value_ms: float) -> str:
    """A hit costs microseconds: ``ms`` would print them as 0.00 ms."""
    return f"{value_ms * 1000:.1f} us"


async def timed_ms(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


@contextmanager
def offline_index(wheels: Path) -> Iterator[None]:
    """uv installs from ``wheels`` only (EnvStore hands uv the supervisor's ``UV_*``)."""
    saved = {name: os.environ.get(name) for name in ("UV_FIND_LINKS", "UV_NO_INDEX")}
    os.environ.update(UV_FIND_LINKS=str(wheels), UV_NO_INDEX="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def hit_overhead(home: Path, requests: int) -> list[Row]:
    wheels = build_wheel(home / "wheelhouse", "benchpkg", "1.0").parent
    with offline_index(wheels):
        return await _hit_overhead(home, requests, ["benchpkg==1.0"])


async def _hit_overhead(home: Path, requests: int, deps: list[str]) -> list[Row]:
    store = EnvStore(settings_for(home))
    (await store.acquire(deps, no_log)).release()  # built once, hits from here

    async def acquire(dependencies: list[str] | None) -> None:
        (await store.acquire(dependencies, no_log)).release()

    base = await timed_ms(lambda: acquire(None), requests)
    hit = await timed_ms(lambda: acquire(deps), requests)
    plain, with_deps = await supervisor_runs(home, deps, requests)
    overhead = p50(with_deps) - p50(plain)
    env_python = store.root / str(store.plan(deps).key) / "bin" / "python"
    install = ["pip", "install", "--python", str(env_python), *deps]
    noop = [run_uv_ms(install, store.settings.uv_cache_dir) for _ in range(10)]
    return [
        Row(
            "envs",
            "cache hit, EnvStore acquire+release, p50",
            micro(p50(hit)),
            note=f"{micro(p50(base))} for the base env (no venv); n={requests}",
        ),
        Row(
            "envs",
            "cache-hit overhead per request, Supervisor.run p50",
            ms(overhead),
            f"< {HIT_OVERHEAD_GOAL_MS:g} ms",
            overhead < HIT_OVERHEAD_GOAL_MS,
            f"{ms(p50(with_deps))} with a cached dependency, {ms(p50(plain))} without",
        ),
        Row(
            "envs",
            "  for scale: uv pip install, all present, p50",
            ms(p50(noop)),
            note="what worker-flash pays per request instead",
        ),
    ]


async def supervisor_runs(
    home: Path, deps: list[str], requests: int
) -> tuple[list[float], list[float]]:
    """Wall ms of ``Supervisor.run`` without and with ``deps``, interleaved so drift hits both."""
    async with Supervisor(settings_for(home)) as sup:
        request = {"function_name": "main", "function_code": CODE, "serialization_format": "json"}

        async def run(extra: dict[str, object]) -> None:
            response = await sup.run(request | extra)
            if not response.success:
                raise RuntimeError(f"benchmark job failed: {response.error}")

        await timed_ms(lambda: run({}), 5)  # warm both templates before measuring
        await timed_ms(lambda: run({"dependencies": deps}), 5)
        plain: list[float] = []
        with_deps: list[float] = []
        for _ in range(requests // 10):
            plain += await timed_ms(lambda: run({}), 5)
            with_deps += await timed_ms(lambda: run({"dependencies": deps}), 5)
    return plain, with_deps


def run_uv_ms(args: list[str], cache: Path) -> float:
    env = dict(os.environ, UV_CACHE_DIR=str(cache), UV_PYTHON_DOWNLOADS="never")
    start = time.perf_counter()
    subprocess.run([find_uv_bin(), *args], env=env, check=True, capture_output=True, timeout=600)
    return (time.perf_counter() - start) * 1000


def bare_build_ms(home: Path) -> float:
    target = Path(tempfile.mkdtemp(dir=home, prefix="bare-")) / "venv"
    cache = settings_for(home).uv_cache_dir
    try:
        elapsed = run_uv_ms(["venv", "--python", sys.executable, str(target)], cache)
        install = ["pip", "install", "--python", str(target / "bin" / "python"), "numpy"]
        return elapsed + run_uv_ms(install, cache)
    finally:
        shutil.rmtree(target.parent)


async def store_build_ms(store: EnvStore) -> float:
    start = time.perf_counter()
    lease = await store.acquire(["numpy"], no_log)
    elapsed = (time.perf_counter() - start) * 1000
    lease.release()
    if not lease.built:
        raise RuntimeError("numpy's env was not built (is numpy in the base environment?)")
    store.remove(str(lease.key))  # cold again for the next round
    return elapsed


async def cold_build(builds: int) -> list[Row]:
    # Beside the other bench envs: same filesystem as a real store, and a uv cache that persists.
    home = bench_home() / "cold-builds"
    home.mkdir(parents=True, exist_ok=True)
    store = EnvStore(settings_for(home))
    for left in store.list():  # an interrupted run's env would make the first build a hit
        store.remove(left.key)
    bare_build_ms(home)  # fills the uv cache (downloads numpy on a first run)
    bare: list[float] = []
    ours: list[float] = []
    for _ in range(builds):  # interleaved
        bare.append(bare_build_ms(home))
        ours.append(await store_build_ms(store))
    ratio = p50(ours) / p50(bare)
    return [
        Row(
            "envs",
            "cold build of numpy, EnvStore (lock, stage, publish), p50",
            ms(p50(ours)),
            note=f"warm uv cache; n={builds}",
        ),
        Row("envs", "  baseline: bare uv venv + uv pip install numpy, p50", ms(p50(bare))),
        Row(
            "envs",
            "  EnvStore build vs bare uv",
            f"{ratio:.2f}x",
            f"<= {BUILD_RATIO_GOAL}x",
            ratio <= BUILD_RATIO_GOAL,
        ),
    ]


async def measure(requests: int = REQUESTS, builds: int = BUILDS, cold: bool = True) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-envs-") as tmp:
        found = await hit_overhead(Path(tmp), requests)
    if cold:
        try:
            found += await cold_build(builds)
        except (subprocess.CalledProcessError, EnvError, RuntimeError) as exc:
            # Offline, say: the hit rows above still stand.
            found.append(Row("envs", "cold build of numpy", "-", note=f"skipped: {why(exc)}"))
    return found


def why(exc: Exception) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        lines = exc.stderr.decode(errors="replace").strip().splitlines()
        errors = [line.strip() for line in lines if line.lstrip().startswith("error")]
        return (errors or lines or [f"uv exited with {exc.returncode}"])[0]
    return str(exc).splitlines()[0]


async def rows() -> list[Row]:
    return await measure()


def main() -> None:
    from benchmarks.__main__ import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--builds", type=int, default=BUILDS)
    parser.add_argument("--no-cold", action="store_true", help="skip the numpy build (offline)")
    options = parser.parse_args()
    print(render(asyncio.run(measure(options.requests, options.builds, not options.no_cold))))


if __name__ == "__main__":
    main()
