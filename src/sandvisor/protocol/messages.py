"""Marks both sides put on processes: the job variable and the process-name prefixes.

Stdlib only, no imports at all: the child runtime (templates, spares) reads these at startup.

Process names (``/proc/<pid>/comm``, 15 bytes at most) live in two disjoint spaces, told apart
by their prefix, so no job id can make a job's processes pass for a spare or the reverse:

- a job's child and what it forks without an exec: ``sv-`` and 12 hex digits of a digest of the
  job id (``supervisor.proctree.job_comm``); never the id itself, which can be anything a
  platform chose (``spare``, or ids that only differ after their 12th character);
- a spare waiting for its job: ``sv:spare``.

The name is a hint for processes that detached between two scans; the job variable is the mark
that survives an exec and holds the whole id.
"""

from __future__ import annotations

#: Every job child gets this variable; descendants that detach keep it across exec.
JOB_ENV_VAR = "SANDVISOR_JOB_ID"
#: The kernel keeps this many bytes of a process name.
COMM_MAX = 15
#: Prefix of every job process name; followed by JOB_COMM_DIGITS hex digits, nothing else.
JOB_COMM_PREFIX = "sv-"
JOB_COMM_DIGITS = COMM_MAX - len(JOB_COMM_PREFIX)
#: Prefix of every spare's process name: no job name starts with it.
SPARE_COMM_PREFIX = "sv:"
#: A spare's process name until its job names it: found by it when its template died unannounced.
SPARE_NAME = SPARE_COMM_PREFIX + "spare"
