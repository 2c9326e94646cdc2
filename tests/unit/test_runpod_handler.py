"""Pieces of the RunPod handler that need no worker: log batching, job ids, concurrency."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import make_settings

from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.runpod import (
    MAX_PROGRESS_BYTES,
    LogBatcher,
    default_concurrency,
    supervisor_job_id,
)


def line(text: str) -> LogEvent:
    return LogEvent("stdout", text + "\n", 0.0)


async def test_batches_go_out_at_most_once_per_interval() -> None:
    sent: list[dict[str, Any]] = []
    batcher = LogBatcher(0.2, sent.append)
    batcher.add(line("a"))
    await asyncio.sleep(0.02)
    assert [r["text"] for r in sent[0]["logs"]] == ["a\n"]  # the first goes out at once
    for text in "bcd":
        batcher.add(line(text))
    await asyncio.sleep(0.05)
    assert len(sent) == 1  # the rest wait for the interval
    await asyncio.sleep(0.25)
    assert [r["text"] for r in sent[1]["logs"]] == ["b\n", "c\n", "d\n"]
    batcher.close(flush=False)


async def test_an_oversized_batch_counts_what_it_leaves_out() -> None:
    sent: list[dict[str, Any]] = []
    batcher = LogBatcher(10.0, sent.append)
    big = "x" * (MAX_PROGRESS_BYTES // 2)
    for _ in range(3):
        batcher.add(line(big))
    batcher.close(flush=True)
    assert len(sent[0]["logs"]) == 1
    assert sent[0]["logs_left_out_bytes"] == 2 * (len(big) + 1)


async def test_close_without_flush_drops_what_is_pending() -> None:
    sent: list[dict[str, Any]] = []
    batcher = LogBatcher(10.0, sent.append)
    batcher.add(line("first"))
    await asyncio.sleep(0.01)
    batcher.add(line("late"))
    batcher.close(flush=False)  # the final stdout carries it; no update after the result
    await asyncio.sleep(0.02)
    assert [r["text"] for u in sent for r in u["logs"]] == ["first\n"]


def test_job_ids_are_kept_when_safe_and_free() -> None:
    assert supervisor_job_id({"id": "abc-123_x.y"}, []) == "abc-123_x.y"
    assert supervisor_job_id({"id": "abc"}, ["abc"]).startswith("job-")
    assert supervisor_job_id({"id": "../etc"}, []).startswith("job-")
    assert supervisor_job_id({}, []).startswith("job-")


def test_concurrency_configured_then_gpus_then_cpus(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_concurrency(make_settings(home, concurrency=3)) == 3
    assert default_concurrency(make_settings(home, gpus="0,1")) == 2
    cpus = len(os.sched_getaffinity(0))
    assert default_concurrency(make_settings(home, gpus="")) == cpus


def test_importing_the_handler_does_not_import_runpod() -> None:
    # runpod takes seconds to import: only `sandvisor serve` may pay for it.
    code = (
        "import sys, sandvisor.supervisor.runpod, sandvisor.supervisor.cli as c; c.build_parser()"
    )
    code += "; print('runpod' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
