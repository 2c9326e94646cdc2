"""The template rehearses a job's own code path on a made-up job, before it forks any job child.

Why: CPython 3.11 writes to a function's code object while the function warms up (a call counter,
then the adaptive counters of its instructions until they are specialized), and fills a shared
method cache as attributes are looked up. In a forked child each such write copies a page it
shares with its template, at a few microseconds a page. Run in the template, those writes happen
once, and every child starts with the runtime's code already specialized.

Nothing here runs user code or keeps job state: the source is ours, the results are dropped, and
what the rehearsal put in ``linecache`` is taken out again.
"""

from __future__ import annotations

import linecache
import os

from sandvisor.protocol.frames import decode_body, encode_frame
from sandvisor.sandbox_child import isolation
from sandvisor.sandbox_child.runner import (
    call,
    decode_or_fail,
    display_of,
    load_source,
    lookup,
    result_fields,
)

SOURCE = "def main(*args, **kwargs):\n    return {'args': list(args), 'kwargs': kwargs}\n"
#: More than the calls CPython 3.11 waits before it specializes a function's code (8).
ROUNDS = 16


def rehearse(rounds: int = ROUNDS) -> None:
    for _ in range(rounds):
        _one_job()
    linecache.cache.pop("<function_code>", None)


def _one_job() -> None:
    frame = {
        "t": "job",
        "request": {"function_name": "main", "function_code": SOURCE, "args": [1], "kwargs": {}},
        "env_set": {},
        "env_unset": [],
        "rlimits": {},
    }
    job = decode_body(encode_frame(frame)[4:])
    isolation.apply_job_environment(job)  # no changes: the template's environment stays as it is
    isolation.apply_limits(job["rlimits"], None)
    user_files: set[str] = set()
    request = job["request"]
    namespace = load_source(request["function_code"], "function_code", user_files)
    function = lookup(namespace, request["function_name"], "function_name", "function_code")
    args, kwargs = decode_or_fail(request["args"], request["kwargs"], "json", "args")
    value = call(function, args, kwargs, user_files)
    for fmt in ("json", "cloudpickle"):
        encode_frame(
            {"t": "result", "fields": result_fields(value, fmt, None), "display": display_of(value)}
        )
    encode_frame({"t": "running", "ts": os.times().elapsed})
