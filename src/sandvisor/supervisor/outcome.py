"""From what a job child reported and how it ended to a FunctionResponse.

The child's own ``result``/``error`` frame wins when there is one. Otherwise the exit tells what
happened, and the message says it as a person would want it: which signal, which exit code,
whether a result was ever sent, and after how long.

``exit_code`` and ``signal`` describe a process that ended without answering: it exited, died of
a signal, or was stopped by us. A job that answered (a result, or an error frame for an exception
or an invalid request) ended because it was done, so its exit says nothing about the job and is
left out; a ``0`` next to a failure would read as a contradiction.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from sandvisor.protocol.messages import CHANNEL_BROKEN_EXIT, CHANNEL_FD
from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.errors import SandvisorError
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.oom import cgroup_memory_limit
from sandvisor.supervisor.process import ExitInfo, signal_name
from sandvisor.supervisor.watchdog import format_bytes

#: A SIGKILL we did not send, with the job's memory at least this share of its limit, is taken
#: for the kernel's OOM killer even without the kernel's own count (not every host exposes it).
OOM_NEAR_LIMIT = 0.9

SIGSEGV_HINT = {
    11: "segmentation fault",
    7: "bus error",
    6: "abort",
    4: "illegal instruction",
    8: "floating point exception",
}


@dataclass
class Report:
    """Everything a job produced that decides its outcome."""

    fields: dict[str, Any] | None = None  # result / json_result, from a result frame
    display: str | None = None  # the result as a person reads it, when asked for
    error: dict[str, Any] | None = None  # an error frame
    exit: ExitInfo | None = None
    stopped: tuple[ErrorType, str] | None = None  # we killed it: why, in words
    channel_error: str | None = None  # the protocol channel broke
    exit_announced: bool = False  # the child said the job raised SystemExit (an EXITING frame)
    elapsed_s: float = 0.0
    limits: Limits | None = None  # the job's limits, to name a breach the kernel acted on
    peak_rss_bytes: int = 0  # the watchdog's highest sample of the job's tree
    oom_kills: int = 0  # kernel OOM kills counted in our cgroup while the job ran


#: First words of every invalid request's error, wherever it was found (parse, limits, env, child).
INVALID_REQUEST_PREFIX = "invalid request: "
#: First words of the error of every job whose environment could not be built.
DEPENDENCY_INSTALL_PREFIX = "dependency install failed: "
#: First words of every answer of a worker whose deployed app could not be unpacked.
DEPLOYMENT_PREFIX = "deployed app unavailable: "
#: First words of every request that could not be forwarded to the resource it belongs to.
ROUTING_PREFIX = "routing failed: "
_PREFIXES = {
    ErrorType.INVALID_REQUEST: INVALID_REQUEST_PREFIX,
    ErrorType.DEPENDENCY_INSTALL: DEPENDENCY_INSTALL_PREFIX,
    ErrorType.DEPLOYMENT: DEPLOYMENT_PREFIX,
    ErrorType.ROUTING: ROUTING_PREFIX,
}


def failure(
    error_type: ErrorType, summary: str, detail: str = "", **extra: Any
) -> FunctionResponse:
    """A failed job's response: the one-line ``summary``, then ``detail``.

    The one place an invalid request's or a failed install's first line gets its prefix: the
    supervisor's checks and the child's (a missing function, a bad ``modules`` key) hand over
    the reason alone.
    """
    prefix = _PREFIXES.get(error_type, "")
    if not summary.startswith(prefix):
        summary = prefix + summary
    error = f"{summary}\n\n{detail.rstrip()}" if detail.strip() else summary
    return FunctionResponse(success=False, error=error, error_type=error_type, **extra)


def failed(error: SandvisorError, **extra: Any) -> FunctionResponse:
    """The response for any error of the family: its type, summary and detail."""
    return failure(error.error_type, error.summary, error.detail, **extra)


def exit_fields(exit_info: ExitInfo | None) -> dict[str, Any]:
    if exit_info is None:
        return {}
    if exit_info.signal is not None:
        return {"signal": exit_info.signal}
    return {"exit_code": exit_info.exit_code}


def classify(report: Report) -> FunctionResponse:
    if report.stopped is not None:
        error_type, reason = report.stopped
        return failure(error_type, reason, **exit_fields(report.exit))
    if report.fields is not None:
        return FunctionResponse(success=True, **report.fields)
    if report.error is not None:
        return _from_error_frame(report)
    return _from_exit(report)


def _from_error_frame(report: Report) -> FunctionResponse:
    assert report.error is not None
    try:
        error_type = ErrorType(report.error.get("kind"))
    except ValueError:
        error_type = ErrorType.USER_EXCEPTION
    summary = str(report.error.get("summary") or "the job failed")
    limits = report.limits
    address_space = _address_space_limit(limits)
    refused = error_type is ErrorType.USER_EXCEPTION and summary.startswith("MemoryError")
    if refused and limits is not None and address_space:
        # With RLIMIT_AS set, a MemoryError is the kernel refusing an allocation far past
        # the job's memory limit: the limit is the cause, whatever the traceback says.
        error_type = ErrorType.MEMORY_LIMIT
        summary = (
            f"memory: an allocation was refused by the {format_bytes(address_space)}"
            f" address-space limit (set from the {format_bytes(limits.memory_bytes)} memory"
            f" limit); {summary}"
        )
    # It answered, then left as answering jobs do: how it exited is not part of the outcome.
    return failure(error_type, summary, str(report.error.get("detail") or ""))


def _address_space_limit(limits: Limits | None) -> int:
    if limits is None:
        return 0
    return limits.rlimits().get("RLIMIT_AS", (0, 0))[0]


def _from_exit(report: Report) -> FunctionResponse:
    after = f" after {report.elapsed_s:.2f} s"
    exit_info = report.exit
    if exit_info is None:
        reason = report.channel_error or "the job's process ended and could not be reaped"
        return failure(ErrorType.LOST, f"lost: {reason}{after}")
    if exit_info.signal is not None:
        return _from_signal(report, exit_info, after)
    code = exit_info.exit_code
    if code == CHANNEL_BROKEN_EXIT and not report.exit_announced:
        return failure(
            ErrorType.LOST,
            f"lost: the job's protocol channel broke before it answered{after}"
            f" (did the job close, replace (os.dup2) or write to file descriptor {CHANNEL_FD},"
            f" or call os._exit({CHANNEL_BROKEN_EXIT})?)",
            **exit_fields(exit_info),
        )
    detail = f"the protocol channel broke: {report.channel_error}" if report.channel_error else ""
    if report.exit_announced:
        hint = " (the job raised SystemExit)"
    else:
        hint = " (sys.exit() or os._exit() in the job?)" if code in (0, 1) or code is None else ""
    return failure(
        ErrorType.EXIT,
        f"exited with code {code}{after} without returning a result{hint}",
        detail,
        **exit_fields(exit_info),
    )


def _from_signal(report: Report, exit_info: ExitInfo, after: str) -> FunctionResponse:
    """A signal we did not send: a CPU limit, the kernel's OOM killer, a crash, or someone else."""
    signum = exit_info.signal
    assert signum is not None
    fields = exit_fields(exit_info)
    name = signal_name(signum)
    limits = report.limits
    cpu_s = exit_info.utime + exit_info.stime
    cpu_limit = limits.cpu_s if limits is not None else None
    if signum == signal.SIGXCPU or (
        signum == signal.SIGKILL and cpu_limit is not None and cpu_s >= cpu_limit
    ):
        limit = f"the {cpu_limit:g} s limit" if cpu_limit is not None else "its limit"
        return failure(
            ErrorType.CPU_LIMIT,
            f"killed: CPU time {cpu_s:.1f} s reached {limit} ({name}){after}",
            **fields,
        )
    if signum == signal.SIGKILL and (verdict := _oom_verdict(report, exit_info, after)):
        return failure(ErrorType.MEMORY_LIMIT, verdict, **fields)
    hint = SIGSEGV_HINT.get(signum)
    what = f"killed by {name}" + (f" ({hint})" if hint else "")
    return failure(ErrorType.SIGNAL, f"{what}{after}, before returning a result", **fields)


def _oom_verdict(report: Report, exit_info: ExitInfo, after: str) -> str | None:
    """Why a SIGKILL we did not send was the kernel's OOM killer, or None if nothing says so."""
    peak = max(exit_info.maxrss_kb * 1024, report.peak_rss_bytes)
    limit = report.limits.memory_bytes if report.limits is not None else None
    of_limit = f" (limit {format_bytes(limit)})" if limit else ""
    if report.oom_kills:
        container = cgroup_memory_limit()
        where = (
            f"the container ran out of memory (its limit is {format_bytes(container)})"
            if container is not None
            else "the machine ran out of memory"
        )
        return (
            f"killed by the kernel's OOM killer (SIGKILL){after}; peak memory"
            f" {format_bytes(peak)}{of_limit}: {where}"
        )
    if limit and peak >= OOM_NEAR_LIMIT * limit:
        return (
            f"killed by SIGKILL{after} with memory at {format_bytes(peak)}, near the"
            f" {format_bytes(limit)} limit: most likely the kernel's OOM killer"
        )
    return None
