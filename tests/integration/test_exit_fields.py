"""``exit_code`` and ``signal`` belong to a process that ended without answering, and only there.

One row per outcome a job can have: the ones where the job answered (a result, an exception, an
invalid request, a result too large, a refused allocation, a failed install) carry neither; the
ones where its process ended without an answer carry exactly how it ended, whether it left by
itself (an exit code, a crash) or was stopped by us (the SIGTERM it died of).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import class_request, function_request, streamed

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor

SLEEPS = "import time\ndef main():\n    print('started', flush=True)\n    time.sleep(60)\n"

#: name, request, expected error_type (None: success), expected exit_code, expected signal
ROWS: list[tuple[str, dict[str, Any], ErrorType | None, int | None, int | None]] = [
    ("success", function_request("def main():\n    return 1\n"), None, None, None),
    (
        "user_exception",
        function_request("def main():\n    raise ValueError('no')\n"),
        ErrorType.USER_EXCEPTION,
        None,
        None,
    ),
    (
        "invalid_request_in_the_child",
        function_request("def main():\n    return 1\n", name="missing"),
        ErrorType.INVALID_REQUEST,
        None,
        None,
    ),
    (
        "invalid_request_in_the_supervisor",
        function_request("def main():\n    return 1\n", args="not a list"),
        ErrorType.INVALID_REQUEST,
        None,
        None,
    ),
    (
        "result_too_large",
        function_request("def main():\n    return 'x' * 1000\n", limits={"max_result_bytes": 10}),
        ErrorType.RESULT_TOO_LARGE,
        None,
        None,
    ),
    (
        "allocation_refused",
        function_request(
            "def main():\n    return len(bytearray(64 * 1024**3))\n", limits={"memory_mb": 150}
        ),
        ErrorType.MEMORY_LIMIT,
        None,
        None,
    ),
    (
        "sys_exit",
        function_request("import sys\ndef main():\n    sys.exit(3)\n"),
        ErrorType.EXIT,
        3,
        None,
    ),
    (
        "os_exit_0",
        function_request("import os\ndef main():\n    os._exit(0)\n"),
        ErrorType.EXIT,
        0,
        None,
    ),
    (
        "crash",
        function_request(
            "import os, signal\ndef main():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
        ),
        ErrorType.SIGNAL,
        None,
        signal.SIGSEGV,
    ),
    (
        "timeout",
        function_request(SLEEPS, limits={"timeout_s": 0.5}),
        ErrorType.TIMEOUT,
        None,
        signal.SIGTERM,
    ),
    (
        "output_flood",
        function_request(
            "def main():\n    while True:\n        print('x' * 1000)\n",
            limits={"max_output_bytes": 1000},
        ),
        ErrorType.OUTPUT_LIMIT,
        None,
        signal.SIGTERM,
    ),
    (
        "broken_channel",
        function_request("import os\ndef main():\n    os.close(3)\n    return 1\n"),
        ErrorType.LOST,
        70,
        None,
    ),
    (
        "channel_replaced_by_dup2",
        function_request(
            "import os\ndef main():\n    os.dup2(os.open(os.devnull, os.O_WRONLY), 3)\n"
            "    return 1\n"
        ),
        ErrorType.LOST,
        70,
        None,
    ),
]


def assert_exit_fields(
    response: FunctionResponse,
    error_type: ErrorType | None,
    exit_code: int | None,
    signum: int | None,
) -> None:
    assert response.success is (error_type is None), response.error
    assert response.error_type is error_type, response.error
    assert (response.exit_code, response.signal) == (exit_code, signum), response.error


@pytest.mark.parametrize(
    ("request_", "error_type", "exit_code", "signum"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
async def test_exit_fields_of_every_outcome(
    supervisor: Supervisor,
    request_: dict[str, Any],
    error_type: ErrorType | None,
    exit_code: int | None,
    signum: int | None,
) -> None:
    assert_exit_fields(await supervisor.run(request_), error_type, exit_code, signum)


async def test_a_cancelled_job_carries_the_signal_it_died_of(supervisor: Supervisor) -> None:
    response = None
    async for item in supervisor.stream(function_request(SLEEPS), job_id="to-cancel"):
        if isinstance(item, FunctionResponse):
            response = item
        elif "started" in item.text:
            assert await supervisor.cancel("to-cancel")
    assert response is not None
    assert_exit_fields(response, ErrorType.CANCELLED, None, signal.SIGTERM)


async def test_a_failed_install_carries_no_exit(
    supervisor: Supervisor, offline_index: Path
) -> None:
    request = function_request(
        "def main():\n    return 1\n", dependencies=["no-such-package-anywhere==1.0"]
    )
    _, response = await streamed(supervisor, request)
    assert_exit_fields(response, ErrorType.DEPENDENCY_INSTALL, None, None)


async def test_an_instance_call_carries_no_exit_while_its_actor_lives(
    supervisor: Supervisor,
) -> None:
    code = "class Counter:\n    def boom(self):\n        raise KeyError('k')\n"
    response = await supervisor.run(class_request("Counter", code, "boom"))
    assert_exit_fields(response, ErrorType.USER_EXCEPTION, None, None)
    assert response.instance_info is not None and response.instance_info["alive"]
