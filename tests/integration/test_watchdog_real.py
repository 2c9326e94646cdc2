"""The watchdog on real processes: a memory hog, a fork spree and a hang, each caught."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from sandvisor.protocol.models import ErrorType, RequestLimits
from sandvisor.supervisor.limits import MIB, Limits
from sandvisor.supervisor.proctree import ProcessTree, job_environ, terminate_tree
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.watchdog import Watchdog


def limits(**asked: object) -> Limits:
    settings = Settings.from_env({}, memory_mb=2048, timeout_s=10.0, max_procs=8, cpu_s=5.0)
    return Limits.resolve(settings, RequestLimits.model_validate(asked))


@pytest.fixture
def job() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(job: list[subprocess.Popen[bytes]], job_id: str, code: str) -> ProcessTree:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=os.environ | job_environ(job_id), start_new_session=True
    )
    job.append(proc)
    return ProcessTree(job_id, proc.pid)


async def run_watch(tree: ProcessTree, **asked: object) -> tuple[ErrorType, str, float]:
    dog = Watchdog(tree, limits(**asked), interval_s=0.05)
    breach = await asyncio.wait_for(dog.run(), 20)
    await terminate_tree(tree, grace_s=0.5)
    return breach.error_type, breach.message, dog.record.peak_rss_bytes


async def test_a_real_memory_hog_is_caught(job: list) -> None:
    hog = "import time\nblocks = []\nwhile True:\n    blocks.append(b'x' * 10_000_000)\n"
    hog += "    time.sleep(0.01)\n"
    kind, message, peak = await run_watch(start(job, uuid.uuid4().hex, hog), memory_mb=200)
    assert kind is ErrorType.MEMORY_LIMIT
    assert "over the 200 MB limit" in message
    assert peak > 200 * MIB


async def test_a_real_fork_spree_is_caught(job: list) -> None:
    spree = "import subprocess, time\nfor _ in range(6):\n"
    spree += "    subprocess.Popen(['sleep', '30'])\ntime.sleep(30)\n"
    kind, message, _ = await run_watch(start(job, uuid.uuid4().hex, spree), max_procs=4)
    assert kind is ErrorType.PROCESS_LIMIT
    assert "over the limit of 4" in message


async def test_a_real_hang_times_out_on_time(job: list) -> None:
    started = time.monotonic()
    tree = start(job, uuid.uuid4().hex, "import time; time.sleep(30)")
    kind, _, _ = await run_watch(tree, timeout_s=0.5)
    assert kind is ErrorType.TIMEOUT
    assert time.monotonic() - started < 3
