"""The RunPod worker: trivial jobs per second through runpod-python's real worker loop.

    uv run python benchmarks/bench_runpod.py [--jobs 40] [--baseline-jobs 8]
    (also a part of ``python -m benchmarks`` / ``just bench``, with 40 and 5 jobs)

``sandvisor serve`` runs in queue mode against the local fake of RunPod's job API
(tests/e2e/fake_runpod.py) with a trivial job (``return x``). For each setting:

- jobs/s: N jobs queued at once, from the first submit to the last job-done;
- take->done: per job, from the fake handing it out to its result arriving (median, p95).

Settings: sandvisor's defaults (concurrency from the machine, prompt take), concurrency 1 with
prompt take, and the baseline: concurrency 1 on runpod-python's loop as it ships, which sleeps
up to 1 s whenever its slots are full (``SANDVISOR_RUNPOD_PROMPT_TAKE=false``).
Figures are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.fake_runpod import FakeRunPod

SANDVISOR = str(Path(sys.executable).with_name("sandvisor"))
TRIVIAL = {
    "function_name": "f",
    "function_code": "def f(x):\n    return x\n",
    "args": [1],
    "serialization_format": "json",
}


@dataclass
class Figures:
    label: str
    concurrency: str
    jobs: int
    seconds: float
    take_to_done_ms: list[float]

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def line(self) -> str:
        ms = sorted(self.take_to_done_ms)
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        return (
            f"{self.label:<34} concurrency {self.concurrency:>7}  {self.rate:7.1f} jobs/s  "
            f"take->done median {statistics.median(ms):6.1f} ms  p95 {p95:6.1f} ms"
        )


def worker_env(api: FakeRunPod, home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "SANDVISOR_"))}
    env |= api.worker_env() | {
        "SANDVISOR_HOME": str(home),
        "SANDVISOR_GPUS": "",
        "RUNPOD_LOG_LEVEL": "ERROR",
    }
    return env | extra


def measure(label: str, jobs: int, home: Path, extra: dict[str, str]) -> Figures:
    log_path = home.parent / "serve.log"
    with FakeRunPod(hold_s=1.0, lifetime_s=600) as api, log_path.open("wb") as log:
        worker = subprocess.Popen(
            [SANDVISOR, "serve"],
            env=worker_env(api, home, extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            api.wait_for(lambda: bool(api.takes), 60, "the worker's first take")
            api.wait_done(api.submit(TRIVIAL), 60)  # warm: first job through every path
            started = time.monotonic()
            ids = [api.submit(TRIVIAL) for _ in range(jobs)]
            for job_id in ids:
                result = api.wait_done(job_id, 120)
                assert result["output"]["success"], result
            seconds = time.monotonic() - started
            spans = [
                (api.jobs[i].done_at - api.jobs[i].taken_at[0]) * 1000  # type: ignore[operator]
                for i in ids
            ]
        except BaseException:
            print(f"{label} failed; the worker's log ends with:", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    concurrency = extra.get("SANDVISOR_CONCURRENCY", "default")
    return Figures(label, concurrency, jobs, seconds, spans)


def default_concurrency_here() -> int:
    from sandvisor.supervisor.settings import Settings
    from sandvisor.worker.serve import default_concurrency

    return default_concurrency(Settings.from_env(environ={}, gpus=""))


def measure_all(jobs: int, baseline_jobs: int) -> list[Figures]:
    """sandvisor's defaults, prompt take at concurrency 1, runpod's stock loop at 1 (last)."""
    with tempfile.TemporaryDirectory(prefix="bench-runpod-") as tmp:
        home = Path(tmp) / "home"
        return [
            measure("sandvisor defaults", jobs, home, {}),
            measure("prompt take", jobs, home, {"SANDVISOR_CONCURRENCY": "1"}),
            measure(
                "runpod's stock loop (baseline)",
                baseline_jobs,
                home,
                {"SANDVISOR_CONCURRENCY": "1", "SANDVISOR_RUNPOD_PROMPT_TAKE": "false"},
            ),
        ]


async def rows() -> list[Any]:
    """The figures as rows of ``python -m benchmarks`` (``just bench``)."""
    import asyncio

    from benchmarks.common import Row

    defaults, prompt, stock = await asyncio.to_thread(measure_all, 40, 5)
    ms = statistics.median(prompt.take_to_done_ms)
    return [
        Row(
            "runpod",
            f"trivial jobs/s via runpod's worker loop, default concurrency "
            f"({default_concurrency_here()})",
            f"{defaults.rate:.1f}/s",
            note=f"{defaults.rate / stock.rate:.0f}x runpod's stock loop at concurrency 1",
        ),
        Row(
            "runpod",
            "trivial jobs/s via runpod's worker loop, concurrency 1",
            f"{prompt.rate:.1f}/s",
            note=f"{prompt.rate / stock.rate:.0f}x the stock loop; take->done median {ms:.1f} ms",
        ),
        Row(
            "runpod",
            "baseline: runpod-python's stock loop, concurrency 1",
            f"{stock.rate:.1f}/s",
            note=f"take->done median {statistics.median(stock.take_to_done_ms):.1f} ms",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per setting")
    parser.add_argument(
        "--baseline-jobs", type=int, default=8, help="jobs for runpod's stock loop (~1/s)"
    )
    options = parser.parse_args()
    runs = measure_all(options.jobs, options.baseline_jobs)
    print(
        "trivial jobs through runpod-python's worker loop "
        f"(default concurrency here: {default_concurrency_here()})"
    )
    for figures in runs:
        print("  " + figures.line())
    baseline = runs[-1].rate
    print(f"  concurrency 1, prompt take vs stock loop: {runs[1].rate / baseline:.1f}x jobs/s")
    print(f"  defaults vs stock loop at concurrency 1:  {runs[0].rate / baseline:.1f}x jobs/s")


if __name__ == "__main__":
    main()
