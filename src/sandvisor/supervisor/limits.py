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


@dataclass(frozen=True)
class Limits:
    """Limits of one job, already resolved against the configuration."""

    timeout_s: float
    memory_bytes: int
    cpu_s: float | None
    max_procs: int
    max_output_bytes: int
    max_result_bytes: int
    max_open_files: int
    gpus: int
    grace_s: float

    @classmethod
    def resolve(
        cls,
        settings: Settings,
        request_limits: RequestLimits | None = None,
        *,
        gpus_available: int = 0,
    ) -> Limits:
        """Defaults from ``settings``; each limit the request names replaces its default.

        A request may go below a default freely and above it up to the configured ceiling:
        ``max_timeout_s`` and ``max_memory_mb`` where they are set, the default itself for the
        others, the number of GPUs this worker has for ``gpus``.
        """
        asked = request_limits or RequestLimits()
        max_memory_mb = settings.max_memory_mb or settings.memory_mb
        return cls(
            timeout_s=_pick(
                "timeout_s",
                asked.timeout_s,
                settings.timeout_s,
                max(settings.timeout_s, settings.max_timeout_s),
                "MAX_TIMEOUT_S",
            ),
            memory_bytes=MIB
            * _pick(
                "memory_mb",
                asked.memory_mb,
                settings.memory_mb,
                max(settings.memory_mb, max_memory_mb),
                "MAX_MEMORY_MB",
            ),
            cpu_s=_pick_optional("cpu_s", asked.cpu_s, settings.cpu_s, "CPU_S"),
            max_procs=_pick(
                "max_procs", asked.max_procs, settings.max_procs, settings.max_procs, "MAX_PROCS"
            ),
            max_output_bytes=_pick(
                "max_output_bytes",
                asked.max_output_bytes,
                settings.max_output_bytes,
                settings.max_output_bytes,
                "MAX_OUTPUT_BYTES",
            ),
            max_result_bytes=_pick(
                "max_result_bytes",
                asked.max_result_bytes,
                settings.max_result_bytes,
                settings.max_result_bytes,
                "MAX_RESULT_BYTES",
            ),
            max_open_files=_pick(
                "max_open_files",
                asked.max_open_files,
                settings.max_open_files,
                settings.max_open_files,
                "MAX_OPEN_FILES",
            ),
            gpus=_pick_gpus(asked.gpus, gpus_available),
            grace_s=settings.grace_s,
        )

    @property
    def memory_mb(self) -> int:
        return self.memory_bytes // MIB

    @property
    def output_flood_bytes(self) -> int:
        """Output past which the job is stopped rather than only cut in the middle."""
        return max(self.max_output_bytes, _OUTPUT_FLOOD_FLOOR) * _OUTPUT_FLOOD_FACTOR

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """Kernel limits for the child, keyed by ``resource`` constant name: (soft, hard)."""
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


def _pick_optional(
    name: str, asked: float | None, default: float | None, variable: str
) -> float | None:
    if default is None:
        return asked
    return _pick(name, asked, default, default, variable)


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
    return f"{value:g}"
