"""The supervisor's watch over one running job: wall time, tree memory, processes, CPU time.

:class:`Watchdog` samples the job's process tree every ``watch_interval_s`` from the process
table shared by all jobs (one ``/proc`` scan per interval, whatever the number of jobs), keeps a
record of the peaks (the core uses it to tell our memory kill from the kernel's OOM killer), and
returns a :class:`Breach` as soon as a limit is crossed. The core cancels it when the job ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.procfs import proportional_bytes, snapshot
from sandvisor.supervisor.proctree import ProcessTree, TreeSample

# RLIMIT_CPU ends a single process at its limit; the watchdog ends a tree whose processes
# together went over it, a little later so that a lone process meets its own rlimit first and
# dies with the SIGXCPU that names the cause.
_CPU_SLACK_S = 1.0

GpuMemoryReader = Callable[[], dict[int, int]]
#: Proportional set size of some processes, or None when the kernel does not say.
ProportionalReader = Callable[[Iterable[int]], int | None]


@dataclass(frozen=True)
class Breach:
    """A limit the job crossed, with a message that reads well after "killed: "."""

    error_type: ErrorType
    message: str

    @property
    def reason(self) -> str:
        """The response's first line: "timed out after ..." or "killed: memory ..."."""
        if self.error_type is ErrorType.TIMEOUT:
            return self.message
        return f"killed: {self.message}"


@dataclass
class WatchRecord:
    """What the watchdog saw of a job over its life."""

    samples: int = 0
    peak_rss_bytes: int = 0
    peak_procs: int = 0
    peak_cpu_s: float = 0.0
    peak_gpu_bytes: int = 0
    seen_procs: int = 0
    last: TreeSample | None = None


def format_bytes(count: float) -> str:
    """Sizes as people say them: "512 MB", "2.1 GB" (binary units, like the MB limits)."""
    if count >= 1024**3:
        return f"{count / 1024**3:.1f} GB"
    if count >= 1024**2:
        return f"{count / 1024**2:.0f} MB"
    if count >= 1024:
        return f"{count / 1024:.0f} KB"
    return f"{count:.0f} bytes"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s"


class Watchdog:
    """Samples one job's tree until a limit is crossed; ``record`` keeps what it saw."""

    def __init__(
        self,
        tree: ProcessTree,
        limits: Limits,
        *,
        interval_s: float,
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        gpu_memory: GpuMemoryReader | None = None,
        proportional: ProportionalReader = proportional_bytes,
    ) -> None:
        self.tree = tree
        self.proportional = proportional
        self.limits = limits
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock() if started is None else started
        self.gpu_memory = gpu_memory
        self.record = WatchRecord()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def check(self, sample: TreeSample | None = None) -> Breach | None:
        """Take one sample (or use ``sample``), note it, and say which limit is crossed, if any."""
        if sample is None:
            sample = self.tree.sample(snapshot(max_age_s=self.interval_s / 2))
        self._note(sample)
        elapsed = self.elapsed()
        after = f"after {format_seconds(elapsed)}"
        limits = self.limits
        memory = self._memory(sample)
        if memory > limits.memory_bytes:
            return Breach(
                ErrorType.MEMORY_LIMIT,
                f"memory {format_bytes(memory)} over the"
                f" {format_bytes(limits.memory_bytes)} limit {after}",
            )
        if sample.procs > limits.max_procs:
            return Breach(
                ErrorType.PROCESS_LIMIT,
                f"{sample.procs} processes over the limit of {limits.max_procs} {after}",
            )
        if sample.tasks > limits.max_procs:  # threads are tasks too, as the kernel counts
            return Breach(
                ErrorType.PROCESS_LIMIT,
                f"{sample.tasks} threads (in {sample.procs} processes) over the limit of"
                f" {limits.max_procs} processes and threads {after}",
            )
        if limits.cpu_s is not None and sample.cpu_s > limits.cpu_s + _CPU_SLACK_S:
            return Breach(
                ErrorType.CPU_LIMIT,
                f"CPU time {format_seconds(sample.cpu_s)} over the"
                f" {format_seconds(limits.cpu_s)} limit {after}",
            )
        if elapsed >= limits.timeout_s:
            return Breach(
                ErrorType.TIMEOUT,
                f"timed out after {format_seconds(elapsed)}"
                f" (limit {format_seconds(limits.timeout_s)})",
            )
        return None

    async def run(self) -> Breach:
        """Sample until a limit is crossed; runs until cancelled while the job behaves.

        The first sample is one interval in: most jobs end sooner, and cost no scan at all.
        """
        while True:
            # Wake at the deadline itself rather than up to an interval after it.
            left = self.limits.timeout_s - self.elapsed()
            await asyncio.sleep(max(0.0, min(self.interval_s, left)))
            breach = self.check()
            if breach is not None:
                return breach

    def _memory(self, sample: TreeSample) -> int:
        """The tree's memory: its RSS, or, when that is over the limit, its proportional share.

        RSS counts in full the pages a forked job shares with its template; its proportional
        share counts them divided among the processes that share them, and is only read when
        RSS alone would mean a breach.
        """
        if sample.rss_bytes <= self.limits.memory_bytes:
            return sample.rss_bytes
        proportional = self.proportional(sample.pids)
        return sample.rss_bytes if proportional is None else proportional

    def _note(self, sample: TreeSample) -> None:
        record = self.record
        record.samples += 1
        record.last = sample
        record.peak_rss_bytes = max(record.peak_rss_bytes, sample.rss_bytes)
        record.peak_procs = max(record.peak_procs, sample.procs)
        record.peak_cpu_s = max(record.peak_cpu_s, sample.cpu_s)
        record.seen_procs = self.tree.seen
        if self.gpu_memory is not None and sample.pids:
            used = self.gpu_memory()
            gpu_bytes = sum(used.get(pid, 0) for pid in sample.pids)
            record.peak_gpu_bytes = max(record.peak_gpu_bytes, gpu_bytes)
