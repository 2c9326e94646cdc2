"""Warm templates: jobs forked from them are isolated, and templates come and go as they should.

Lifecycle: the base template is warm when the supervisor is; other envs get theirs on first use,
keyed by interpreter; the count is bounded (least recently used idle one stops first); a template
that dies is replaced, and a job caught by its death runs again on a fresh spawn, saying so.
No timing is asserted here: ``benchmarks/`` measures, tests check behaviour.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.helpers import function_request, make_settings, process_gone, streamed
from tests.integration.templates_helpers import (
    BASE,
    WHO_AM_I,
    job_children,
    ok,
    pool_of,
    template_of,
    wait_until,
)

from sandvisor.protocol.frames import EndOfStream, encode_frame, read_frame
from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.process import JobPipes
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.templates import TemplateProcess


@pytest.fixture
async def sup(settings: Settings) -> AsyncIterator[Supervisor]:
    async with Supervisor(settings) as running:
        yield running


# -- a forked child is isolated, as a spawned one is -----------------------------------------------


async def test_base_template_is_warm_before_the_first_job(sup: Supervisor) -> None:
    template = template_of(sup)
    assert psutil.Process(template.pid).is_running()
    who = await ok(sup, function_request(WHO_AM_I))
    assert who["forked"] and who["ppid"] == template.pid
    assert pool_of(sup).started == 1


async def test_forked_child_has_its_own_session_and_group(sup: Supervisor) -> None:
    who = await ok(sup, function_request(WHO_AM_I))
    assert who["pgid"] == who["sid"] == who["pid"]
    template = psutil.Process(template_of(sup).pid)
    assert who["sid"] != os.getsid(template.pid) and who["sid"] != os.getsid(0)


async def test_forked_child_gets_the_jobs_scrubbed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "secret-key")
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "secret-token")
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    code = "import os\ndef main():\n    return dict(os.environ)\n"
    async with Supervisor(make_settings(tmp_path / "home")) as sup:
        response = await sup.run(function_request(code), job_id="envjob")
        template_env = psutil.Process(template_of(sup).pid).environ()
    assert response.success, response.error
    env = response.json_result
    assert "RUNPOD_API_KEY" not in env and "SOME_SERVICE_TOKEN" not in env
    assert env["HARMLESS_SETTING"] == "kept"
    assert env["SANDVISOR_JOB_ID"] == "envjob"
    assert env["PYTHONUNBUFFERED"] == "1"
    # The template itself holds no secret and belongs to no job.
    assert "RUNPOD_API_KEY" not in template_env and "SANDVISOR_JOB_ID" not in template_env


async def test_forked_child_works_in_its_private_dir_under_its_limits(
    sup: Supervisor, settings: Settings
) -> None:
    code = textwrap.dedent(
        """
        import os, resource
        def main():
            return {
                "cwd": os.getcwd(),
                "files": os.listdir("."),
                "mode": oct(os.stat(".").st_mode & 0o777),
                "limits": {name: list(resource.getrlimit(getattr(resource, name)))
                           for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_AS")},
                "oom": open("/proc/self/oom_score_adj").read().strip(),
            }
        """
    )
    response = await sup.run(function_request(code), job_id="limitsjob")
    assert response.success, response.error
    result = response.json_result
    cwd = Path(result["cwd"])
    assert cwd.parent == settings.jobs_dir and cwd.name.startswith("limitsjob.")
    # Its own code only: the job's function_code is a real module file in its dir.
    assert result["files"] == ["function_code.py"] and result["mode"] == "0o700"
    expected = Limits.resolve(settings).rlimits()
    for name, pair in expected.items():
        assert result["limits"][name] == list(pair), name
    assert result["oom"] == "1000"
    # The template keeps the limits it started with: what a job sets stays in the job.
    template = psutil.Process(template_of(sup).pid)
    assert template.rlimit(resource.RLIMIT_NOFILE) == resource.getrlimit(resource.RLIMIT_NOFILE)


LEAVE_TRACES = """
import builtins, json, os, sys, types
def main():
    json.LEFT_BY_A_JOB = True
    builtins.LEFT_BY_A_JOB = True
    sys.modules["left_by_a_job"] = types.ModuleType("left_by_a_job")
    sys.path.append("/left/by/a/job")
    os.environ["LEFT_BY_A_JOB"] = "1"
    os.chdir(os.getcwd())
    with open("left_by_a_job.txt", "w") as handle:
        handle.write("x")
    import logging
    logging.getLogger("left").addHandler(logging.NullHandler())
    return os.getpid()
"""

LOOK_FOR_TRACES = """
import builtins, json, logging, os, sys
def main():
    return {
        "module_global": hasattr(json, "LEFT_BY_A_JOB"),
        "builtin": hasattr(builtins, "LEFT_BY_A_JOB"),
        "sys_modules": "left_by_a_job" in sys.modules,
        "sys_path": "/left/by/a/job" in sys.path,
        "env": "LEFT_BY_A_JOB" in os.environ,
        "files": os.listdir("."),
        "logger": bool(logging.getLogger("left").handlers),
        "job_module": "shipped_helper" in sys.modules,
    }
"""


async def test_nothing_of_one_job_is_visible_to_the_next(sup: Supervisor) -> None:
    shipped = {"modules": {"shipped_helper.py": "VALUE = 1\n"}}
    first = function_request("import shipped_helper\n" + LEAVE_TRACES, **shipped)
    for _ in range(3):
        await ok(sup, first)
        traces = await ok(sup, function_request(LOOK_FOR_TRACES))
        assert traces == {
            "module_global": False,
            "builtin": False,
            "sys_modules": False,
            "sys_path": False,
            "env": False,
            "files": ["function_code.py"],  # its own code only
            "logger": False,
            "job_module": False,
        }


async def test_the_template_never_runs_user_code(sup: Supervisor) -> None:
    template = psutil.Process(template_of(sup).pid)
    before = template.memory_info().rss
    await ok(sup, function_request("X = [0] * 10_000_000\ndef main():\n    return len(X)\n"))
    assert template.memory_info().rss < before + 40 * 1024 * 1024  # the 80 MB list was the child's
    # Its jobs are gone, no job state held: its one child is the spare forked for the next job.
    assert [child.pid for child in template.children()] == [template_of(sup).spare]


# -- lifecycle -------------------------------------------------------------------------------------

SLEEPER = """
import os, sys, time
def main():
    print(f"started in {os.getpid()}", flush=True)
    time.sleep(1.0)
    with open(f"/proc/{os.getppid()}/stat") as handle:
        grandparent = int(handle.read().rsplit(")", 1)[1].split()[1])
    return {"pid": os.getpid(), "ppid": os.getppid(), "grandparent": grandparent}
"""


async def test_template_killed_mid_job_the_job_is_retried_on_a_fresh_spawn(
    sup: Supervisor,
) -> None:
    old = template_of(sup)
    events: list[LogEvent] = []
    response: FunctionResponse | None = None
    first_pid = 0
    async for item in sup.stream(function_request(SLEEPER)):
        if isinstance(item, FunctionResponse):
            response = item
            continue
        events.append(item)
        if item.stream == "stdout" and not first_pid:
            first_pid = int(item.text.split()[-1])  # the job is running: kill its template
            os.kill(old.pid, signal.SIGKILL)
    assert response is not None and response.success, response and response.error
    assert response.timings is not None and response.timings["retried"] == 1.0
    said = [e.text for e in events if e.stream == "system"]
    assert len(said) == 1 and "template lost" in said[0] and "fresh interpreter" in said[0]
    assert "[sandvisor] template lost" in (response.stdout or "")
    # The retry was a fresh interpreter, not a fork; the first attempt's child is gone.
    assert response.json_result["pid"] != first_pid
    # A fresh interpreter we spawned, its job in a child of it (sandbox_child/host.py).
    assert response.json_result["grandparent"] == os.getpid() != response.json_result["ppid"]
    await wait_until(lambda: process_gone(first_pid))
    # The next job gets a new template.
    who = await ok(sup, function_request(WHO_AM_I))
    new = template_of(sup)
    assert new.pid != old.pid and who["ppid"] == new.pid and who["forked"]
    assert pool_of(sup).started == 2


WAITS_FOR_FLAG = """
import os, time
def main(flag):
    while not os.path.exists(flag):
        time.sleep(0.01)
    return {"ppid": os.getppid()}
"""


async def test_template_dead_between_jobs_is_restarted_without_a_retry(sup: Supervisor) -> None:
    old = template_of(sup)
    os.kill(old.pid, signal.SIGKILL)
    await wait_until(lambda: not old.alive)
    response = await sup.run(function_request(WHO_AM_I))
    assert response.success, response.error
    assert response.timings is not None and "retried" not in response.timings
    assert response.json_result["ppid"] == template_of(sup).pid != old.pid


async def test_many_jobs_in_flight_when_the_template_dies_all_succeed(sup: Supervisor) -> None:
    template = template_of(sup)
    jobs = [asyncio.ensure_future(sup.run(function_request(SLEEPER))) for _ in range(5)]
    await wait_until(lambda: len(job_children(template)) == 5)
    os.kill(template.pid, signal.SIGKILL)
    responses = await asyncio.gather(*jobs)
    assert all(r.success for r in responses), [r.error for r in responses]
    assert all(r.timings and r.timings["retried"] == 1.0 for r in responses)


async def test_supervisor_exit_stops_the_template_and_its_jobs(settings: Settings) -> None:
    async with Supervisor(settings) as sup:
        template = psutil.Process(template_of(sup).pid)
        never = str(settings.home / "never-created")
        job = asyncio.ensure_future(
            sup.run(function_request(WAITS_FOR_FLAG, kwargs={"flag": never}))
        )
        await wait_until(lambda: len(job_children(template_of(sup))) == 1)
        child = job_children(template_of(sup))[0]
        spare = psutil.Process(template_of(sup).spare)
    assert job.done() and not job.result().success
    assert not template.is_running() and not child.is_running() and not spare.is_running()


# -- one template per env, bounded, least recently used first --------------------------------------


TINY = """
import os, sys, tinypkg
def main():
    return {"version": tinypkg.__version__, "python": sys.executable, "ppid": os.getppid()}
"""


async def test_each_env_gets_its_own_template_and_the_bound_holds(
    tmp_path: Path, offline_index: Path
) -> None:
    settings = make_settings(tmp_path / "home", max_templates=2)
    async with Supervisor(settings) as sup:
        pool = pool_of(sup)
        one = await sup.run(function_request(TINY, dependencies=["tinypkg==1.0"]))
        assert one.success, one.error
        assert one.json_result["version"] == "1.0" and one.json_result["python"] != BASE
        env_one = one.json_result["python"]
        assert pool.running[env_one].pid == one.json_result["ppid"]
        assert one.timings is not None and one.timings["env"] > 0
        assert set(pool.running) == {BASE, env_one}
        # Again: the same template, no new start.
        again = await ok(sup, function_request(TINY, dependencies=["tinypkg==1.0"]))
        assert again["ppid"] == one.json_result["ppid"] and pool.started == 2
        # A third env: the bound is two, so the least recently used (the base) stops.
        two = await ok(sup, function_request(TINY, dependencies=["tinypkg==2.0"]))
        assert two["version"] == "2.0"
        assert set(pool.running) == {env_one, two["python"]}
        # The base template comes back on its next use, and pushes out the oldest again.
        who = await ok(sup, function_request(WHO_AM_I))
        assert who["forked"] and set(pool.running) == {BASE, two["python"]}


async def test_an_env_removed_and_rebuilt_gets_a_new_template(
    tmp_path: Path, offline_index: Path
) -> None:
    async with Supervisor(make_settings(tmp_path / "home")) as sup:
        pool = pool_of(sup)
        request = function_request(TINY, dependencies=["tinypkg==1.0"])
        first = await ok(sup, request)
        stale = pool.running[first["python"]]
        (env,) = sup.envs.list()
        sup.envs.remove(env.key)  # as `sandvisor envs rm` or GC would, between two jobs
        second = await ok(sup, request)  # the same set: rebuilt at the same path
        assert second["python"] == first["python"] and second["version"] == "1.0"
        assert second["ppid"] != first["ppid"]  # forked from a template of the rebuilt env
        assert not stale.alive and not psutil.pid_exists(stale.pid)


async def test_a_template_with_jobs_in_flight_is_never_stopped(
    tmp_path: Path, offline_index: Path
) -> None:
    settings = make_settings(tmp_path / "home", max_templates=1)
    flag = tmp_path / "go"
    async with Supervisor(settings) as sup:
        base = template_of(sup)
        waiting = function_request(WAITS_FOR_FLAG, kwargs={"flag": str(flag)})
        sleeping = asyncio.ensure_future(sup.run(waiting))
        await wait_until(lambda: base.busy)
        other = await ok(sup, function_request(TINY, dependencies=["tinypkg==1.0"]))
        assert base.alive, "the busy base template was stopped"
        flag.touch()
        response = await sleeping
        assert response.success and "retried" not in (response.timings or {})
        assert response.json_result["ppid"] == base.pid
        # Once idle, the next start trims the pool back to its bound.
        await ok(sup, function_request(TINY, dependencies=["tinypkg==2.0"]))
        assert len(pool_of(sup).running) == 1 and other["ppid"] != base.pid


# -- preloads --------------------------------------------------------------------------------------

PROBE = """
import os
with open(os.environ["PRELOAD_RECORD"], "a") as handle:
    handle.write(f"{os.getpid()}\\n")
"""

USES_PROBE = """
import os, sys
def main():
    was_loaded = "sv_preload_probe" in sys.modules
    import sv_preload_probe
    return {"was_loaded": was_loaded, "ppid": os.getppid()}
"""


def write_preload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """Module ``name``, written from ``source``, importable by templates (through PYTHONPATH)."""
    modules = tmp_path / "preloads"
    modules.mkdir(exist_ok=True)
    (modules / f"{name}.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(modules))


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny module on PYTHONPATH that records each import (by pid) in a file."""
    write_preload(tmp_path, monkeypatch, "sv_preload_probe", PROBE)
    record = tmp_path / "imports.txt"
    monkeypatch.setenv("PRELOAD_RECORD", str(record))
    return record


async def test_preload_is_imported_once_in_the_template_not_per_job(
    tmp_path: Path, probe: Path
) -> None:
    settings = Settings.from_env(
        environ={"SANDVISOR_PRELOAD": "sv_preload_probe, no_such_module_anywhere"},
        home=tmp_path / "home",
        gpus="",
    )
    assert settings.preload == ["sv_preload_probe", "no_such_module_anywhere"]
    async with Supervisor(settings) as sup:
        template = template_of(sup)
        assert template.preloaded == ["sv_preload_probe"]  # the missing one is only a warning
        results = [await ok(sup, function_request(USES_PROBE)) for _ in range(3)]
    assert all(r["was_loaded"] and r["ppid"] == template.pid for r in results)
    assert probe.read_text().split() == [str(template.pid)]


async def test_without_preload_each_job_imports_for_itself(
    tmp_path: Path, probe: Path, sup: Supervisor
) -> None:
    results = [await ok(sup, function_request(USES_PROBE)) for _ in range(2)]
    assert not any(r["was_loaded"] for r in results)
    assert len(probe.read_text().split()) == 2


# -- what a job left behind ------------------------------------------------------------------------

LEAVES_A_DETACHED_SLEEPER = """
import subprocess, sys
def main():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             start_new_session=True)
    return child.pid
"""


async def run_on(template: TemplateProcess, code: str, workdir: Path) -> tuple[int, Any]:
    """One job forked straight from ``template`` (no Supervisor): its pid and its result."""
    frame = {
        "t": "job",
        "job_id": workdir.name,
        "request": {"function_name": "main", "function_code": code, "serialization_format": "json"},
        "workdir": str(workdir),
        "env": dict(os.environ),
        "rlimits": {},
    }
    pipes = JobPipes.create()
    try:
        pipes.channel.sendall(encode_frame(frame))
        child = await template.fork(pipes)
        pipes.close_child_ends()
        frames = await asyncio.to_thread(read_frames, pipes.channel.fileno())
        await child.exited
    finally:
        pipes.close()
    result = next(f["fields"]["json_result"] for f in frames if f["t"] == "result")
    return child.pid, result


def read_frames(fd: int) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            frames.append(read_frame(fd))
        except EndOfStream:
            return frames


async def test_template_tells_whether_a_job_left_anything_behind(tmp_path: Path) -> None:
    template = await TemplateProcess.start(BASE, [], dict(os.environ))
    try:
        pid, _ = await run_on(template, "def main():\n    return 1\n", tmp_path / "plain")
        assert template.job_left_nothing(pid)
        pid, stray = await run_on(template, LEAVES_A_DETACHED_SLEEPER, tmp_path / "detached")
        await wait_until(lambda: stray in (template.strays() or []))
        assert not template.job_left_nothing(pid)  # out of its group, but the template's child
        os.kill(stray, signal.SIGKILL)
        await wait_until(lambda: template.strays() == [])  # the template reaps it
        assert template.job_left_nothing(pid)
    finally:
        await template.stop()


async def test_a_preload_that_kills_the_template_costs_jobs_a_fresh_start_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_preload(tmp_path, monkeypatch, "sv_fatal_preload", "import os\nos._exit(3)\n")
    settings = make_settings(tmp_path / "home", preload=["sv_fatal_preload"])
    async with Supervisor(settings) as sup:  # starts, though its base template could not
        pool = pool_of(sup)
        assert pool.running == {} and pool.started == 0
        for attempt in range(2):
            events, response = await streamed(sup, function_request(WHO_AM_I))
            assert response.success, response.error
            assert not response.json_result["forked"]  # a fresh interpreter ran it
            said = " ".join(e.text for e in events if e.stream == "system")
            assert "did not start" in said and "fresh interpreter" in said
            if attempt:  # no second try to start it so soon: straight to a fresh interpreter
                assert "failed to start" in said
        assert pool.started == 0 and pool.running == {}


async def test_a_variable_a_preload_set_in_the_template_is_not_in_the_jobs_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_preload(
        tmp_path, monkeypatch, "sv_env_preload", "import os\nos.environ['SET_BY_PRELOAD'] = '1'\n"
    )
    settings = make_settings(tmp_path / "home", preload=["sv_env_preload"])
    code = "import os, sys\ndef main():\n    return [os.environ.get('SET_BY_PRELOAD'), 'sv_env_preload' in sys.modules]\n"
    async with Supervisor(settings) as sup:
        assert template_of(sup).environ.get("SET_BY_PRELOAD") == "1"
        assert await ok(sup, function_request(code)) == [None, True]


BALLAST_MB = 300
USES_MEMORY = """
import time
def main(megabytes, hold_s):
    own = bytearray(megabytes * 1024 * 1024)  # zero-filled: every page touched
    time.sleep(hold_s)  # sampled while it holds it
    return len(own) // (1024 * 1024)
"""


async def test_a_preload_shared_with_every_job_does_not_count_in_full_against_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template that preloads 300 MB, jobs limited to 256 MB: the shared pages are counted in
    proportion (RSS alone would put every job over the limit), the job's own memory in full."""
    ballast = f"BALLAST = bytearray({BALLAST_MB} * 1024 * 1024)\n"
    write_preload(tmp_path, monkeypatch, "sv_ballast", ballast)
    settings = make_settings(
        tmp_path / "home", preload=["sv_ballast"], watch_interval_s=0.05, memory_mb=4096
    )
    async with Supervisor(settings) as sup:
        assert template_of(sup).preloaded == ["sv_ballast"]
        small = function_request(USES_MEMORY, args=[20, 0.4], limits={"memory_mb": 256})
        assert await ok(sup, small) == 20
        # Held until it is stopped, however slow the watcher's sampling is on a busy machine.
        large = function_request(USES_MEMORY, args=[400, 120], limits={"memory_mb": 256})
        response = await sup.run(large)
        assert response.error_type == "memory_limit", response.error
        assert (response.error or "").startswith("killed: memory ")
