"""From what a job child reported and how it ended to a FunctionResponse.

The child's own ``result``/``error`` frame wins when there is one. Otherwise the exit tells what
happened, and the message says it as a person would want it: which signal, which exit code,
whether a result was ever sent, and after how long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.process import ExitInfo, signal_name

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
    exit_known: bool = False  # False: never reaped by us, so how it ended is unknown
    stopped: tuple[ErrorType, str] | None = None  # we killed it: why, in words
    channel_error: str | None = None  # the protocol channel broke
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def failure(
    error_type: ErrorType, summary: str, detail: str = "", **extra: Any
) -> FunctionResponse:
    error = f"{summary}\n\n{detail.rstrip()}" if detail.strip() else summary
    return FunctionResponse(success=False, error=error, error_type=error_type, **extra)


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
    return failure(
        error_type,
        str(report.error.get("summary") or "the job failed"),
        str(report.error.get("detail") or ""),
        **exit_fields(report.exit),
    )


def _from_exit(report: Report) -> FunctionResponse:
    after = f" after {report.elapsed_s:.2f} s"
    exit_info = report.exit
    if exit_info is None:
        reason = report.channel_error or "the job's process ended and could not be reaped"
        return failure(ErrorType.LOST, f"lost: {reason}{after}")
    if exit_info.signal is not None:
        name = signal_name(exit_info.signal)
        hint = SIGSEGV_HINT.get(exit_info.signal)
        what = f"killed by {name}" + (f" ({hint})" if hint else "")
        return failure(
            ErrorType.SIGNAL, f"{what}{after}, before returning a result", **exit_fields(exit_info)
        )
    code = exit_info.exit_code
    detail = f"the protocol channel broke: {report.channel_error}" if report.channel_error else ""
    hint = " (sys.exit() or os._exit() in the job?)" if code in (0, 1) or code is None else ""
    return failure(
        ErrorType.EXIT,
        f"exited with code {code}{after} without returning a result{hint}",
        detail,
        **exit_fields(exit_info),
    )
