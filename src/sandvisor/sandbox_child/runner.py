"""Run one job inside its child: load the code, call it, report a result or an error frame.

Every way a job can fail inside the child becomes one ``error`` frame with a ``kind`` (the
supervisor's ErrorType value), a one-line ``summary`` and a ``detail``; the child then leaves with
``os._exit`` so atexit hooks and stray non-daemon threads of user code cannot keep it alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from sandvisor.protocol.codec import CodecError, decode_arguments, encode_result, unserializable
from sandvisor.protocol.messages import (
    CHANNEL_BROKEN_EXIT,
    CHANNEL_FD,
    KIND,
    REPORT_IMPORTS,
    FrameKind,
)
from sandvisor.protocol.text import exception_line, safe_str, wire_safe
from sandvisor.sandbox_child import credentials, isolation
from sandvisor.sandbox_child.channel import Channel, Unencodable
from sandvisor.sandbox_child.display import display_of
from sandvisor.sandbox_child.failures import JobFailure, invalid, user_code
from sandvisor.sandbox_child.imports import imported_since_template
from sandvisor.sandbox_child.job_module import import_deployed, load_source
from sandvisor.sandbox_child.logs import mark_levels
from sandvisor.sandbox_child.workspace import ModulePathError, enter_workdir


def lookup(namespace: dict[str, Any], name: str, what: str, source: str) -> Any:
    """``namespace[name]``, else an invalid request that lists what the code does define."""
    if name in namespace:
        return namespace[name]
    defined = sorted(
        key
        for key, value in namespace.items()
        if not key.startswith("__") and (callable(value) or inspect.isclass(value))
    )
    listing = ", ".join(defined[:20]) or "nothing callable"
    raise invalid(f"{what} {name!r} is not defined by {source} (it defines: {listing})")


def resolve_callable(
    request: dict[str, Any], job: dict[str, Any], user_files: set[str]
) -> Callable[..., Any]:
    """What the request calls: its function, or the method of a new instance of its class."""
    if request.get("execution_type", "function") != "class":
        namespace, origin = load_namespace(request, job, user_files)
        return lookup(namespace, request["function_name"], "function_name", origin)
    return bound_method(create_instance(request, job, user_files), request, user_files)


def load_namespace(
    request: dict[str, Any], job: dict[str, Any], user_files: set[str]
) -> tuple[dict[str, Any], str]:
    """The namespace the request's code defines (its source, or the deployed module), and a label.

    The source of ``function_code`` becomes the module ``function_code``, that of ``class_code``
    the module ``class_code``: the names a plain ``import`` of a file so named would give.
    """
    is_class = request.get("execution_type", "function") == "class"
    code_field = "class_code" if is_class else "function_code"
    source = request.get(code_field)
    if source is not None:
        return load_source(source, code_field, job, user_files), code_field
    if job.get("module"):
        namespace = import_deployed(job["module"], job.get("sys_path", []), user_files)
        return namespace, f"module {job['module']}"
    raise invalid(f"request has no {code_field} and names no deployed module")


def create_instance(request: dict[str, Any], job: dict[str, Any], user_files: set[str]) -> Any:
    """Load the class and construct it with the request's constructor arguments.

    The class and the method are checked first: a request naming either wrongly is invalid
    before any constructor (which may be slow, or load a model) runs.
    """
    namespace, origin = load_namespace(request, job, user_files)
    cls = lookup(namespace, request["class_name"], "class_name", origin)
    if not inspect.isclass(cls):
        raise invalid(f"class_name {request['class_name']!r} is not a class in {origin}")
    check_method(cls, request.get("method_name", "__call__"))
    ctor_args, ctor_kwargs = decode_or_fail(
        request.get("constructor_args", []),
        request.get("constructor_kwargs", {}),
        request.get("serialization_format", "cloudpickle"),
        "constructor_args",
    )
    with user_code(user_files):
        return cls(*ctor_args, **ctor_kwargs)


def check_method(cls: type, method_name: str) -> None:
    """Refuse a method the class does not define, unless its instances answer any name.

    Looked up in the class and its bases, not through ``getattr(cls, ...)``, which would find
    the metaclass's own attributes (every class has ``type.__call__``). A class with its own
    ``__getattr__`` may make the method per instance: :func:`bound_method` decides for it.
    """
    if any(method_name in vars(base) for base in cls.__mro__):
        return
    if any("__getattr__" in vars(base) for base in cls.__mro__):
        return
    raise invalid(f"method_name {method_name!r} is not a method of class {cls.__name__!r}")


def bound_method(
    instance: Any, request: dict[str, Any], user_files: set[str]
) -> Callable[..., Any]:
    """The instance's method the request names, else an invalid request.

    The lookup runs the class's own ``__getattr__``/``__getattribute__``: what they raise but
    ``AttributeError`` (and ``SystemExit``) is the job's failure, as any raise of its code.
    """
    method_name = request.get("method_name", "__call__")
    with user_code(user_files):
        if hasattr(instance, method_name):
            return getattr(instance, method_name)
    raise invalid(
        f"method_name {method_name!r} is not a method of class {type(instance).__name__!r}"
    )


def decode_or_fail(args: Any, kwargs: Any, fmt: str, what: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        return decode_arguments(args, kwargs, fmt, what)
    except CodecError as exc:
        raise invalid(f"cannot decode {exc}") from None


def call(
    function: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    user_files: set[str],
    loop: asyncio.AbstractEventLoop | None = None,
) -> Any:
    """Call it; an awaitable result is run to completion on ``loop`` (else on a new loop).

    Whatever the call raises but ``SystemExit`` is the job's failure (see ``failures.user_code``).
    """
    with user_code(user_files):
        value = function(*args, **kwargs)
        if inspect.isawaitable(value):
            run = loop.run_until_complete if loop is not None else asyncio.run
            value = run(_awaited(value))
    return value


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def result_fields(value: Any, fmt: str, max_result_bytes: int | None) -> dict[str, Any]:
    """The result's response fields; a result that cannot be encoded, or is over the limit,
    raises the :class:`JobFailure` that says so."""
    try:
        fields = encode_result(value, fmt)
    except CodecError as exc:
        raise JobFailure("user_exception", str(exc)) from None
    size = len(fields["result"]) if "result" in fields else len(repr(fields["json_result"]))
    if max_result_bytes is not None and size > max_result_bytes:
        raise JobFailure(
            "result_too_large",
            f"result of {size} bytes (encoded) is over the {max_result_bytes}-byte limit",
        )
    return fields


def execute(job: dict[str, Any], channel: Channel) -> None:
    """Everything after the job frame is read: prepare, run, report. Raises nothing."""
    user_files: set[str] = set()
    request = job["request"]
    try:
        enter_job_workdir(job)
        fmt = request.get("serialization_format", "cloudpickle")
        function = resolve_callable(request, job, user_files)
        args, kwargs = decode_or_fail(
            request.get("args", []), request.get("kwargs", {}), fmt, "args"
        )
        channel.send({KIND: FrameKind.RUNNING, "ts": time.time()})
        value = call(function, args, kwargs, user_files)
        fields = result_fields(value, fmt, job.get("max_result_bytes"))
    except JobFailure as failure:
        report_failure(channel, failure)
        return
    flush_stdio()
    frame: dict[str, Any] = {KIND: FrameKind.RESULT, "fields": fields}
    if job.get("display"):
        frame["display"] = display_of(value)
    send_result(channel, frame, value, fmt)


def send_result(channel: Channel, frame: dict[str, Any], value: Any, fmt: str) -> None:
    """Send a result frame; one the channel cannot carry is answered as the failure it is.

    A JSON result may be valid JSON and still not fit a frame (a lone surrogate, an int over 64
    bits, nesting deeper than msgpack allows): nothing was written, and the error frame says
    ``result of type X cannot be serialized: ...``. A broken channel raises ``OSError``.
    """
    try:
        channel.send(frame)
    except Unencodable as exc:
        summary = unserializable(value, exc.__cause__ or exc, fmt)
        extra = {key: item for key, item in frame.items() if key not in _RESULT_ONLY}
        channel.send(error_frame(JobFailure("user_exception", summary), **extra))


#: The fields of a result frame that its error frame does not carry (it keeps seq and info).
_RESULT_ONLY = frozenset({KIND, "fields", "display"})


def enter_job_workdir(job: dict[str, Any]) -> None:
    sys.argv = [""]  # not the runtime's flags (argparse would trip); load_source names the file
    try:
        modules = job["request"].get("modules") or {}
        enter_workdir(job["workdir"], modules, made=bool(job.get("identity")))
    except ModulePathError as exc:
        raise invalid(str(exc)) from None
    except OSError as exc:
        raise invalid(f"cannot prepare the job's working dir: {exc}") from None
    site = (job.get("identity") or {}).get("site")
    if site and site not in sys.path:  # what it installs at run time (PIP_TARGET), after its dir
        sys.path.insert(1, site)


def report_failure(channel: Channel, failure: JobFailure) -> None:
    """Flush the job's output, then send ``failure`` as an error frame."""
    flush_stdio()
    channel.send(error_frame(failure))


def error_frame(failure: JobFailure, **extra: Any) -> dict[str, Any]:
    """The error frame of ``failure``: its kind, summary and detail, always encodable."""
    return {
        KIND: FrameKind.ERROR,
        "kind": failure.kind,
        "summary": wire_safe(failure.summary),
        "detail": wire_safe(failure.detail),
        **extra,
    }


def report_imports(channel: Channel, workdir: str) -> None:
    """After the answer, tell the supervisor what the job imported that its template had not."""
    modules = imported_since_template(workdir)
    if modules:
        # The answer is already out: a channel the job broke loses only this hint.
        with contextlib.suppress(OSError):
            channel.send({KIND: FrameKind.IMPORTS, "modules": modules})


def flush_stdio() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``; never raises.

    User code may have closed them, or put objects of its own there whose ``flush`` raises
    anything: as at the interpreter's exit, that is ignored, and the answer still goes out.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # closed or replaced: what it wrote is already gone or written
            pass


def exit_code_of(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` gives a process, as CPython's ``handle_system_exit``.

    None is 0; an int is its low 8 bits if it fits a C long, else 255 (CPython's -1 for an
    overflow); anything else (a string, a float, a list) is printed to stderr and is 1.
    """
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if _C_LONG_MIN <= code <= _C_LONG_MAX else 255
    with contextlib.suppress(Exception):  # stderr closed, or a __str__ that fails: still 1
        print(safe_str(code), file=sys.stderr)
    return 1


_C_LONG_MAX = 2 ** (8 * struct.calcsize("l") - 1) - 1
_C_LONG_MIN = -_C_LONG_MAX - 1


def prepare_streams() -> Channel:
    """What a job child sets up before it knows its job, done ahead of it by a spare.

    Unbuffered streams on fds 1 and 2 (logging's lines to stderr keep their level): all name
    descriptors, not what is behind them, and ``install_descriptors`` later puts the job's own
    output pipe there. The channel is the one the job then speaks on.
    """
    isolation.stand_in_stdio()
    isolation.unbuffered_stdio()
    mark_levels()
    return Channel(CHANNEL_FD)


def run_job(
    channel_fd: int, stdout_fd: int, stderr_fd: int, prepared: Channel | None = None
) -> None:
    """The whole life of a job child, spawned or forked; never returns.

    ``prepared``: the channel :func:`prepare_streams` made ahead of the job, if it ran.
    """
    code = 0
    channel: Channel | None = None
    try:
        fd = isolation.install_descriptors(channel_fd, stdout_fd, stderr_fd)
        channel = prepared if prepared is not None and prepared.fd == fd else Channel(fd)
        channel.pin()
        job = channel.receive()
        isolation.name_process(job.get("comm"))
        isolation.apply_job_environment(job)
        isolation.apply_limits(job.get("rlimits") or {}, job.get("oom_score_adj"))
        try:  # as its identity or not at all: never with the template's uid
            credentials.take_identity(job)
        except credentials.IdentityError as exc:
            report_failure(channel, JobFailure("lost", f"lost: {exc}; the job was not run"))
            return
        if channel is not prepared:
            isolation.unbuffered_stdio()
            mark_levels()
        if job.get("actor"):
            # Imported here: the actor loop builds on this module.
            from sandvisor.sandbox_child.actor import serve_actor

            serve_actor(job, channel)
        else:
            execute(job, channel)
            if job.get(REPORT_IMPORTS):
                report_imports(channel, job["workdir"])
        # The answer is out: the job's logging handlers, closed here as at the interpreter's
        # exit, may raise anything (as there, it is ignored) and change nothing of it.
        with contextlib.suppress(BaseException):
            logging.shutdown()
    except SystemExit as exc:  # sys.exit() in user code: leave as it asked, with no result
        code = exit_code_of(exc)
        announce_exit(channel, code)
    except BaseException as exc:  # the channel broke, or the runtime itself failed
        code = runtime_failed(channel, exc)
    finally:
        flush_stdio()
        os._exit(code)


def announce_exit(channel: Channel | None, code: int) -> None:
    """Tell the supervisor the job itself leaves with ``code`` (an EXITING frame), so that a
    status that is also the runtime's own (CHANNEL_BROKEN_EXIT) is not taken for a broken
    channel. A channel that cannot take it loses only the hint."""
    if channel is not None:
        with contextlib.suppress(Exception):
            channel.send({KIND: FrameKind.EXITING, "code": code})


def runtime_failed(channel: Channel | None, exc: BaseException) -> int:
    """The exit status of a child whose runtime (not its job: that is answered) failed.

    A channel that still works gets an error frame of kind ``lost`` that names the failure, with
    the runtime's traceback as its detail (never in the job's output). A broken or replaced
    channel cannot: the status then tells the supervisor (CHANNEL_BROKEN_EXIT, said ``lost``).
    """
    if channel is not None and not isinstance(exc, OSError):
        failure = JobFailure(
            "lost",
            f"lost: sandvisor's job runtime failed ({exception_line(exc)})",
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        with contextlib.suppress(BaseException):  # the frame is a courtesy: the status says it
            report_failure(channel, failure)
    return CHANNEL_BROKEN_EXIT
