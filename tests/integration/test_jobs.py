"""Real children, both ways of starting them: forked from a warm template, and a fresh spawn."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest
from tests.helpers import EXAMPLES, eventually, function_request, make_settings, streamed

from sandvisor.protocol.codec import encode_value
from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.events import LogEvent


@pytest.fixture(params=["template", "spawn"])
async def sup(request, tmp_path: Path):
    settings = make_settings(tmp_path / "home", templates=request.param == "template")
    async with Supervisor(settings) as running:
        yield running


def example_requests() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.json")):
        document = json.loads(path.read_text())
        found.append((path.stem, document.get("input", document)))
    return found


EXPECTED_EXAMPLE_RESULTS = {
    "args_kwargs": {"sum": 100, "count": 4},
    "async_function": [0, 1, 4, 9, 16],
    "class_call": 42,
    "json_format": {"the": 3, "and": 2},
    "local_module": 12.566,
}


def decoded(response: FunctionResponse):
    if response.result is not None:
        return cloudpickle.loads(base64.b64decode(response.result))
    return response.json_result


@pytest.mark.parametrize(
    ("name", "request_body"), example_requests(), ids=lambda v: v if isinstance(v, str) else ""
)
async def test_every_example_runs(sup: Supervisor, name: str, request_body: dict):
    response = await sup.run(request_body)
    assert response.success, response.error
    if name == "hello":
        assert response.json_result["greeting"] == "hello, sandvisor"
        assert "and from a subprocess" in response.stdout
        assert "INFO: greeted sandvisor" in response.stdout
    else:
        assert decoded(response) == EXPECTED_EXAMPLE_RESULTS[name]


async def test_a_raising_function_fails_with_the_users_traceback(sup: Supervisor):
    code = "def helper(x):\n    raise ValueError(f'bad value {x}')\n\ndef main():\n    print('about to fail')\n    helper(3)\n"
    response = await sup.run(function_request(code))
    assert not response.success
    assert response.error_type == ErrorType.USER_EXCEPTION
    first_line, _, detail = response.error.partition("\n")
    assert first_line == "ValueError: bad value 3"
    assert '/function_code.py", line 6, in main' in detail  # the job's code is a real file
    assert "line 2, in helper" in detail and "raise ValueError" in detail
    assert "sandbox_child" not in detail  # our own frames are not the user's business
    assert response.stdout == "about to fail\n"


async def test_output_of_subprocesses_and_c_level_writes_is_captured(sup: Supervisor):
    code = (
        "import os, subprocess, ctypes, sys\n"
        "def main():\n"
        "    os.system('echo from-shell')\n"
        "    subprocess.run(['sh', '-c', 'echo from-subprocess-stderr >&2'])\n"
        "    os.write(1, b'raw-fd-write\\n')\n"
        "    ctypes.CDLL(None).puts(b'from-libc-puts')\n"
        "    print('to-stderr', file=sys.stderr)\n"
    )
    events, response = await streamed(sup, function_request(code))
    assert response.success, response
    for text in (
        "from-shell",
        "from-subprocess-stderr",
        "raw-fd-write",
        "from-libc-puts",
        "to-stderr",
    ):
        assert text in response.stdout
    by_stream = {event.stream: "" for event in events}
    for event in events:
        by_stream[event.stream] += event.text
    # What sys.stderr wrote is stderr; fds 1 and 2 are one pipe (it keeps their order), so what
    # a subprocess wrote to fd 2 arrives as stdout.
    assert "to-stderr" in by_stream["stderr"]
    assert "from-shell" in by_stream["stdout"] and "from-subprocess-stderr" in by_stream["stdout"]


async def test_ten_megabytes_of_output_do_not_deadlock(sup: Supervisor):
    code = "import sys\ndef main():\n    for _ in range(10):\n        sys.stdout.write('y' * (1024 * 1024 - 1) + '\\n')\n    return 'done'\n"
    response = await asyncio.wait_for(sup.run(function_request(code)), 60)
    assert response.success and response.json_result == "done"
    assert "bytes of output dropped" in response.stdout  # kept head and tail only


async def test_twenty_jobs_at_once_all_come_back_right(sup: Supervisor):
    code = "import os, time\ndef main(i):\n    time.sleep(0.05)\n    print(f'job {i}')\n    return [i, os.getpid()]\n"
    responses = await asyncio.gather(
        *(sup.run(function_request(code, args=[i])) for i in range(20))
    )
    assert [response.json_result[0] for response in responses] == list(range(20))
    assert len({response.json_result[1] for response in responses}) == 20  # one child each
    # The job's own lines; a line the worker adds (a wait for a job identity, when other
    # supervisors on this machine hold the pool's uids) is not the job's.
    own = [
        "".join(
            line
            for line in (r.stdout or "").splitlines(keepends=True)
            if not line.startswith("[sandvisor] ")
        )
        for r in responses
    ]
    assert own == [f"job {i}\n" for i in range(20)]


async def test_user_code_never_runs_in_the_supervisor(sup: Supervisor):
    response = await sup.run(function_request("import os\ndef main():\n    return os.getpid()\n"))
    assert response.json_result != os.getpid()


async def test_logs_stream_live_with_level_and_time(sup: Supervisor):
    code = "import logging, time\ndef main():\n    logging.warning('first')\n    time.sleep(1)\n    return 1\n"
    started = time.time()
    async for item in sup.stream(function_request(code)):
        assert isinstance(item, LogEvent), item
        # As plain Python writes it: logging.warning() configures the root logger itself.
        assert (item.stream, item.level, item.text) == ("log", "WARNING", "WARNING:root:first\n")
        assert started <= item.ts and time.time() - started < 0.9  # before the job ended
        break


async def test_leaving_a_stream_early_cancels_the_job(sup: Supervisor):
    code = "import os, time\ndef main():\n    print(os.getpid(), flush=True)\n    time.sleep(60)\n"
    async with contextlib.aclosing(sup.stream(function_request(code))) as events:
        async for item in events:
            pid = int(item.text)
            break
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_cancel_by_job_id(sup: Supervisor, tmp_path: Path):
    flag = tmp_path / "working"
    code = "import time\ndef main(flag):\n    print('working', flush=True)\n    open(flag, 'w').close()\n    time.sleep(60)\n"
    request = function_request(code, args=[str(flag)])
    task = asyncio.ensure_future(sup.run(request, job_id="job-to-cancel"))
    assert await eventually(flag.exists, within_s=30)
    assert await sup.cancel("job-to-cancel")
    response = await asyncio.wait_for(task, 10)
    assert response.error_type == ErrorType.CANCELLED
    assert "working" in response.stdout
    assert not await sup.cancel("job-to-cancel")


async def test_a_timeout_kills_the_job_and_says_so(sup: Supervisor):
    code = "import time\ndef main():\n    print('started', flush=True)\n    time.sleep(60)\n"
    response = await sup.run(function_request(code, limits={"timeout_s": 0.5}))
    assert response.error_type == ErrorType.TIMEOUT
    assert response.error.startswith("timed out")
    assert response.stdout == "started\n"


@pytest.mark.parametrize(
    ("code", "error_type", "first_line", "fields"),
    [
        (
            "import ctypes\ndef main():\n    ctypes.string_at(0)\n",
            ErrorType.SIGNAL,
            "killed by SIGSEGV(11) (segmentation fault)",
            {"signal": 11},
        ),
        (
            "import os\ndef main():\n    os._exit(3)\n",
            ErrorType.EXIT,
            "exited with code 3",
            {"exit_code": 3},
        ),
        (
            "import sys\ndef main():\n    sys.exit(0)\n",
            ErrorType.EXIT,
            "exited with code 0",
            {"exit_code": 0},
        ),
        (
            "import os, signal\ndef main():\n    os.kill(os.getpid(), signal.SIGKILL)\n",
            ErrorType.SIGNAL,
            "killed by SIGKILL(9)",
            {"signal": 9},
        ),
    ],
    ids=["segfault", "os-exit", "sys-exit", "sigkill"],
)
async def test_every_exit_is_classified(sup: Supervisor, code, error_type, first_line, fields):
    response = await sup.run(function_request(code))
    assert response.error_type == error_type
    assert response.error.startswith(first_line), response.error
    for name, value in fields.items():
        assert getattr(response, name) == value
    after = await sup.run(function_request("def main():\n    return 'still fine'\n"))
    assert after.json_result == "still fine"


@pytest.mark.parametrize(
    ("request_body", "first_line"),
    [
        ("not an object", "invalid request: expected a JSON object, got str"),
        ({"function_name": 3}, "invalid request: function_name: Input should be a valid string"),
        (
            {"function_code": "def f(): pass"},
            'invalid request: function_name is required when execution_type is "function"',
        ),
        (
            function_request("def main(:\n"),
            "invalid request: syntax error in function_code at line 1: invalid syntax",
        ),
        (
            function_request("def other(): pass\n"),
            "invalid request: function_name 'main' is not defined by function_code (it defines: other)",
        ),
        (
            function_request(
                "def main(x): return x", args=["%%%"], serialization_format="cloudpickle"
            ),
            "invalid request: cannot decode args[0]: invalid base64",
        ),
        (
            function_request(
                "def main(x): return x",
                args=[base64.b64encode(b"junk").decode()],
                serialization_format="cloudpickle",
            ),
            "invalid request: cannot decode args[0]: cannot unpickle",
        ),
        (
            function_request("def main(): pass", modules={"/etc/x.py": ""}),
            "invalid request: modules key '/etc/x.py' is absolute",
        ),
        (
            function_request("def main(): pass", modules={"a/../../x.py": ""}),
            "invalid request: modules key 'a/../../x.py' has '..'",
        ),
        (
            function_request("def main(): pass", modules={"data.txt": ""}),
            "invalid request: modules key 'data.txt' is not a .py file",
        ),
        (
            function_request("def main(): pass", limits={"timeout_s": 10**9}),
            "invalid request: limits.timeout_s",
        ),
        (
            {
                "execution_type": "class",
                "class_name": "C",
                "class_code": "class C: pass",
                "method_name": "nope",
                "serialization_format": "json",
            },
            "invalid request: method_name 'nope' is not a method of class 'C'",
        ),
    ],
    ids=[
        "not-object",
        "wrong-type",
        "no-name",
        "syntax",
        "undefined",
        "bad-base64",
        "bad-pickle",
        "abs-module",
        "dotdot-module",
        "not-py-module",
        "limit-over-ceiling",
        "no-method",
    ],
)
async def test_bad_input_gets_a_one_line_reason_first(sup: Supervisor, request_body, first_line):
    response = await sup.run(request_body)
    assert response.success is False
    assert response.error_type == ErrorType.INVALID_REQUEST, response.error
    assert response.error.startswith(first_line), response.error
    assert "\n" not in first_line


async def test_cloudpickle_results_and_arguments(sup: Supervisor):
    code = "def main(numbers, fn):\n    return {n: fn(n) for n in numbers}\n"
    request = function_request(
        code,
        serialization_format="cloudpickle",
        args=[encode_value({1, 2}), encode_value(lambda n: n * 10)],
    )
    response = await sup.run(request)
    assert decoded(response) == {1: 10, 2: 20}


async def test_results_of_classes_defined_by_the_job_unpickle_here(sup: Supervisor):
    code = (
        "class Point:\n    def __init__(self, x): self.x = x\n\ndef main():\n    return Point(5)\n"
    )
    response = await sup.run(function_request(code, serialization_format="cloudpickle"))
    assert decoded(response).x == 5


async def test_an_unpicklable_result_is_a_clear_failure(sup: Supervisor):
    code = "import threading\ndef main():\n    return threading.Lock()\n"
    response = await sup.run(function_request(code, serialization_format="cloudpickle"))
    assert response.error_type == ErrorType.USER_EXCEPTION
    assert response.error.startswith("result of type lock cannot be serialized: TypeError")


async def test_workdir_is_private_and_removed(sup: Supervisor):
    code = "import os\ndef main():\n    open('scratch.txt', 'w').write('x')\n    return [os.getcwd(), oct(os.stat('.').st_mode & 0o777)]\n"
    response = await sup.run(function_request(code))
    workdir, mode = response.json_result
    assert mode == "0o700"
    assert Path(workdir).parent == sup.settings.jobs_dir
    for _ in range(100):
        if not Path(workdir).exists():
            break
        await asyncio.sleep(0.02)
    assert not Path(workdir).exists()


async def test_timings_are_reported(sup: Supervisor):
    response = await sup.run(function_request("def main(): return 1"))
    assert set(response.timings) >= {"env", "start", "run", "total"}
    assert response.timings["total"] >= response.timings["run"] >= 0
