"""Pieces of the RunPod handler that need no worker: log batching, job ids, concurrency."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import make_settings

from sandvisor.supervisor.events import LogEvent
from sandvisor.worker.handler import MAX_PROGRESS_BYTES, LogBatcher, supervisor_job_id
from sandvisor.worker.serve import default_concurrency


def line(text: str) -> LogEvent:
    return LogEvent("stdout", text + "\n", 0.0)


class ManualTime:
    """A clock and a timer that move only when the test says: ``advance(seconds)``."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, Callable[[], None], ManualTime.Timer]] = []

    class Timer:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def clock(self) -> float:
        return self.now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> ManualTime.Timer:
        timer = ManualTime.Timer()
        self._timers.append((self.now + delay_s, callback, timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock on, running each timer that falls due, in the order they fall due."""
        until = self.now + seconds
        while True:
            due = sorted((t for t in self._timers if t[0] <= until), key=lambda t: t[0])
            if not due:
                break
            self._timers.remove(due[0])
            when, callback, timer = due[0]
            self.now = when
            if not timer.cancelled:
                callback()
        self.now = until


def batcher_on(time_: ManualTime, interval_s: float) -> tuple[LogBatcher, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    batcher = LogBatcher(interval_s, sent.append, clock=time_.clock, call_later=time_.call_later)
    return batcher, sent


def texts(sent: list[dict[str, Any]]) -> list[list[str]]:
    return [[record["text"] for record in update["logs"]] for update in sent]


def test_batches_go_out_at_most_once_per_interval() -> None:
    time_ = ManualTime()
    batcher, sent = batcher_on(time_, 0.2)
    batcher.add(line("a"))
    time_.advance(0)
    assert texts(sent) == [["a\n"]]  # the first goes out at once
    for text in "bcd":
        batcher.add(line(text))
    time_.advance(0.199)
    assert len(sent) == 1  # the rest wait for the interval
    time_.advance(0.001)
    assert texts(sent) == [["a\n"], ["b\n", "c\n", "d\n"]]
    time_.advance(10)
    assert len(sent) == 2  # nothing pending: no empty update
    batcher.add(line("e"))
    time_.advance(0)
    assert texts(sent)[-1] == ["e\n"]  # a quiet interval has passed: at once again
    batcher.close(flush=False)


def test_an_oversized_batch_counts_what_it_leaves_out() -> None:
    batcher, sent = batcher_on(ManualTime(), 10.0)
    big = "x" * (MAX_PROGRESS_BYTES // 2)
    for _ in range(3):
        batcher.add(line(big))
    batcher.close(flush=True)
    assert len(sent[0]["logs"]) == 1
    assert sent[0]["logs_left_out_bytes"] == 2 * (len(big) + 1)


def test_close_without_flush_drops_what_is_pending() -> None:
    time_ = ManualTime()
    batcher, sent = batcher_on(time_, 10.0)
    batcher.add(line("first"))
    time_.advance(0)
    batcher.add(line("late"))
    batcher.close(flush=False)  # the final stdout carries it; no update after the result
    time_.advance(60)
    assert texts(sent) == [["first\n"]]


async def test_on_the_running_loop_by_default() -> None:
    sent: list[dict[str, Any]] = []
    batcher = LogBatcher(10.0, sent.append)
    batcher.add(line("now"))
    for _ in range(3):  # the timer of delay 0 runs on one of the next loop iterations
        await asyncio.sleep(0)
    assert texts(sent) == [["now\n"]]
    batcher.close(flush=False)


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
