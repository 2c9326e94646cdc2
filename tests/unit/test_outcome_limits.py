"""Exits told apart: our limits, the kernel's CPU limit and OOM killer, a crash, a broken channel."""

from __future__ import annotations

import signal

from sandvisor.protocol.messages import CHANNEL_BROKEN_EXIT
from sandvisor.protocol.models import ErrorType, RequestLimits
from sandvisor.supervisor.limits import MIB, Limits
from sandvisor.supervisor.outcome import Report, classify
from sandvisor.supervisor.process import ExitInfo
from sandvisor.supervisor.settings import Settings

LIMITS = Limits.resolve(Settings.from_env({}, memory_mb=2048, gpus=""), RequestLimits(cpu_s=5.0))


def killed(signum: int, maxrss_mb: int = 50, cpu_s: float = 0.1) -> ExitInfo:
    return ExitInfo(status=signum, maxrss_kb=maxrss_mb * 1024, utime=cpu_s, stime=0.0)


def report(exit_info: ExitInfo, **fields: object) -> Report:
    return Report(exit=exit_info, elapsed_s=3.4, limits=LIMITS, **fields)


def test_our_own_memory_kill_says_so() -> None:
    reason = "killed: memory 2.1 GB over the 2.0 GB limit after 3.4 s"
    response = classify(report(killed(signal.SIGTERM), stopped=(ErrorType.MEMORY_LIMIT, reason)))
    assert response.error_type is ErrorType.MEMORY_LIMIT
    assert response.error == reason
    assert response.signal == signal.SIGTERM


def test_the_kernels_oom_killer_is_named_when_the_kernel_counted_it() -> None:
    response = classify(report(killed(signal.SIGKILL, maxrss_mb=900), oom_kills=1))
    assert response.error_type is ErrorType.MEMORY_LIMIT
    assert (response.error or "").startswith("killed by the kernel's OOM killer (SIGKILL)")
    assert response.signal == 9


def test_a_sigkill_near_the_memory_limit_is_most_likely_the_oom_killer() -> None:
    response = classify(report(killed(signal.SIGKILL), peak_rss_bytes=1950 * MIB))
    assert response.error_type is ErrorType.MEMORY_LIMIT
    assert "most likely the kernel's OOM killer" in (response.error or "")


def test_a_sigkill_from_someone_else_is_a_signal() -> None:
    response = classify(report(killed(signal.SIGKILL)))
    assert response.error_type is ErrorType.SIGNAL
    assert (response.error or "").startswith("killed by SIGKILL(9) after 3.40 s")


def test_a_segfault_is_not_an_oom_kill() -> None:
    response = classify(report(killed(signal.SIGSEGV, maxrss_mb=2000), oom_kills=1))
    assert response.error_type is ErrorType.SIGNAL
    assert "segmentation fault" in (response.error or "")
    assert response.signal == 11


def test_cpu_limit_by_sigxcpu_or_by_the_hard_limit() -> None:
    soft = classify(report(killed(signal.SIGXCPU, cpu_s=5.01)))
    assert soft.error_type is ErrorType.CPU_LIMIT
    assert (soft.error or "").startswith("killed: CPU time 5.0 s reached the 5 s limit")
    hard = classify(report(killed(signal.SIGKILL, cpu_s=7.0)))
    assert hard.error_type is ErrorType.CPU_LIMIT


def test_memory_error_under_the_address_space_limit_is_the_memory_limit() -> None:
    error = {"t": "error", "kind": "user_exception", "summary": "MemoryError", "detail": "tb"}
    response = classify(report(ExitInfo(0), error=error))
    assert response.error_type is ErrorType.MEMORY_LIMIT
    assert "address-space limit" in (response.error or "")
    gpu_limits = Limits.resolve(Settings.from_env({}, gpus="0"), None, gpus_available=1)
    with_gpu = Report(exit=ExitInfo(0), error=error, limits=gpu_limits)
    assert classify(with_gpu).error_type is ErrorType.USER_EXCEPTION


def test_a_broken_channel_is_lost_not_an_exit() -> None:
    response = classify(report(ExitInfo(CHANNEL_BROKEN_EXIT << 8)))
    assert response.error_type is ErrorType.LOST
    assert response.exit_code == CHANNEL_BROKEN_EXIT
    plain = classify(report(ExitInfo(3 << 8)))
    assert plain.error_type is ErrorType.EXIT and plain.exit_code == 3
