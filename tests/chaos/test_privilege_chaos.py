"""Hostile jobs against the privilege model: as a job identity, user code cannot read another
process's secrets, signal the worker or another job, write the runtime, the store or the base
env, or read another job's files; what it leaves is still found by its uid; and the worker
answers the next job after each. The real path: these run as root (as CI does), and are skipped
where the supervisor cannot switch identities.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import msgpack
import psutil
import pytest
from tests.chaos.chaos_helpers import HELLO, Baseline, assert_clean
from tests.helpers import class_request, eventually, function_request, make_settings

import sandvisor
from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.privilege import decide

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="job identities need a root supervisor"),
]

CANARY = "sv-canary-" + uuid.uuid4().hex


@pytest.fixture(params=["template", "spawn"])
async def sup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Supervisor]:
    settings = make_settings(
        tmp_path / "home", templates=request.param == "template", watch_interval_s=0.05
    )
    async with Supervisor(settings) as running:
        assert running.privilege.switching, running.privilege.reason
        assert (await running.run(HELLO)).success  # lazily made threads: in the baseline
        yield running


@pytest.fixture
def secret_holder() -> Iterator[subprocess.Popen[bytes]]:
    """A root process with the canary in its environment (as a container's own processes have
    RUNPOD_API_KEY): a job may see that it exists, never what its environment holds."""
    process = subprocess.Popen(["sleep", "300"], env={"RUNPOD_API_KEY": CANARY})
    yield process
    process.kill()
    process.wait()


def run(sup: Supervisor, code: str, *args: Any, **fields: Any) -> asyncio.Future[FunctionResponse]:
    request = function_request(code, args=list(args), **fields)
    return asyncio.ensure_future(asyncio.wait_for(sup.run(request), 60))


# A job that holds processes of its own (one with the canary in its environment), says where
# they and its private dirs are in ``report``, and stays until ``release`` exists.
NEIGHBOUR = """
import json, os, subprocess, time
def main(report, release, canary):
    child = subprocess.Popen(["sleep", "300"], env={"SECRET_OF_B": canary})
    with open(os.path.join(os.getcwd(), "private.txt"), "w") as handle:
        handle.write(canary)
    facts = {"pids": [os.getpid(), child.pid], "cwd": os.getcwd(), "home": os.environ["HOME"],
             "uid": os.getuid()}
    with open(report + ".tmp", "w") as handle:
        json.dump(facts, handle)
    os.rename(report + ".tmp", report)
    while not os.path.exists(release):
        time.sleep(0.01)
    child.kill()
    return "done"
"""


async def neighbour(sup: Supervisor, tmp_path: Path) -> tuple[asyncio.Future[Any], dict[str, Any]]:
    """A concurrent job (see NEIGHBOUR), running, and what it reported."""
    import json

    report, release = tmp_path / "neighbour.json", tmp_path / "release"
    running = run(sup, NEIGHBOUR, str(report), str(release), CANARY)
    assert await eventually(report.exists, within_s=30)
    return running, json.loads(report.read_text())


async def finish(running: asyncio.Future[Any], tmp_path: Path) -> None:
    (tmp_path / "release").touch()
    response = await running
    assert response.success, response.error


def ancestors() -> list[int]:
    """The supervisor and every process above it."""
    found, process = [], psutil.Process()
    while process is not None:
        found.append(process.pid)
        process = process.parent()
    return found


SCANS_ENVIRON = """
import os
def main(canary, others):
    found, readable = [], 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        readable += 1
        if canary.encode() in data:
            found.append(int(name))
    refused = {}
    for pid in others:
        try:
            open(f"/proc/{pid}/environ", "rb").close()
            refused[pid] = False
        except PermissionError:
            refused[pid] = True
    return {"found": found, "readable": readable, "refused": refused}
"""


async def test_no_environ_of_another_process_can_be_read(
    sup: Supervisor, tmp_path: Path, secret_holder: subprocess.Popen[bytes]
) -> None:
    baseline = Baseline.take()
    running, facts = await neighbour(sup, tmp_path)
    templates = [t.pid for t in (sup.templates.running.values() if sup.templates else ())]
    others = [os.getpid(), secret_holder.pid, *templates, *facts["pids"]]
    response = await run(sup, SCANS_ENVIRON, CANARY, others)
    await finish(running, tmp_path)
    assert response.success, response.error
    result = response.json_result
    assert result["found"] == []
    assert result["readable"] >= 1  # its own, at least: the scan did read
    assert all(result["refused"].values()), result["refused"]
    assert (await sup.run(HELLO)).success
    await assert_clean(sup, "none", baseline)


SIGNALS_EVERYONE = """
import os
def main(targets):
    answers = {}
    for pid in targets:
        for signum in (0, 9):
            try:
                os.kill(pid, signum)
                answers[f"{pid}/{signum}"] = "delivered"
            except OSError as exc:
                answers[f"{pid}/{signum}"] = type(exc).__name__
    return answers
"""


async def test_signals_to_ancestors_and_a_concurrent_job_are_refused(
    sup: Supervisor, tmp_path: Path
) -> None:
    running, facts = await neighbour(sup, tmp_path)
    templates = [t.pid for t in (sup.templates.running.values() if sup.templates else ())]
    targets = [*ancestors(), *templates, *facts["pids"]]
    response = await run(sup, SIGNALS_EVERYONE, targets)
    assert response.success, response.error
    answers = response.json_result
    assert set(answers.values()) == {"PermissionError"}, answers
    for pid in targets:
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie", pid
    await finish(running, tmp_path)  # the neighbour ran on, and answers
    assert (await sup.run(HELLO)).success


async def test_a_job_signalling_its_own_parent_is_refused(sup: Supervisor) -> None:
    code = (
        "import os\ndef main():\n    try:\n        os.kill(os.getppid(), 9)\n"
        "    except PermissionError:\n        return 'refused'\n    return 'delivered'\n"
    )
    response = await run(sup, code)
    assert response.success and response.json_result == "refused", response.error
    assert (await sup.run(HELLO)).success


async def test_pkill_of_the_workers_command_line_leaves_it_answering(sup: Supervisor) -> None:
    me = psutil.Process()
    # Restricted to this worker (its session, its children): were the kernel to let the job
    # kill, only this test's processes would go, never another test run on the machine.
    command = " ".join(me.cmdline())[:60]
    code = """
import subprocess
def main(pattern, sid, ppid):
    codes = []
    for extra in (["-s", str(sid)], ["-P", str(ppid)]):
        done = subprocess.run(["pkill", "-9", "-f", pattern] + extra, capture_output=True)
        codes.append(done.returncode)
    done = subprocess.run(["pkill", "-9", "-f", "sandvisor.sandbox_child", "-P", str(ppid)])
    return codes + [done.returncode]
"""
    templates = {t.pid for t in (sup.templates.running.values() if sup.templates else ())}
    response = await run(sup, code, re.escape(command), os.getsid(0), me.pid)
    assert response.success, response.error
    assert psutil.pid_exists(me.pid)
    for pid in templates:  # the templates live on too
        assert psutil.Process(pid).status() != "zombie"
    assert (await sup.run(HELLO)).success


WRITES = """
import os
def main(targets):
    answers = {}
    for target in targets:
        try:
            with open(os.path.join(target, "planted.py"), "w") as handle:
                handle.write("raise SystemExit('planted')")
            answers[target] = "written"
        except OSError as exc:
            answers[target] = type(exc).__name__
    return answers
"""


def runtime_dirs(sup: Supervisor) -> dict[str, str]:
    """Where a planted file would reach every later job: the runtime's module dirs, the base
    env, the standard library, the env store."""
    return {
        "cloudpickle": os.path.dirname(cloudpickle.__file__),
        "msgpack": os.path.dirname(msgpack.__file__),
        "sandvisor": os.path.dirname(sandvisor.__file__),
        "base env": os.path.dirname(os.path.dirname(cloudpickle.__file__)),
        "stdlib": os.path.dirname(os.__file__),
        "env store": str(sup.settings.envs_dir),
        "jobs dir": str(sup.settings.jobs_dir),
        "store": str(sup.settings.home),
    }


async def test_writes_into_the_runtime_the_base_env_and_the_store_fail(sup: Supervisor) -> None:
    targets = runtime_dirs(sup)
    sup.settings.envs_dir.mkdir(parents=True, exist_ok=True)
    response = await run(sup, WRITES, list(targets.values()))
    assert response.success, response.error
    answers = {name: response.json_result[path] for name, path in targets.items()}
    assert set(answers.values()) == {"PermissionError"}, answers
    for path in targets.values():
        assert not os.path.exists(os.path.join(path, "planted.py"))
    assert (await sup.run(HELLO)).success


async def test_a_jobs_own_env_in_the_store_is_read_only(
    sup: Supervisor, offline_index: Path
) -> None:
    code = WRITES.replace("def main(targets):", "import sys\ndef main(targets=None):") + (
        "\ndef own():\n    import tinypkg, sysconfig\n"
        "    return main([sysconfig.get_paths()['purelib'], sys.prefix])\n"
    )
    request = function_request(code, name="own", dependencies=["tinypkg==1.0"])
    response = await asyncio.wait_for(sup.run(request), 120)
    assert response.success, response.error
    assert set(response.json_result.values()) == {"PermissionError"}, response.json_result
    again = function_request(
        "import tinypkg\ndef main():\n    return tinypkg.__version__\n",
        dependencies=["tinypkg==1.0"],
    )
    assert (await sup.run(again)).json_result == "1.0"


READS_NEIGHBOUR = """
import os
def main(cwd, home, jobs_dir):
    answers = {}
    for what, action in [
        ("list cwd", lambda: os.listdir(cwd)),
        ("read file", lambda: open(os.path.join(cwd, "private.txt")).read()),
        ("list home", lambda: os.listdir(home)),
        ("list jobs", lambda: os.listdir(jobs_dir)),
    ]:
        try:
            action()
            answers[what] = "read"
        except OSError as exc:
            answers[what] = type(exc).__name__
    return answers
"""


async def test_two_concurrent_jobs_cannot_read_each_others_dirs(
    sup: Supervisor, tmp_path: Path
) -> None:
    running, facts = await neighbour(sup, tmp_path)
    response = await run(
        sup, READS_NEIGHBOUR, facts["cwd"], facts["home"], str(sup.settings.jobs_dir)
    )
    await finish(running, tmp_path)
    assert response.success, response.error
    assert set(response.json_result.values()) == {"PermissionError"}, response.json_result
    assert (await sup.run(HELLO)).success


UNMARKED_LEFTOVER = """
import os, subprocess, sys
def main():
    # A daemon that takes off every mark but its uid: its own session, no job variable, a
    # name of its own (PR_SET_NAME).
    code = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'stranger'); time.sleep(300)"
    child = subprocess.Popen([sys.executable, "-c", code], env={}, start_new_session=True)
    while open(f"/proc/{child.pid}/comm").read().strip() != "stranger":
        pass
    return [os.getuid(), child.pid]
"""


def processes_of(uid: int) -> list[int]:
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        info = process.info
        if info["uids"] is not None and info["uids"].real == uid and info["status"] != "zombie":
            found.append(process.pid)
    return found


async def test_a_jobs_leftovers_are_found_by_its_uid_and_killed(
    sup: Supervisor, tmp_path: Path
) -> None:
    # A neighbour runs meanwhile, so that the template's strays are not all leftovers: the
    # daemon's uid is what ties it to its job.
    running, facts = await neighbour(sup, tmp_path)
    response = await asyncio.wait_for(sup.run(function_request(UNMARKED_LEFTOVER)), 60)
    assert response.success, response.error
    uid, pid = response.json_result
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert processes_of(uid) == []
    assert all(psutil.pid_exists(pid) for pid in facts["pids"])  # the neighbour's live on
    await finish(running, tmp_path)
    assert (await sup.run(HELLO)).success


async def test_a_uid_returns_to_the_pool_only_after_its_last_process_is_gone(
    tmp_path: Path,
) -> None:
    uid = 20063  # a pool of one: the next job must get it, or wait
    squatter = subprocess.Popen(["sleep", "300"], user=uid, group=20000, extra_groups=[])
    settings = make_settings(tmp_path / "home", job_uids=str(uid))
    try:
        async with Supervisor(settings) as sup:
            code = "import os\ndef main():\n    return os.getuid()\n"
            response = await asyncio.wait_for(sup.run(function_request(code)), 60)
            assert response.success and response.json_result == uid, response.error
            assert squatter.poll() is not None  # killed as a leftover before the job got uid
            assert sup.identities is not None and sup.identities.held == set()
    finally:
        squatter.kill()
        squatter.wait()


async def test_an_actor_holds_its_identity_for_its_life(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", job_uids="20062")
    actor_code = "import os\nclass Keeper:\n    def uid(self):\n        return os.getuid()\n"
    code = "import os\ndef main():\n    return os.getuid()\n"
    async with Supervisor(settings) as sup:
        created = await sup.run(class_request("Keeper", actor_code, "uid", instance_id="k1"))
        assert created.success and created.json_result == 20062, created.error
        assert sup.instances is not None
        async for item in sup.stream(function_request(code)):
            if isinstance(item, FunctionResponse):
                break
            if "waiting for a job identity" in item.text:  # the one uid is the live actor's
                sup.instances._retire(next(iter(sup.instances._all)), "test: make room")
        assert item.success and item.json_result == 20062, item.error
        assert "waiting for a job identity" in (item.stdout or "")


async def test_a_job_uses_devices_tools_and_the_shared_cache_as_its_identity(
    sup: Supervisor,
) -> None:
    code = """
import os, subprocess, tempfile
from multiprocessing import shared_memory
def main():
    block = shared_memory.SharedMemory(create=True, size=4096)
    block.buf[0] = 7
    block.close()
    block.unlink()
    with tempfile.NamedTemporaryFile(dir=os.environ["HOME"]) as handle:
        handle.write(b"x")
    cache = os.path.join(os.environ["HF_HOME"], "hub", f"models--by-{os.getuid()}")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, "blob"), "w") as handle:
        handle.write("weights")
    status = open("/proc/self/status").read()
    return {
        "ls": subprocess.run(["ls", "/"], capture_output=True).returncode,
        "fds": len(os.listdir("/proc/self/fd")) > 2,
        "nnp": "NoNewPrivs:\\t1" in status,
        "groups": os.getgroups(),
        "tmp": tempfile.gettempdir().startswith(os.environ["HOME"]),
        "su": subprocess.run(["su", "-c", "id"], capture_output=True, stdin=subprocess.DEVNULL)
        .returncode,
        "cache_mode": oct(os.stat(cache).st_mode & 0o7777),
    }
"""
    response = await asyncio.wait_for(sup.run(function_request(code)), 60)
    assert response.success, response.error
    result = response.json_result
    assert result["ls"] == 0 and result["fds"] and result["nnp"] and result["tmp"]
    assert result["groups"] == [] and result["su"] != 0
    assert result["cache_mode"] == "0o2775"  # group-writable, and the group stays the jobs'


PIP_INSTALLS = """
import importlib, subprocess, sys
def main(python, wheels):
    done = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--find-links", wheels, "tinypkg==1.0"],
        capture_output=True, text=True,
    )
    if done.returncode:
        return done.stdout + done.stderr
    importlib.invalidate_caches()
    import tinypkg
    return tinypkg.__file__
"""


async def test_pip_install_goes_into_a_place_of_the_jobs_own(
    sup: Supervisor, wheelhouse: Path, tmp_path: Path
) -> None:
    python = str(Path(sys.base_prefix) / "bin" / "python3")
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip(f"{python} has no pip")
    wheels = tmp_path / "wheels"  # where a job identity can read them
    wheels.mkdir(mode=0o755)
    for wheel in wheelhouse.glob("tinypkg-1.0-*.whl"):
        shutil.copy(wheel, wheels)
    request = function_request(PIP_INSTALLS, args=[python, str(wheels)])
    response = await asyncio.wait_for(sup.run(request), 120)
    assert response.success, response.error
    assert "/private/" in response.json_result, response.json_result
    other = function_request(
        "def main():\n    try:\n        import tinypkg\n    except ImportError:\n"
        "        return 'not here'\n    return tinypkg.__file__\n"
    )
    assert (await sup.run(other)).json_result == "not here"


async def test_not_root_runs_jobs_as_itself_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "home")
    privilege = decide(settings, euid=1000)  # as a supervisor that is not root would decide
    code = "import os\ndef main():\n    return [os.getuid(), os.environ['HOME']]\n"
    with caplog.at_level("WARNING"):
        async with Supervisor(settings, privilege=privilege) as sup:
            response = await sup.run(function_request(code))
    assert response.success, response.error
    assert response.json_result[0] == os.getuid()
    said = [record.getMessage() for record in caplog.records if "privilege" in record.getMessage()]
    assert said == ["privilege: not root (uid 1000): jobs run as uid 1000"]


async def test_a_supervisor_that_is_not_root_runs_jobs(tmp_path: Path) -> None:
    """A real supervisor process under a uid of its own: it cannot switch, says so, and runs
    jobs as itself."""
    uid = 20061
    home = tmp_path / "nonroot"
    home.mkdir()
    os.chown(home, uid, 20000)
    script = (
        "import asyncio, logging, os\n"
        "from sandvisor.supervisor.core import Supervisor\n"
        "from sandvisor.supervisor.settings import Settings\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "async def go():\n"
        "    settings = Settings.from_env(environ={}, home=os.environ['H'], gpus='')\n"
        "    async with Supervisor(settings) as sup:\n"
        "        code = 'import os\\ndef main():\\n    return os.getuid()\\n'\n"
        "        r = await sup.run({'function_name': 'main', 'function_code': code,"
        " 'serialization_format': 'json'})\n"
        "        print('uid', r.json_result, r.error)\n"
        "asyncio.run(go())\n"
    )
    env = {"H": str(home), "HOME": str(home), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-c", script],
        user=uid,
        group=20000,
        extra_groups=[],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert f"uid {uid} None" in done.stdout, done.stdout + done.stderr
    assert f"privilege: not root (uid {uid}): jobs run as uid {uid}" in done.stderr
