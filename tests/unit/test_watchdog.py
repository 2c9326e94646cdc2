"""The watchdog: thresholds and messages on given samples and an injected clock."""

from __future__ import annotations

from sandvisor.protocol.models import ErrorType, RequestLimits
from sandvisor.supervisor.limits import MIB, Limits
from sandvisor.supervisor.proctree import ProcessTree, TreeSample
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.watchdog import Watchdog, format_bytes

GB = 1024**3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limits(**asked: object) -> Limits:
    settings = Settings.from_env({}, memory_mb=2048, timeout_s=10.0, max_procs=8, cpu_s=5.0)
    return Limits.resolve(settings, RequestLimits.model_validate(asked))


def watchdog(clock: Clock, proportional: int | None = None, **asked: object) -> Watchdog:
    """A watchdog given its samples; ``proportional``: what a PSS read would say (None: nothing)."""
    tree = ProcessTree("job", root_pid=2**22 + 1)  # never sampled: samples are given
    return Watchdog(
        tree, limits(**asked), interval_s=0.1, clock=clock, proportional=lambda _: proportional
    )


def sample(rss: float = 0, procs: int = 1, cpu: float = 0.0) -> TreeSample:
    return TreeSample(rss_bytes=int(rss), procs=procs, cpu_s=cpu, pids=(1,))


def test_nothing_wrong_means_no_breach_and_a_record() -> None:
    clock = Clock()
    dog = watchdog(clock)
    assert dog.check(sample(rss=GB, procs=3, cpu=1.0)) is None
    assert dog.check(sample(rss=GB / 2, procs=1, cpu=2.0)) is None
    assert dog.record.samples == 2
    assert dog.record.peak_rss_bytes == GB
    assert dog.record.peak_procs == 3


def test_memory_breach_reads_as_a_person_would_want() -> None:
    clock = Clock()
    dog = watchdog(clock)
    clock.now += 3.4
    breach = dog.check(sample(rss=2.1 * GB))
    assert breach is not None
    assert breach.error_type is ErrorType.MEMORY_LIMIT
    assert breach.message == "memory 2.1 GB over the 2.0 GB limit after 3.4 s"


def test_memory_shared_with_the_template_is_counted_in_proportion() -> None:
    # 2.1 GB resident, most of it the template's pages: its proportional share decides.
    clock = Clock()
    assert watchdog(clock, proportional=int(0.5 * GB)).check(sample(rss=2.1 * GB)) is None
    breach = watchdog(clock, proportional=int(2.5 * GB)).check(sample(rss=2.1 * GB))
    assert breach is not None and breach.message.startswith("memory 2.5 GB over the 2.0 GB")


def test_process_cpu_and_time_breaches() -> None:
    clock = Clock()
    dog = watchdog(clock)
    breach = dog.check(sample(procs=9))
    assert breach is not None and breach.error_type is ErrorType.PROCESS_LIMIT
    assert "9 processes over the limit of 8" in breach.message
    assert dog.check(sample(cpu=5.5)) is None  # a lone process meets its own RLIMIT_CPU first
    breach = dog.check(sample(cpu=7.0))
    assert breach is not None and breach.error_type is ErrorType.CPU_LIMIT
    clock.now += 10.0
    breach = dog.check(sample())
    assert breach is not None and breach.error_type is ErrorType.TIMEOUT
    assert breach.message == "timed out after 10.0 s (limit 10.0 s)"


def test_format_bytes() -> None:
    assert format_bytes(512 * MIB) == "512 MB"
    assert format_bytes(2.1 * GB) == "2.1 GB"
    assert format_bytes(3000) == "3 KB"
    assert format_bytes(12) == "12 bytes"


def test_threads_count_toward_max_procs() -> None:
    dog = watchdog(Clock())
    assert dog.check(TreeSample(rss_bytes=0, procs=1, cpu_s=0.0, pids=(1,), tasks=8)) is None
    breach = dog.check(TreeSample(rss_bytes=0, procs=2, cpu_s=0.0, pids=(1, 2), tasks=9))
    assert breach is not None and breach.error_type is ErrorType.PROCESS_LIMIT
    assert breach.message.startswith("9 threads (in 2 processes) over the limit of 8")
