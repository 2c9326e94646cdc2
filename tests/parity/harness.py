"""Run one scenario both ways, by sandvisor and by a fresh ``python``, as the same answer shape.

The baseline is what plain Python does with the same source: a fresh interpreter (this one's
executable), a clean environment and an empty directory as its cwd, the source written there as
``function_code.py`` (``class_code.py`` for a class), with the scenario's ``modules`` beside it,
imported as a module and called with the same arguments. Its stdout and stderr share one pipe,
as a terminal shows them, and are unbuffered (``PYTHONUNBUFFERED=1``, as a job's are), so what
it wrote before dying is all there.

What the call raises, any ``BaseException`` but ``SystemExit`` (which exits), is its answer:
``raised``, with the exception's first line and its traceback as the interpreter prints it (the
last ``sys.tracebacklimit`` entries, 1000 unless set).

Both sides are reduced to an :class:`Answer`: how the call ended, its result, the exception's
first line and traceback, and the output lines, with the job's directory written ``<dir>``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sys
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cloudpickle

from sandvisor.protocol.codec import encode_value
from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.policy import CHILD_FIXED

#: Where a job's directory is written in normalized answers.
DIR = "<dir>"
#: faulthandler's dump on a fatal signal: its frames are the runtime's or the baseline's own.
FAULT_MARK = "Fatal Python error:"
BASELINE_TIMEOUT_S = 60
#: How the supervisor's own lines in a job's output start.
NOTE = "[sandvisor] "


@dataclass(frozen=True)
class Scenario:
    """One row of the table: code, how it is called, and what sandvisor must answer instead.

    ``differs``: fields of the answer sandvisor gives where plain Python's must not be expected,
    with ``why`` saying why it must differ.
    """

    id: str
    code: str
    function: str = "main"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    fmt: str = "json"
    modules: dict[str, str] = field(default_factory=dict)
    class_name: str | None = None
    method: str = "__call__"
    ctor_args: tuple[Any, ...] = ()
    ctor_kwargs: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] | None = None
    differs: dict[str, Any] = field(default_factory=dict)  # field -> value or function of it
    why: str = ""

    @property
    def is_class(self) -> bool:
        return self.class_name is not None

    @property
    def module(self) -> str:
        return "class_code" if self.is_class else "function_code"

    @property
    def source(self) -> str:
        return textwrap.dedent(self.code).lstrip("\n")


@dataclass(frozen=True)
class Answer:
    """What a call came to, in the same terms for sandvisor and for plain Python."""

    end: str  # returned, raised, invalid, exit N, signal NAME
    result: Any = None
    error: str | None = None  # "Type: first line of the message"
    traceback: tuple[str, ...] = ()
    output: tuple[str, ...] = ()


def expected_of(scenario: Scenario, baseline: Answer) -> Answer:
    """The answer sandvisor must give: the baseline's, with the row's named differences.

    A difference is a value, or a function of the baseline's value of that field.
    """
    changes = {
        name: change(getattr(baseline, name)) if callable(change) else change
        for name, change in scenario.differs.items()
    }
    return replace(baseline, **changes)


# -- sandvisor -----------------------------------------------------------------------------------


def request_of(scenario: Scenario) -> dict[str, Any]:
    """The FunctionRequest that runs the scenario."""
    encode = _encoder(scenario.fmt)
    request: dict[str, Any] = {
        "serialization_format": scenario.fmt,
        "args": [encode(value) for value in scenario.args],
        "kwargs": {name: encode(value) for name, value in scenario.kwargs.items()},
    }
    if scenario.modules:
        request["modules"] = dict(scenario.modules)
    if scenario.limits:
        request["limits"] = dict(scenario.limits)
    if scenario.is_class:
        request |= {
            "execution_type": "class",
            "class_name": scenario.class_name,
            "class_code": scenario.source,
            "method_name": scenario.method,
            "constructor_args": [encode(value) for value in scenario.ctor_args],
            "constructor_kwargs": {k: encode(v) for k, v in scenario.ctor_kwargs.items()},
            "create_new_instance": True,
        }
    else:
        request |= {"function_name": scenario.function, "function_code": scenario.source}
    return request


def _encoder(fmt: str) -> Any:
    return encode_value if fmt == "cloudpickle" else (lambda value: value)


async def run_sandvisor(supervisor: Supervisor, scenario: Scenario) -> Answer:
    """Run the scenario through ``Supervisor.run``; its answer, normalized."""
    response = await supervisor.run(request_of(scenario))
    jobs_dir = re.escape(str(supervisor.settings.jobs_dir)) + r"/[^/\s\"']+"
    return normalized(answer_of_response(response), jobs_dir)


def answer_of_response(response: FunctionResponse) -> Answer:
    """The answer a response gives; lines of sandvisor's own (``[sandvisor] ...``: an instance
    created, a retry, output dropped) are not the job's output and are left out."""
    output = tuple(
        line for line in (response.stdout or "").splitlines() if not line.startswith(NOTE)
    )
    if response.success:
        if response.result is not None:
            value = cloudpickle.loads(base64.b64decode(response.result))
            return Answer("returned", described(value), output=output)
        return Answer("returned", response.json_result, output=output)
    first, _, detail = (response.error or "").partition("\n")
    kind = response.error_type
    if kind == ErrorType.USER_EXCEPTION:
        return Answer("raised", None, first, tuple(detail.strip("\n").splitlines()), output)
    if kind == ErrorType.EXIT:
        return Answer(f"exit {response.exit_code}", output=output)
    if kind == ErrorType.SIGNAL and response.signal is not None:
        return Answer(f"signal {signal.Signals(response.signal).name}", output=output)
    if kind == ErrorType.INVALID_REQUEST:
        return Answer("invalid", error=first, output=output)
    return Answer(str(kind.value if kind else "failed"), error=first, output=output)


def described(value: Any) -> dict[str, str]:
    """A cloudpickle result as it can be compared across processes: its type and repr."""
    return {"type": type(value).__qualname__, "repr": repr(value)}


# -- plain Python ----------------------------------------------------------------------------------

#: The baseline program (``python -c``): import the module, call, write the answer as JSON.
BASELINE_PROGRAM = r"""
import asyncio, base64, importlib, inspect, json, os, sys, traceback

spec_path = sys.argv[1]
del sys.argv[1:]
with open(spec_path) as handle:
    spec = json.load(handle)
sys.path[0] = os.getcwd()  # what '' means, written as a job's is: its absolute dir

def decode(value):
    if spec["fmt"] == "cloudpickle":
        import cloudpickle
        return cloudpickle.loads(base64.b64decode(value))
    return value

def write(answer):
    with open(spec["answer"], "w") as handle:
        json.dump(answer, handle)

def failed(exc):
    try:
        message = str(exc)
    except BaseException:  # what the interpreter's printer writes then
        message = "<exception str() failed>"
    lines = message.strip().splitlines()
    first = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    tb = exc.__traceback__
    here = os.getcwd() + os.sep
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(here):
        tb = tb.tb_next
    # As the interpreter prints an uncaught exception: its last sys.tracebacklimit entries.
    limit = getattr(sys, "tracebacklimit", 1000)
    text = "".join(
        traceback.format_exception(type(exc), exc, tb or exc.__traceback__, limit=-limit)
    )
    write({"end": "raised", "error": first, "traceback": text.strip("\n").splitlines()})

def finish(value):
    if spec["fmt"] == "cloudpickle":
        value = {"type": type(value).__qualname__, "repr": repr(value)}
    else:
        value = json.loads(json.dumps(value))
    write({"end": "returned", "result": value})

args = [decode(v) for v in spec["args"]]
kwargs = {k: decode(v) for k, v in spec["kwargs"].items()}
try:
    module = importlib.import_module(spec["module"])
    if spec["class_name"] is not None:
        cls = getattr(module, spec["class_name"])
        ctor_args = [decode(v) for v in spec["ctor_args"]]
        ctor_kwargs = {k: decode(v) for k, v in spec["ctor_kwargs"].items()}
        function = getattr(cls(*ctor_args, **ctor_kwargs), spec["method"])
    else:
        function = getattr(module, spec["function"])
    value = function(*args, **kwargs)
    if inspect.isawaitable(value):
        async def awaited():
            return await value
        value = asyncio.run(awaited())
except SystemExit:
    raise
except BaseException as exc:  # the call raised: KeyboardInterrupt and its kind included
    failed(exc)
else:
    finish(value)
"""


def baseline_environment() -> dict[str, str]:
    """A clean environment: a PATH, a locale, and what every job child gets (unbuffered I/O)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
    }
    return env | CHILD_FIXED


def write_sources(workdir: Path, scenario: Scenario) -> None:
    workdir.mkdir(parents=True)
    (workdir / f"{scenario.module}.py").write_text(scenario.source)
    for name, source in scenario.modules.items():
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)


async def run_baseline(scenario: Scenario, scratch: Path) -> Answer:
    """Run the scenario in a fresh ``python`` under ``scratch``; its answer, normalized."""
    workdir = scratch / "job"
    write_sources(workdir, scenario)
    encode = _encoder(scenario.fmt)
    spec = {
        "module": scenario.module,
        "function": scenario.function,
        "class_name": scenario.class_name,
        "method": scenario.method,
        "fmt": scenario.fmt,
        "args": [encode(value) for value in scenario.args],
        "kwargs": {name: encode(value) for name, value in scenario.kwargs.items()},
        "ctor_args": [encode(value) for value in scenario.ctor_args],
        "ctor_kwargs": {name: encode(value) for name, value in scenario.ctor_kwargs.items()},
        "answer": str(scratch / "answer.json"),
    }
    spec_path = scratch / "spec.json"
    spec_path.write_text(json.dumps(spec))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        BASELINE_PROGRAM,
        str(spec_path),
        cwd=workdir,
        env=baseline_environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    data, _ = await asyncio.wait_for(process.communicate(), BASELINE_TIMEOUT_S)
    output = tuple(data.decode("utf-8", "backslashreplace").splitlines())
    answer_path = scratch / "answer.json"
    if answer_path.exists():
        fields = json.loads(answer_path.read_text())
        answer = Answer(
            fields["end"],
            fields.get("result"),
            fields.get("error"),
            tuple(fields.get("traceback", ())),
            output,
        )
    elif process.returncode is not None and process.returncode < 0:
        answer = Answer(f"signal {signal.Signals(-process.returncode).name}", output=output)
    else:
        answer = Answer(f"exit {process.returncode}", output=output)
    return normalized(answer, re.escape(str(workdir)))


# -- normalizing -----------------------------------------------------------------------------------


def normalized(answer: Answer, dir_pattern: str) -> Answer:
    """Paths of the job's dir written ``<dir>``; faulthandler's dump (and all after it) cut."""
    pattern = re.compile(dir_pattern)

    def clean(text: str) -> str:
        return pattern.sub(DIR, text)

    result = json.loads(clean(json.dumps(answer.result)))
    output = clean("\n".join(answer.output))
    output = output.split(FAULT_MARK, 1)[0]
    return Answer(
        answer.end,
        result,
        clean(answer.error) if answer.error is not None else None,
        tuple(clean(line) for line in answer.traceback),
        tuple(output.splitlines()),
    )
