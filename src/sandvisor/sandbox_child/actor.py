"""A class instance's own process: construct it once, then answer method calls until told to stop.

The actor is a job child whose job frame says ``"actor": true``. Its protocol on the channel:

    supervisor -> actor                      actor -> supervisor
    job   (creating request, actor: true)    created {info}           or  error (then it leaves)
    call  {seq, method_name, args, ...}      running, log*, result {seq, fields, info}
                                                           or error {seq, kind, summary, info}
    end of stream                            (leaves with code 0)

One call at a time, in the order they come. A method that raises is answered with an error frame
and the instance lives on, as in worker-flash; ``sys.exit()`` in a method ends the actor like any
job. Before each answer the actor flushes Python's and C's stdio buffers: every byte the call
wrote to fds 1 and 2 is then in the pipes before the answer is on the channel, which is how the
supervisor attributes output to calls (see ``supervisor/actor_process.py``).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import time
from typing import Any

from sandvisor.protocol.frames import EndOfStream
from sandvisor.protocol.messages import KIND, FrameKind
from sandvisor.sandbox_child.channel import Channel
from sandvisor.sandbox_child.display import display_of
from sandvisor.sandbox_child.failures import JobFailure
from sandvisor.sandbox_child.runner import (
    bound_method,
    call,
    create_instance,
    decode_or_fail,
    enter_job_workdir,
    error_frame,
    flush_stdio,
    result_fields,
    send_result,
)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def instance_info() -> dict[str, Any]:
    """This process's pid and memory: resident now (``/proc/self/statm``) and at its peak."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        with open("/proc/self/statm") as handle:
            rss = int(handle.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        rss = peak  # not Linux: the peak is the best figure there is
    return {"pid": os.getpid(), "memory": {"rss_bytes": rss, "peak_rss_bytes": peak}}


def flush_all_output() -> None:
    """Python's buffers, then C's (``printf`` in an extension), so the pipes hold everything."""
    flush_stdio()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass  # no libc to ask: only C extensions' unflushed output can be late


class Actor:
    """The instance and the event loop its async methods share across calls."""

    def __init__(self, job: dict[str, Any], channel: Channel) -> None:
        self.job = job
        self.channel = channel
        self.user_files: set[str] = set()
        self.instance: Any = None
        # One loop for the actor's life: an async method may keep loop-bound state (locks,
        # sessions, tasks) on the instance between calls, as it can in worker-flash. A plain loop,
        # not asyncio.Runner, which Python 3.10 lacks.
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def create(self) -> bool:
        try:
            enter_job_workdir(self.job)
            self.instance = create_instance(self.job["request"], self.job, self.user_files)
        except JobFailure as failure:
            self.send_failure(failure, {})
            return False
        flush_all_output()
        self.channel.send({KIND: FrameKind.CREATED, "ts": time.time(), "info": instance_info()})
        return True

    def serve(self) -> None:
        while True:
            try:
                frame = self.channel.receive()
            except EndOfStream:
                return  # the supervisor stops us by closing the channel
            if frame.get(KIND) == FrameKind.CALL:
                self.answer(frame)

    def answer(self, frame: dict[str, Any]) -> None:
        seq = frame.get("seq")
        fmt = frame.get("serialization_format", "cloudpickle")
        try:
            method = bound_method(self.instance, frame, self.user_files)
            args, kwargs = decode_or_fail(
                frame.get("args", []), frame.get("kwargs", {}), fmt, "args"
            )
            self.channel.send({KIND: FrameKind.RUNNING, "ts": time.time(), "seq": seq})
            value = call(method, args, kwargs, self.user_files, self.loop)
            fields = result_fields(value, fmt, frame.get("max_result_bytes"))
        except JobFailure as failure:
            self.send_failure(failure, {"seq": seq})
            return
        flush_all_output()
        reply: dict[str, Any] = {
            KIND: FrameKind.RESULT,
            "seq": seq,
            "fields": fields,
            "info": instance_info(),
        }
        if frame.get("display"):
            reply["display"] = display_of(value)
        send_result(self.channel, reply, value, fmt)

    def send_failure(self, failure: JobFailure, extra: dict[str, Any]) -> None:
        flush_all_output()
        self.channel.send(error_frame(failure, info=instance_info(), **extra))

    def close(self) -> None:
        """What ``asyncio.Runner.close`` does: cancel leftover tasks, end async generators."""
        loop = self.loop
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def serve_actor(job: dict[str, Any], channel: Channel) -> None:
    """Create the instance and answer calls until the channel ends; raises only SystemExit."""
    actor = Actor(job, channel)
    try:
        if actor.create():
            actor.serve()
    finally:
        actor.close()
