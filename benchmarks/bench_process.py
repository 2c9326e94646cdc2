"""(f) ``sandvisor --help`` wall time, (g) the supervisor's RSS idle and with 50 jobs in flight."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Row, ms, p50

HELP_RUNS = 10
PROBE_TIMEOUT_S = 60


def help_wall_ms() -> list[float]:
    command = [str(Path(sys.executable).parent / "sandvisor"), "--help"]
    samples = []
    for _ in range(HELP_RUNS):
        started = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True, timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def supervisor_rss() -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.rss_probe"],
        capture_output=True,
        text=True,
        check=True,
        timeout=PROBE_TIMEOUT_S,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


async def rows() -> list[Row]:
    help_ms = p50(help_wall_ms())
    rss = supervisor_rss()
    return [
        Row("(f)", "sandvisor --help, wall p50", ms(help_ms), "<= 250 ms", help_ms <= 250),
        Row(
            "(g)",
            "supervisor RSS, idle (base template warm)",
            f"{rss['idle_mb']:.0f} MB",
            "< 80 MB",
            rss["idle_mb"] < 80,
            "the supervisor process only",
        ),
        Row(
            "(g)",
            f"supervisor RSS, {rss['in_flight']:.0f} jobs in flight",
            f"{rss['busy_mb']:.0f} MB",
        ),
    ]
