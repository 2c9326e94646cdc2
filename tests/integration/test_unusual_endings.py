"""Unusual endings that plain Python has no twin for, answered as what they are, never ``lost``.

A result the wire cannot carry is a clear ``result of type X cannot be serialized`` failure,
whatever the value's own hooks raise; a message with a lone surrogate reads as plain Python's
stderr prints it; a deep recursion answers in about the time plain Python takes; a descriptor
put over the protocol channel is named as such; an instance survives a method that raises any
``BaseException`` but ``SystemExit``. (The endings plain Python does have are rows of the parity
table: ``tests/parity/scenarios/endings.py``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.helpers import class_request, function_request, make_settings

from sandvisor.protocol.codec import encode_value
from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor


@pytest.fixture(params=["template", "spawn"])
async def sup(request, tmp_path: Path):
    settings = make_settings(tmp_path / "home", templates=request.param == "template")
    async with Supervisor(settings) as running:
        yield running


def reducing(body: str) -> str:
    """A job returning an object whose ``__reduce__`` runs ``body``."""
    return (
        f"class Odd:\n    def __reduce__(self):\n        {body}\n\ndef main():\n    return Odd()\n"
    )


def returning(expression: str) -> str:
    return f"def main():\n    return {expression}\n"


PICKLED = {"serialization_format": "cloudpickle"}


class Interrupting:
    """An argument whose unpickling raises KeyboardInterrupt (``exec`` pickles by reference)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, ("raise KeyboardInterrupt('at unpickling')",))


#: name, code, request fields, expected error_type, expected first line of the error
ROWS: list[tuple[str, str, dict[str, Any], ErrorType, str]] = [
    (
        "reduce_raises_keyboard_interrupt",
        reducing("raise KeyboardInterrupt"),
        PICKLED,
        ErrorType.USER_EXCEPTION,
        "result of type Odd cannot be serialized: KeyboardInterrupt",
    ),
    (
        "reduce_raises_an_exception",
        reducing("raise RuntimeError('no reduce for you')"),
        PICKLED,
        ErrorType.USER_EXCEPTION,
        "result of type Odd cannot be serialized: RuntimeError: no reduce for you",
    ),
    (
        "reduce_raises_an_exception_whose_str_fails",
        "class Bad(Exception):\n    def __str__(self):\n        raise KeyboardInterrupt\n\n"
        + reducing("raise Bad()"),
        PICKLED,
        ErrorType.USER_EXCEPTION,
        "result of type Odd cannot be serialized: Bad: <exception str() failed>",
    ),
    (
        "unpicklable_lock",
        "import threading\n" + returning("threading.Lock()"),
        PICKLED,
        ErrorType.USER_EXCEPTION,
        "result of type lock cannot be serialized: TypeError: cannot pickle '_thread.lock' object",
    ),
    (
        "json_set",
        returning("{1, 2}"),
        {},
        ErrorType.USER_EXCEPTION,
        "result of type set cannot be serialized: TypeError: Object of type set is not JSON"
        " serializable; use serialization_format='cloudpickle' for Python objects",
    ),
    (
        "json_lone_surrogate",
        returning("'\\ud800'"),
        {},
        ErrorType.USER_EXCEPTION,
        "result of type str cannot be serialized: UnicodeEncodeError: ",
    ),
    (
        "json_int_over_64_bits",
        returning("2 ** 100"),
        {},
        ErrorType.USER_EXCEPTION,
        "result of type int cannot be serialized: OverflowError: ",
    ),
    (
        "json_nested_too_deep",
        "def main():\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n",
        {},
        ErrorType.USER_EXCEPTION,
        "result of type list cannot be serialized: RecursionError: ",
    ),
    (
        "message_with_a_lone_surrogate",
        "def main():\n    raise ValueError('bad \\ud800 char')\n",
        {},
        ErrorType.USER_EXCEPTION,
        "ValueError: bad \\ud800 char",
    ),
    (
        "argument_unpickling_raises_keyboard_interrupt",
        "def main(x):\n    return x\n",
        PICKLED | {"args": [encode_value(Interrupting())]},
        ErrorType.INVALID_REQUEST,
        "invalid request: cannot decode args[0]: cannot unpickle (KeyboardInterrupt: at unpickling)",
    ),
    (
        "reduce_exits",
        reducing("raise SystemExit(3)"),
        PICKLED,
        ErrorType.EXIT,
        "exited with code 3",
    ),
]


def assert_not_lost(response: FunctionResponse) -> None:
    """No fd-3 hint, and none of sandvisor's own frames in what the job wrote."""
    assert "file descriptor" not in (response.error or "")
    assert "sandbox_child" not in (response.error or ""), response.error
    assert "Traceback" not in (response.stdout or ""), response.stdout


@pytest.mark.parametrize(
    ("code", "fields", "error_type", "first_line"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
async def test_an_ending_the_wire_cannot_carry_is_said_clearly(
    sup: Supervisor, code: str, fields: dict[str, Any], error_type: ErrorType, first_line: str
) -> None:
    response = await sup.run(function_request(code, **fields))
    assert response.error_type is error_type, response.error
    assert (response.error or "").startswith(first_line), response.error
    assert_not_lost(response)


async def test_a_deep_recursion_answers_well_within_its_limit(sup: Supervisor) -> None:
    # Formatting each of its 10**6 frames took 35 s of CPU; the interpreter shows the last 1000.
    code = (
        "import sys\nsys.setrecursionlimit(10**6)\n\ndef down(n):\n    return down(n + 1)\n\n"
        "def main():\n    return down(0)\n"
    )
    response = await sup.run(function_request(code, limits={"timeout_s": 20}))
    assert response.error_type is ErrorType.USER_EXCEPTION, response.error
    assert (response.error or "").startswith("RecursionError: maximum recursion depth exceeded")
    assert "[Previous line repeated 997 more times]" in (response.error or "")


async def test_a_descriptor_put_over_the_channel_is_named(sup: Supervisor) -> None:
    code = (
        "import os\ndef main():\n    fd = os.open(os.devnull, os.O_RDWR)\n"
        "    for i in range(64):\n        if i != fd:\n"
        "            try:\n                os.dup2(fd, i)\n"
        "            except OSError:\n                pass\n    return 'ok'\n"
    )
    response = await sup.run(function_request(code))
    assert response.error_type is ErrorType.LOST, response.error
    assert "replace (os.dup2)" in (response.error or "")
    assert "sys.exit()" not in (response.error or "")


KEEPER = """
import asyncio

class Keeper:
    def __init__(self):
        self.calls = 0

    def count(self):
        self.calls += 1
        return self.calls

    def end(self, how):
        class Stop(BaseException):
            pass

        raise {"interrupt": KeyboardInterrupt("by hand"), "generator": GeneratorExit("ge"),
               "own": Stop("custom base")}[how]

    async def end_later(self, how):
        await asyncio.sleep(0)
        self.end(how)
"""


@pytest.mark.parametrize(
    ("method", "how", "first_line"),
    [
        pytest.param("end", "interrupt", "KeyboardInterrupt: by hand", id="keyboard_interrupt"),
        pytest.param("end", "generator", "GeneratorExit: ge", id="generator_exit"),
        pytest.param("end", "own", "Stop: custom base", id="own_base_exception"),
        pytest.param("end_later", "interrupt", "KeyboardInterrupt: by hand", id="async_method"),
    ],
)
async def test_an_instance_outlives_a_method_raising_a_base_exception(
    sup: Supervisor, method: str, how: str, first_line: str
) -> None:
    first = await sup.run(class_request("Keeper", KEEPER, "count"))
    assert first.success, first.error
    call = {"instance_id": first.instance_id, "create_new_instance": False}
    ended = await sup.run(class_request("Keeper", KEEPER, method, how, **call))
    assert ended.error_type is ErrorType.USER_EXCEPTION, ended.error
    assert (ended.error or "").startswith(first_line), ended.error
    assert ", in end\n" in (ended.error or "")  # the job's own frame, not the runtime's
    assert_not_lost(ended)
    assert ended.instance_info is not None and ended.instance_info["alive"]
    after = await sup.run(class_request("Keeper", KEEPER, "count", **call))
    assert after.success and after.json_result == 2, after.error
    assert after.instance_info is not None and after.instance_info["recreated"] is False


async def test_a_getattr_that_raises_is_the_job_s_failure(sup: Supervisor) -> None:
    code = "class Lazy:\n    def __getattr__(self, name):\n        raise KeyboardInterrupt(name)\n"
    response = await sup.run(class_request("Lazy", code, "anything"))
    assert response.error_type is ErrorType.USER_EXCEPTION, response.error
    assert (response.error or "").startswith("KeyboardInterrupt: anything"), response.error
    assert_not_lost(response)


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        pytest.param("import sys\n    sys.exit(70)", "(the job raised SystemExit)", id="sys_exit"),
        pytest.param(
            "import os\n    os._exit(0)", "(sys.exit() or os._exit() in the job?)", id="os_exit"
        ),
    ],
)
async def test_an_exit_is_the_job_s_whatever_its_code(
    sup: Supervisor, code: str, hint: str
) -> None:
    # 70 is also the status of a child whose channel broke: the child says it is the job's.
    response = await sup.run(function_request(f"def main():\n    {code}\n"))
    assert response.error_type is ErrorType.EXIT, response.error
    assert (response.error or "").endswith(hint), response.error


async def test_an_instance_method_s_sys_exit_70_is_an_exit(sup: Supervisor) -> None:
    code = "import sys\nclass Quitter:\n    def quit(self):\n        sys.exit(70)\n"
    response = await sup.run(class_request("Quitter", code, "quit"))
    assert response.error_type is ErrorType.EXIT, response.error
    assert response.exit_code == 70


#: Hooks of the job that raise while the runtime flushes or closes its streams and handlers.
FLUSH_RAISES = "    def flush(self):\n        raise KeyboardInterrupt\n"
HOOKS = {
    "stdout": "import sys\nclass Out:\n    def write(self, text):\n        return len(text)\n"
    + FLUSH_RAISES
    + "sys.stdout = sys.stderr = Out()\n",
    "logging": "import logging\nclass Loud(logging.Handler):\n    def emit(self, record):\n"
    "        pass\n" + FLUSH_RAISES + "logging.getLogger().addHandler(Loud())\n",
}


@pytest.mark.parametrize(
    ("hook", "ending", "answer"),
    [
        pytest.param("stdout", "return 'answered'", "answered", id="stdout_then_result"),
        pytest.param(
            "stdout", "raise ValueError('mine')", "ValueError: mine", id="stdout_then_raise"
        ),
        pytest.param("logging", "return 'answered'", "answered", id="logging_then_result"),
        pytest.param(
            "logging", "raise ValueError('mine')", "ValueError: mine", id="logging_then_raise"
        ),
    ],
)
async def test_hooks_that_raise_while_streams_close_change_no_answer(
    sup: Supervisor, hook: str, ending: str, answer: str
) -> None:
    response = await sup.run(function_request(f"{HOOKS[hook]}\ndef main():\n    {ending}\n"))
    said = response.json_result if response.success else (response.error or "").split("\n")[0]
    assert said == answer, response.error
