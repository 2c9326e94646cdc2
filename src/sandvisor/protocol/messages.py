"""The wire vocabulary both sides speak: frame kinds, template commands, fds, exit codes, marks.

Stdlib only, no imports at all: the child runtime (templates, spares, job children) reads these
at startup, and must start fast inside any user venv. The supervisor takes every one of these from
here, never from ``sandbox_child``, so neither side can drift from the other.

Frames (``protocol/frames.py``) are msgpack maps whose :data:`KIND` key names their kind
(:class:`FrameKind`). A job child's channel is :data:`CHANNEL_FD`; a warm template's control
socket carries one-byte commands (:data:`COMMAND_FORK`, :data:`COMMAND_PING`) and its replies.

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

#: The key of every frame that names its kind (a :class:`FrameKind` value).
KIND = "t"


class FrameKind:
    """Every frame kind, by who sends it; the comment lists the kind's other fields.

    Plain strings, not an enum: msgpack packs them as they are, and the child imports no enum.
    """

    # Supervisor -> job child, on the job channel.
    #: job_id, comm, request, module, sys_path, workdir, env (or env_set and env_unset: the
    #: changes from the template's environment), rlimits, max_result_bytes, oom_score_adj,
    #: display, and actor (true for a class instance's long-lived process); REPORT_IMPORTS
    #: (true: send an IMPORTS frame after the answer).
    JOB = "job"
    #: seq, method_name, args, kwargs, serialization_format, max_result_bytes, display.
    CALL = "call"

    # Job child -> supervisor, on the job channel.
    #: ts (the child's wall clock), and seq in an actor.
    RUNNING = "running"
    #: fields (result or json_result), display when asked; seq and info in an actor.
    RESULT = "result"
    #: kind, summary, detail; seq (for a call) and info in an actor.
    ERROR = "error"
    #: ts, info: an actor constructed its instance and waits for calls.
    CREATED = "created"
    #: modules: top-level modules a job imported that its template had not (after its answer).
    IMPORTS = "imports"
    #: code: the job raised SystemExit and its child now leaves with that status; its exit,
    #: whatever the code (CHANNEL_BROKEN_EXIT too), is then the job's, not a broken channel.
    EXITING = "exiting"

    # Template -> supervisor, on the control socket.
    #: pid, python, preloaded, preload_failed, preload_noisy (module -> the output or warning
    #: its import gave), cuda_initialized, threads (names of the Python
    #: threads a preload left running), device_open (a GPU device file a preload opened),
    #: rss_kb, environ, spare (its pid or None).
    READY = "ready"
    #: pid: the job child that took the descriptors of one fork command, in command order.
    FORKED = "forked"
    #: error: a fork command that started no child.
    FORK_FAILED = "fork_failed"
    #: pid: the spare the next job will get.
    SPARE = "spare"
    #: pid, status (as from wait), maxrss_kb, utime, stime: a job child the template reaped.
    EXIT = "exit"
    #: ts, live (how many job children it watches): the answer to a ping.
    PONG = "pong"
    #: gpus, pid, memory: a spare CUDA-warm for that GPU set (COMMAND_WARM), said once its
    #: warm-up is done, so a job is never handed to a spare still warming or failing to;
    #: memory: ``[free, total]`` MiB per visible device from the spare's driver
    #: (cuMemGetInfo_v2) after its warm-up, by device ordinal, or ``[]`` if it could not say.
    WARM = "warm"
    #: gpus, pid, status (as from wait): a warm spare died before it got a job (its warm-up
    #: failed: status WARM_FAILED_EXIT), not counting one dropped by COMMAND_DROP_WARM.
    WARM_LOST = "warm_lost"


#: A job frame's field: the child reports, after its answer, what it imported (FrameKind.IMPORTS).
REPORT_IMPORTS = "report_imports"

#: The descriptor a job child speaks its channel on (0, 1 and 2 are stdin, stdout and stderr).
CHANNEL_FD = 3
#: Exit status of a child whose protocol channel broke (EX_SOFTWARE); the supervisor says "lost".
CHANNEL_BROKEN_EXIT = 70

#: Supervisor -> template: fork a job child; three descriptors attached (channel, stdout, stderr).
COMMAND_FORK = b"F"
#: Supervisor -> template: answer with a ``pong`` frame.
COMMAND_PING = b"P"
#: Supervisor -> template: fork a spare CUDA-warm for a GPU set; a ``warm_frame`` follows the
#: byte, with library (the driver's) and warmup (a framework, or "").
COMMAND_WARM = b"W"
#: Supervisor -> template: as COMMAND_FORK (three descriptors), then a ``warm_frame``: the job
#: goes to the spare warm for that set, or to the plain spare when there is none.
COMMAND_FORK_WARM = b"G"
#: Supervisor -> template: a ``warm_frame`` follows; that set's warm spare is killed.
COMMAND_DROP_WARM = b"D"


def warm_frame(gpus: str, **fields: str) -> dict[str, str]:
    """The frame after a warm-spare command: ``gpus`` (CUDA_VISIBLE_DEVICES syntax) and
    ``fields``."""
    return {KIND: FrameKind.WARM, "gpus": gpus, **fields}


#: Exit status of a warm spare whose warm-up failed (EX_TEMPFAIL + 1: not a job's status).
WARM_FAILED_EXIT = 76
#: Template -> spare: run this job; its three descriptors attached, as with COMMAND_FORK.
ASSIGN_JOB = b"J"
#: How many descriptors a fork command (and a job's assignment) carries.
JOB_FDS = 3

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
