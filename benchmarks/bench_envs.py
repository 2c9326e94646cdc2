"""Dependency environments: what a cache hit costs, and how a cold build compares with bare uv.

    uv run python benchmarks/bench_envs.py [--requests 200] [--builds 3] [--no-cold]

1. Cache-hit overhead per request over the base-env path (goal: under 2 ms):
   - EnvStore alone: acquire+release of a published env, against the base env (no dependencies);
   - end to end: ``Supervisor.run`` of a tiny function with a dependency that hits, against the
     same function with none (medians; both forked from a warm template);
   - for scale, what worker-flash pays per request instead: ``uv pip install`` of an already
     installed package.
   Offline: the dependency is a tiny wheel built here, installed with --no-index --find-links.
2. Cold build of {numpy} with a warm uv cache, against a bare ``uv venv && uv pip install numpy``
   timed in the same run on the same cache (goal: ratio at most 1.2). Needs the registry once,
   to warm the cache.

Figures are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from uv import find_uv_bin

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.envs import EnvStore
from sandvisor.supervisor.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wheelhouse import build_wheel

CODE = "def main():\n    return 1\n"


def settings_for(home: Path) -> Settings:
    return Settings.from_env(environ={}, home=home, gpus="")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


async def hit_overhead(home: Path, requests: int) -> None:
    wheels = build_wheel(home / "wheelhouse", "benchpkg", "1.0").parent
    os.environ["UV_FIND_LINKS"] = str(wheels)
    os.environ["UV_NO_INDEX"] = "1"
    deps = ["benchpkg==1.0"]

    store = EnvStore(settings_for(home))
    (await store.acquire(deps, lambda line: None)).release()  # built once, hits from here

    async def acquire(dependencies: list[str] | None) -> None:
        (await store.acquire(dependencies, lambda line: None)).release()

    base = await timed(lambda: acquire(None), requests)
    hit = await timed(lambda: acquire(deps), requests)
    print("1. cache hit")
    print(f"   EnvStore acquire+release, base env     median {ms(statistics.median(base))}")
    print(f"   EnvStore acquire+release, hit          median {ms(statistics.median(hit))}")

    async with Supervisor(settings_for(home)) as sup:
        request = {"function_name": "main", "function_code": CODE, "serialization_format": "json"}

        async def run(extra: dict[str, object]) -> None:
            response = await sup.run(request | extra)
            assert response.success, response.error

        await timed(lambda: run({}), 5)  # warm both templates before measuring
        await timed(lambda: run({"dependencies": deps}), 5)
        plain, with_deps = [], []
        for _ in range(requests // 10):  # interleaved, so drift hits both alike
            plain += await timed(lambda: run({}), 5)
            with_deps += await timed(lambda: run({"dependencies": deps}), 5)
    overhead = statistics.median(with_deps) - statistics.median(plain)
    print(f"   Supervisor.run, no dependencies        median {ms(statistics.median(plain))}")
    print(f"   Supervisor.run, dependencies (hit)     median {ms(statistics.median(with_deps))}")
    print(f"   overhead of a hit per request          {ms(overhead)}   (goal: < 2 ms)")

    env_python = store.root / str(store.plan(deps).key) / "bin" / "python"
    noop = [
        run_uv_timed(["pip", "install", "--python", str(env_python), *deps], home / "uv-cache")
        for _ in range(10)
    ]
    print(f"   for scale: uv pip install, all present median {ms(statistics.median(noop))}")


def run_uv_timed(args: list[str], cache: Path, cwd: Path | None = None) -> float:
    env = dict(os.environ, UV_CACHE_DIR=str(cache), UV_PYTHON_DOWNLOADS="never")
    start = time.perf_counter()
    subprocess.run(
        [find_uv_bin(), *args], env=env, cwd=cwd, check=True, capture_output=True, timeout=600
    )
    return time.perf_counter() - start


def bare_build(home: Path) -> float:
    target = Path(tempfile.mkdtemp(dir=home, prefix="bare-")) / "venv"
    cache = home / "uv-cache"
    try:
        elapsed = run_uv_timed(["venv", "--python", sys.executable, str(target)], cache)
        elapsed += run_uv_timed(
            ["pip", "install", "--python", str(target / "bin" / "python"), "numpy"], cache
        )
        return elapsed
    finally:
        shutil.rmtree(target.parent)


async def store_build(store: EnvStore) -> float:
    start = time.perf_counter()
    lease = await store.acquire(["numpy"], lambda line: None)
    elapsed = time.perf_counter() - start
    assert lease.built
    lease.release()
    store.remove(str(lease.key))  # cold again for the next round
    return elapsed


async def cold_build(home: Path, builds: int) -> None:
    os.environ.pop("UV_FIND_LINKS", None)
    os.environ.pop("UV_NO_INDEX", None)
    home.mkdir(parents=True)
    store = EnvStore(settings_for(home))
    bare_build(home)  # downloads numpy once: the cache is warm for both from here
    bare, ours = [], []
    for _ in range(builds):  # interleaved
        bare.append(bare_build(home))
        ours.append(await store_build(store))
    print("2. cold build of {numpy}, warm uv cache")
    print(f"   bare uv venv + uv pip install numpy    median {ms(statistics.median(bare))}")
    print(f"   EnvStore build (lock, stage, publish) median {ms(statistics.median(ours))}")
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"   ratio                                  {ratio:8.2f}      (goal: <= 1.2)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--no-cold", action="store_true", help="skip the numpy build (offline)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-envs-") as tmp:
        await hit_overhead(Path(tmp) / "hit", options.requests)
        if not options.no_cold:
            await cold_build(Path(tmp) / "cold", options.builds)


if __name__ == "__main__":
    asyncio.run(main())
