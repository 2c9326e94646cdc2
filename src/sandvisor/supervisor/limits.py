"""A job's resolved limits: configuration defaults, lowered or raised by the request, capped.

The supervisor enforces most of them itself (wall time, tree memory, process count, output and
result size: see ``watchdog.py`` and ``core.py``). A few are enforced by the kernel inside the
child through rlimits; the child receives them as plain data from :meth:`Limits.rlimits` and
applies each with ``resource.setrlimit(getattr(resource, name), value)``, because the child runtime
cannot import anything from ``supervisor``.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from typing import TypeVar

from sandvisor.protocol.models import RequestLimits
from sandvisor.supervisor.errors import LimitsError
from sandvisor.supervisor.settings import ENV_PREFIX, Settings

MIB = 1024 * 1024
GIB = 1024 * MIB

#: Written to a child's ``/proc/self/oom_score_adj``: the kernel's OOM killer takes a child first,
#: never the supervisor.
CHILD_OOM_SCORE_ADJ = 1000

# RLIMIT_AS counts address space, not memory: thread stacks, malloc arenas and allocator pools
# reserve far more than they use. The tree-RSS watchdog is the real memory limit; RLIMIT_AS is
# only a backstop against one allocation so large it would outrun a sampling interval, so it is
# set well above the memory limit to never refuse a program that stays within it.
_AS_FACTOR = 2
_AS_HEADROOM = 4 * GIB

# Output past the kept head and tail is dropped; a job that writes this many times more than
# is kept is stopped (output_limit): nearly all of it is thrown away, yet reading it costs the
# supervisor CPU that other jobs need. The floor keeps a tiny kept size from stopping chatty jobs.
_OUTPUT_FLOOD_FACTOR = 512
_OUTPUT_FLOOD_FLOOR = 64 * 1024

_Number = TypeVar("_Number", int, float)


#: The limits a request may set (``limits.<name>``), one row each: the name (in the request and in
#: ``Settings``, whose value is the default), the ``Settings`` field that raises the ceiling above
#: the default (None: the default is the ceiling), and the variable that sets the ceiling.
REQUESTABLE: tuple[tuple[str, str | None, str], ...] = (
    ("timeout_s", "max_timeout_s", "MAX_TIMEOUT_S"),
    ("memory_mb", "max_memory_mb", "MAX_MEMORY_MB"),
    ("cpu_s", None, "CPU_S"),
    ("max_procs", None, "MAX_PROCS"),
    ("max_output_bytes", None, "MAX_OUTPUT_BYTES"),
    ("max_result_bytes", None, "MAX_RESULT_BYTES"),
    ("max_open_files", None, "MAX_OPEN_FILES"),
)

#: Tasks a job identity may have beyond ``max_procs`` (``RLIMIT_NPROC``): room for the threads
#: the runtime and libraries start, so the watchdog names the breach before the kernel refuses.
NPROC_MARGIN = 64


@dataclass(frozen=True)
class Limits:
    """Limits of one job, already resolved against the configuration."""

    timeout_s: float  # wall time, seconds, from the job's start to its answer
    memory_bytes: int  # RSS of the job's whole process tree
    cpu_s: float | None  # CPU seconds of the child (RLIMIT_CPU); None: unlimited
    max_procs: int  # processes in the job's tree at once
    max_output_bytes: int  # output kept, in bytes of UTF-8: its first and last halves
    max_result_bytes: int  # the encoded result's size
    max_open_files: int  # RLIMIT_NOFILE
    gpus: int  # GPUs the job holds
    grace_s: float  # from SIGTERM to SIGKILL when the job is stopped

    @classmethod
    def resolve(
        cls,
        settings: Settings,
        request_limits: RequestLimits | None = None,
        *,
        gpus_available: int = 0,
    ) -> Limits:
        """Defaults from ``settings``; each limit the request names replaces its default.

        A request may go below a default freely and above it up to its ceiling (see
        :data:`REQUESTABLE`); ``gpus`` up to the number of GPUs this worker has (default: 1
        where it has any). Raises :class:`LimitsError` naming the first limit over its ceiling.
        """
        asked = request_limits or RequestLimits()
        picked: dict[str, float | int | None] = {}
        for name, raised_by, variable in REQUESTABLE:
            default = getattr(settings, name)
            wanted = getattr(asked, name)
            if default is None:  # no default: no limit unless the request sets one
                picked[name] = wanted
                continue
            ceiling = (
                max(default, getattr(settings, raised_by) or default) if raised_by else default
            )
            picked[name] = _pick(name, wanted, default, ceiling, variable)
        return cls(
            memory_bytes=MIB * int(picked.pop("memory_mb") or 0),
            gpus=_pick_gpus(asked.gpus, gpus_available),
            grace_s=settings.grace_s,
            **picked,  # type: ignore[arg-type]
        )

    @property
    def memory_mb(self) -> int:
        return self.memory_bytes // MIB

    @property
    def output_flood_bytes(self) -> int:
        """Output past which the job is stopped rather than only cut in the middle."""
        return max(self.max_output_bytes, _OUTPUT_FLOOD_FLOOR) * _OUTPUT_FLOOD_FACTOR

    def rlimits(self, identity: bool = False) -> dict[str, tuple[int, int]]:
        """Kernel limits for the child, keyed by ``resource`` constant name: (soft, hard).

        ``identity``: the job runs as a uid of its own, so ``RLIMIT_NPROC`` (which the kernel
        counts per uid: every process and thread of the uid) bounds the job's tasks, at
        ``max_procs`` plus :data:`NPROC_MARGIN` (the watchdog says ``process_limit`` first; the
        kernel stops a burst between its samples). Without one the uid is the supervisor's,
        shared with every job and the worker itself, and the limit would count them all.
        """
        limits: dict[str, tuple[int, int]] = {
            "RLIMIT_CORE": (0, 0),
            "RLIMIT_NOFILE": _pair("RLIMIT_NOFILE", self.max_open_files, self.max_open_files),
        }
        if self.cpu_s is not None:
            # SIGXCPU at the soft limit lets the child die with a signal we can name; the hard
            # limit (SIGKILL) a grace period later ends one that catches or ignores SIGXCPU.
            soft = max(1, math.ceil(self.cpu_s))
            limits["RLIMIT_CPU"] = _pair("RLIMIT_CPU", soft, soft + max(1, math.ceil(self.grace_s)))
        if self.gpus == 0:
            # CUDA maps address space far beyond device memory; with a GPU this limit would
            # break CUDA initialisation, so GPU jobs rely on the watchdog alone.
            size = max(self.memory_bytes * _AS_FACTOR, self.memory_bytes + _AS_HEADROOM)
            limits["RLIMIT_AS"] = _pair("RLIMIT_AS", size, size)
        if identity:
            tasks = self.max_procs + NPROC_MARGIN
            limits["RLIMIT_NPROC"] = _pair("RLIMIT_NPROC", tasks, tasks)
        return limits


def _pick(
    name: str, asked: _Number | None, default: _Number, ceiling: _Number, variable: str
) -> _Number:
    if asked is None:
        return default
    if asked > ceiling:
        raise LimitsError(
            f"limits.{name} {_num(asked)} is over the ceiling of {_num(ceiling)}"
            f" ({ENV_PREFIX}{variable})"
        )
    return asked


def _pick_gpus(asked: int | None, available: int) -> int:
    if asked is None:
        return 1 if available else 0
    if asked > available:
        raise LimitsError(
            f"limits.gpus {asked} is more than the {available} GPU(s) this worker has"
            f" ({ENV_PREFIX}GPUS)"
        )
    return asked


def _pair(name: str, soft: int, hard: int) -> tuple[int, int]:
    """Clamp to the supervisor's own hard limit: an unprivileged child cannot exceed it."""
    current_hard = resource.getrlimit(getattr(resource, name))[1]
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    return soft, hard


def _num(value: float) -> str:
    """A limit as a person reads it: an integer (bytes, MiB, counts) in full up to 256 bits,
    else by its size; a float in ``%g`` (seconds)."""
    if isinstance(value, int):
        bits = value.bit_length()
        return str(value) if bits <= 256 else f"an integer of {bits} bits"
    return f"{value:g}"
