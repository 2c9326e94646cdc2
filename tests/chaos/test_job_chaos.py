"""Hostile jobs, one per way user code can try to take the worker down.

Each costs exactly its own job: the answer names what happened (``error_type``, plus
``exit_code`` or ``signal``), nothing of the job is left running, no zombie remains, the
supervisor's fds and threads are back to where they were, and the next job runs. Both ways of
starting a child are covered: forked from a warm template, and a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.chaos.chaos_helpers import HELLO, Baseline, assert_clean, job_processes
from tests.helpers import eventually, function_request, make_settings, process_gone

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.proctree import job_comm

pytestmark = pytest.mark.chaos


@pytest.fixture(params=["template", "spawn"])
async def sup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Supervisor]:
    settings = make_settings(
        tmp_path / "home", templates=request.param == "template", watch_interval_s=0.05
    )
    async with Supervisor(settings) as running:
        # One job first: lazily made threads (the loop's executor) belong to the baseline.
        assert (await running.run(HELLO)).success
        yield running


def new_id() -> str:
    return uuid.uuid4().hex[:16]


async def run_hostile(
    sup: Supervisor, code: str, limits: dict[str, Any] | None = None, **fields: Any
) -> tuple[FunctionResponse, str, Baseline]:
    baseline = Baseline.take()
    job_id = new_id()
    request = function_request(code, **fields)
    if limits:
        request["limits"] = limits
    response = await asyncio.wait_for(sup.run(request, job_id=job_id), 60)
    return response, job_id, baseline


# Scenarios that need nothing from the outside: code, limits, error_type, words, fields.
SCENARIOS: list[tuple[str, str, dict[str, Any], ErrorType, str, dict[str, int]]] = [
    (
        "segfault",
        "import ctypes\ndef main():\n    ctypes.string_at(0)\n",
        {},
        ErrorType.SIGNAL,
        "killed by SIGSEGV(11) (segmentation fault)",
        {"signal": 11},
    ),
    (
        "os_exit",
        "import os\ndef main():\n    print('bye', flush=True)\n    os._exit(3)\n",
        {},
        ErrorType.EXIT,
        "exited with code 3",
        {"exit_code": 3},
    ),
    (
        "sys_exit_0",
        "import sys\ndef main():\n    sys.exit(0)\n",
        {},
        ErrorType.EXIT,
        "exited with code 0",
        {"exit_code": 0},
    ),
    (
        "endless_loop",
        "def main():\n    while True:\n        pass\n",
        {"timeout_s": 1.0},
        ErrorType.TIMEOUT,
        "timed out",
        {},
    ),
    (
        "cpu_seconds",
        "def main():\n    while True:\n        pass\n",
        {"cpu_s": 1.0},
        ErrorType.CPU_LIMIT,
        "killed: CPU time",
        {"signal": signal.SIGXCPU},
    ),
    (
        "memory_hog",
        "import time\ndef main():\n    hoard = []\n    while True:\n"
        "        hoard.append(bytearray(8_000_000))\n        time.sleep(0.005)\n",
        {"memory_mb": 150},
        ErrorType.MEMORY_LIMIT,
        "killed: memory",
        {},
    ),
    (
        "one_huge_allocation",
        "def main():\n    return len(bytearray(64 * 1024**3))\n",
        {"memory_mb": 150},
        ErrorType.MEMORY_LIMIT,
        "memory: an allocation was refused by the",
        {},
    ),
    (
        "fork_bomb",
        "import os, time\n"
        "def bomb(depth):\n"
        "    for _ in range(3):\n"
        "        if os.fork() == 0:\n"
        "            if depth < 4:\n"
        "                bomb(depth + 1)\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "def main():\n    bomb(0)\n    time.sleep(60)\n",
        {"max_procs": 20},
        ErrorType.PROCESS_LIMIT,
        "over the limit of 20",
        {},
    ),
    (
        "garbage_on_the_protocol_pipe",
        "import os, time\ndef main():\n    os.write(3, b'\\xff' * 64 + b'not msgpack at all')\n"
        "    time.sleep(60)\n",
        {},
        ErrorType.LOST,
        "lost: the job broke its protocol channel",
        {},
    ),
    (
        "every_fd_closed",
        "import os, time\ndef main():\n    os.closerange(0, 4096)\n    return 'unheard'\n",
        {},
        ErrorType.LOST,
        "lost",
        {},
    ),
    (
        "unpicklable_result",
        "import threading\ndef main():\n    return threading.Lock()\n",
        {},
        ErrorType.USER_EXCEPTION,
        "",
        {},
    ),
    (
        "result_over_its_limit",
        "def main():\n    return 'x' * 100_000\n",
        {"max_result_bytes": 1000},
        ErrorType.RESULT_TOO_LARGE,
        "over the 1000-byte limit",
        {},
    ),
    (
        "ignores_sigterm",
        "import signal, time\ndef main():\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    time.sleep(60)\n",
        {"timeout_s": 0.5},
        ErrorType.TIMEOUT,
        "timed out",
        {"signal": 9},
    ),
]


@pytest.mark.parametrize(
    ("code", "limits", "error_type", "words", "fields"),
    [scenario[1:] for scenario in SCENARIOS],
    ids=[scenario[0] for scenario in SCENARIOS],
)
async def test_a_hostile_job_costs_only_itself(
    sup: Supervisor,
    code: str,
    limits: dict[str, Any],
    error_type: ErrorType,
    words: str,
    fields: dict[str, int],
) -> None:
    pickled = error_type is ErrorType.USER_EXCEPTION  # an unpicklable result needs cloudpickle
    extra = {"serialization_format": "cloudpickle"} if pickled else {}
    response, job_id, baseline = await run_hostile(sup, code, limits, **extra)
    assert response.error_type == error_type, response.error
    assert not response.success
    assert words in (response.error or ""), response.error
    for name, value in fields.items():
        assert getattr(response, name) == value, response
    await assert_clean(sup, job_id, baseline)


async def test_output_before_a_crash_is_returned(sup: Supervisor) -> None:
    code = "import os\ndef main():\n    print('last words', flush=True)\n    os._exit(3)\n"
    response, job_id, baseline = await run_hostile(sup, code)
    assert response.error_type == ErrorType.EXIT
    assert "last words" in (response.stdout or "")
    await assert_clean(sup, job_id, baseline)


async def started_job(
    sup: Supervisor, code: str, flag: Path
) -> tuple[asyncio.Future[FunctionResponse], str, Baseline, str]:
    """Start a job that writes ``flag`` (its one argument) once it runs; wait for it to.

    The job's response to come, its id, what ran before it, and what it wrote.
    """
    baseline = Baseline.take()
    job_id = new_id()
    running = asyncio.ensure_future(sup.run(function_request(code, args=[str(flag)]), job_id))
    return running, job_id, baseline, await _file_text(flag)


async def test_sigkill_from_outside_mid_run(sup: Supervisor, tmp_path: Path) -> None:
    flag = tmp_path / "pid"
    code = (
        "import os, time\ndef main(flag):\n    open(flag + '.tmp', 'w').write(str(os.getpid()))\n"
        "    os.rename(flag + '.tmp', flag)\n    time.sleep(60)\n"
    )
    running, job_id, baseline, written = await started_job(sup, code, flag)
    os.kill(int(written), signal.SIGKILL)
    response = await asyncio.wait_for(running, 30)
    assert response.error_type == ErrorType.SIGNAL
    assert response.signal == 9
    assert "killed by SIGKILL(9)" in (response.error or "")
    await assert_clean(sup, job_id, baseline)


async def test_a_detached_grandchild_does_not_outlive_its_job(sup: Supervisor) -> None:
    # One exec'd daemon in its own session, one double-forked Python that never execs.
    code = """
import os, subprocess, time
def main():
    daemon = subprocess.Popen(["sleep", "300"], start_new_session=True)
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            time.sleep(300)
            os._exit(0)
        os.write(write, str(grandchild).encode())
        os._exit(0)
    os.waitpid(middle, 0)
    return [daemon.pid, int(os.read(read, 32))]
"""
    response, job_id, baseline = await run_hostile(sup, code)
    assert response.success, response.error
    for pid in response.json_result:
        assert process_gone(pid), f"detached process {pid} outlived its job"
    await assert_clean(sup, job_id, baseline)


async def test_non_daemon_threads_do_not_keep_a_job_alive(sup: Supervisor) -> None:
    code = """
import threading, time
def main():
    threading.Thread(target=lambda: time.sleep(300), daemon=False).start()
    return 42
"""
    response, job_id, baseline = await run_hostile(sup, code)
    assert response.success, response.error
    assert response.json_result == 42
    await assert_clean(sup, job_id, baseline)


async def test_a_flood_of_output_is_capped_and_stopped(sup: Supervisor) -> None:
    # It tries to write 1 GB; kept output is 64 KB, so it is stopped after 32 MB.
    code = """
import os
def main():
    os.write(1, b"first line\\n")
    chunk = (b"y" * 1023 + b"\\n") * 1024
    for _ in range(1024):
        os.write(1, chunk)
    return "never"
"""
    own = psutil.Process()
    rss_before = own.memory_info().rss
    response, job_id, baseline = await run_hostile(sup, code, {"max_output_bytes": 65536})
    assert response.error_type == ErrorType.OUTPUT_LIMIT, response.error
    stdout = response.stdout or ""
    assert stdout.startswith("first line\n")
    assert "bytes of output dropped" in stdout
    assert len(stdout) < 65536 + 1024
    assert own.memory_info().rss - rss_before < 64 * 1024 * 1024
    await assert_clean(sup, job_id, baseline)


async def test_a_large_output_is_kept_head_and_tail(sup: Supervisor) -> None:
    code = """
import sys
def main():
    print("head marker")
    for index in range(200_000):
        print(f"line {index:06d} " + "z" * 80)
    print("tail marker")
    return "done"
"""
    response, job_id, baseline = await run_hostile(sup, code, {"max_output_bytes": 100_000})
    assert response.success, response.error
    stdout = response.stdout or ""
    assert stdout.startswith("head marker\n") and stdout.endswith("tail marker\n")
    assert "bytes of output dropped" in stdout
    await assert_clean(sup, job_id, baseline)


async def test_cancel_mid_run(sup: Supervisor, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    code = (
        "import subprocess, time\ndef main(flag):\n"
        "    subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "    open(flag, 'w').close()\n    time.sleep(300)\n"
    )
    running, job_id, baseline, _ = await started_job(sup, code, flag)
    assert await sup.cancel(job_id)
    response = await asyncio.wait_for(running, 30)
    assert response.error_type == ErrorType.CANCELLED
    await assert_clean(sup, job_id, baseline)


async def test_asyncio_cancellation_of_run_leaves_nothing(sup: Supervisor, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    code = (
        "import signal, subprocess, time\ndef main(flag):\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "    open(flag, 'w').close()\n    time.sleep(300)\n"
    )
    running, job_id, baseline, _ = await started_job(sup, code, flag)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # The cancelled caller does not wait for the kill; it goes on without it, and the job, which
    # ignores SIGTERM, is gone once the grace period and the SIGKILL after it have passed.
    assert await eventually(
        lambda: all(process_gone(p.pid) for p in job_processes(job_id)),
        within_s=sup.settings.grace_s + 3,
    )
    await assert_clean(sup, job_id, baseline)


SIGNALS_ITS_PARENT = """
import os, signal, time
def main(signum):
    try:
        os.kill(os.getppid(), signum)
    except PermissionError:  # a job identity may not signal its root parent
        return "refused"
    time.sleep(0.5)
    return "after the signal"
"""


async def test_a_job_that_asks_its_parent_to_stop_costs_nothing(sup: Supervisor) -> None:
    # The parent is a template (whose death costs its jobs a retry) or a spawned job's host
    # (which ignores such requests): never the supervisor.
    response, job_id, baseline = await run_hostile(
        sup, SIGNALS_ITS_PARENT, args=[int(signal.SIGTERM)]
    )
    assert response.success, response.error
    refused = sup.privilege.switching
    assert response.json_result == ("refused" if refused else "after the signal")
    assert (await sup.run(HELLO)).success
    await assert_clean(sup, job_id, baseline)


async def test_a_job_that_kills_its_parent_costs_that_job_only(sup: Supervisor) -> None:
    response, job_id, baseline = await run_hostile(
        sup, SIGNALS_ITS_PARENT, args=[int(signal.SIGKILL)]
    )
    if sup.privilege.switching:  # as a job identity it cannot: the kernel refuses
        assert response.success and response.json_result == "refused", response.error
    else:
        # Forked: its template dies, and its retry on a fresh spawn kills that spawn's host.
        # Either way the job has no answer, says so, and the worker goes on.
        assert not response.success
        assert response.error_type in (ErrorType.SIGNAL, ErrorType.LOST), response.error
    assert (await sup.run(HELLO)).success
    await assert_clean(sup, job_id, baseline)


UNMARKED_DAEMONS = """
import subprocess, time
def main(pids_file):
    # Each in a session of its own, with an environment without the job's variable and a name
    # of its own; the second is the child of a first that lives on, in yet another session.
    first = subprocess.Popen(["sleep", "300"], env={}, start_new_session=True)
    nested = subprocess.Popen(
        ["sh", "-c", "setsid sleep 300 & echo $! > " + pids_file + "; exec sleep 300"],
        env={"PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )
    while True:
        try:
            with open(pids_file) as handle:
                grandchild = int(handle.read())
            break
        except (OSError, ValueError):
            time.sleep(0.01)
    return [first.pid, nested.pid, grandchild]
"""


async def test_leftovers_without_any_mark_of_the_job_go_with_it(
    sup: Supervisor, tmp_path: Path
) -> None:
    pids_file = str(tmp_path / "pids")
    response, job_id, baseline = await run_hostile(sup, UNMARKED_DAEMONS, args=[pids_file])
    assert response.success, response.error
    for pid in response.json_result:
        assert process_gone(pid), pid  # gone when run() returned, not later
    await assert_clean(sup, job_id, baseline)


async def test_the_workers_secrets_are_not_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_the_workers_own")
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://api.runpod.ai/v2/x/job-take/$ID?a=1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    code = (
        "import os, subprocess\ndef main():\n"
        "    names = ['RUNPOD_API_KEY', 'RUNPOD_WEBHOOK_GET_JOB', 'AWS_SECRET_ACCESS_KEY']\n"
        "    seen = {name: os.environ.get(name) for name in names}\n"
        "    env = subprocess.run(['env'], capture_output=True, text=True).stdout\n"
        "    return {'seen': seen, 'leaked': 'rpa_the_workers_own' in env}\n"
    )
    for templates in (True, False):
        settings = make_settings(tmp_path / f"home{templates}", templates=templates)
        async with Supervisor(settings) as sup:
            assert (await sup.run(HELLO)).success  # threads made on first use: in the baseline
            response, job_id, baseline = await run_hostile(sup, code)
            assert response.success, response.error
            assert response.json_result == {
                "seen": dict.fromkeys(
                    ["RUNPOD_API_KEY", "RUNPOD_WEBHOOK_GET_JOB", "AWS_SECRET_ACCESS_KEY"]
                ),
                "leaked": False,
            }
            await assert_clean(sup, job_id, baseline)


async def test_the_child_is_confined(sup: Supervisor) -> None:
    code = """
import os, resource
def main():
    with open("/proc/self/oom_score_adj") as handle:
        oom = int(handle.read())
    with open("/proc/self/comm") as handle:
        comm = handle.read().strip()
    limits = {name: list(resource.getrlimit(getattr(resource, name)))
              for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_AS", "RLIMIT_CPU")}
    session = {"sid": os.getsid(0), "pgid": os.getpgid(0), "pid": os.getpid(), "ppid": os.getppid()}
    return {"oom": oom, "comm": comm, "limits": limits, "session": session}
"""
    job_id = new_id()
    limits = {"memory_mb": 256, "cpu_s": 30, "max_open_files": 100}
    response = await sup.run(function_request(code, limits=limits), job_id=job_id)
    assert response.success, response.error
    seen = response.json_result
    assert seen["oom"] == 1000
    assert seen["comm"] == job_comm(job_id)
    # A session and group of its own: led by the job itself when forked, by its host (its
    # parent, which runs none of its code: sandbox_child/host.py) when spawned.
    session = seen["session"]
    assert session["sid"] == session["pgid"] != os.getsid(0)
    assert session["sid"] in (session["pid"], session["ppid"])
    assert seen["limits"]["RLIMIT_CORE"] == [0, 0]
    assert seen["limits"]["RLIMIT_NOFILE"] == [100, 100]
    assert seen["limits"]["RLIMIT_CPU"][0] == 30
    assert seen["limits"]["RLIMIT_AS"][0] >= 256 * 1024 * 1024


async def _file_text(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)
    return path.read_text()


def test_job_processes_helper_finds_nothing_for_an_unknown_job() -> None:
    assert job_processes(new_id()) == []
