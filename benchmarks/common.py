"""What every benchmark module shares: the table's row, percentiles, a supervisor for a bench."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.settings import Settings


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure, its value, its target and whether it was met."""

    figure: str  # "(a)", "(b)", ...
    measure: str
    value: str
    target: str = ""
    met: bool | None = None  # None: a baseline or a figure without a target
    note: str = ""  # ratios against baselines, or why a figure is missing


def bench_home() -> Path:
    """Where benchmark envs live between runs, so (b) times a cached env, not a build."""
    configured = os.environ.get("SANDVISOR_BENCH_HOME")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sandvisor-bench"


def bench_settings(**overrides: Any) -> Settings:
    """Defaults as a worker has them, a private store, and no GPU probing. As root, jobs run as
    job identities unless ``SANDVISOR_JOB_UIDS=""`` (to time them without the switch)."""
    values: dict[str, Any] = {"home": bench_home(), "gpus": ""}
    if "SANDVISOR_JOB_UIDS" in os.environ:
        values["job_uids"] = os.environ["SANDVISOR_JOB_UIDS"]
    values.update(overrides)
    return Settings.from_env(environ={}, **values)


@asynccontextmanager
async def supervisor(**overrides: Any) -> AsyncIterator[Supervisor]:
    async with Supervisor(bench_settings(**overrides)) as running:
        yield running


def function_request(code: str, name: str = "main", **fields: Any) -> dict[str, Any]:
    return {"function_name": name, "function_code": code, "serialization_format": "json", **fields}


async def time_jobs(
    sup: Supervisor, request: dict[str, Any], count: int, warmup: int = 5
) -> list[float]:
    """Wall ms of ``count`` sequential ``Supervisor.run`` calls (after ``warmup`` untimed)."""
    for _ in range(warmup):
        await checked(sup.run(request))
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await checked(sup.run(request))
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def checked(pending: Awaitable[Any]) -> Any:
    response = await pending
    if not response.success:
        raise RuntimeError(f"benchmark job failed: {response.error}")
    return response


def time_calls(call: Callable[[], object], count: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]


def ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
