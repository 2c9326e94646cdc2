"""Code from a package a request named runs in its env's interpreters before any job's uid
switch: a ``.pth`` at every start of its template (or of a spawned job's host), its module when
the template learned to preload it. Hostile such code must find those interpreters confined
(``supervisor/confinement.py``): it cannot read the worker's environment, signal it, or write
the runtime or the env store. So must a module a job planted in the worker's cwd, which no
template may import. These run as root (as CI does): the real path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import function_request, make_settings
from tests.wheelhouse import build_wheel

import sandvisor
from sandvisor.supervisor.confinement import Confinement
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.privilege import decide

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="confinement is for a root supervisor"),
]

#: What hostile code tries; each attempt's outcome is one field of a report line (JSON).
PROBE = """
import json, os

def probe(where):
    report = {{"where": where, "uid": os.getuid(), "pid": os.getpid()}}
    def attempt(name, action):
        try:
            action()
            report[name] = "done"
        except OSError:
            report[name] = "denied"
    attempt("environ", lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read())
    attempt("signal", lambda: os.kill(os.getppid(), 0))
    attempt("runtime", lambda: open({runtime!r} + "/sv-probe-wrote", "w").close())
    attempt("store", lambda: open({store!r} + "/sv-probe-wrote", "w").close())
    with open(f"{{{report!r}}}/{{os.getpid()}}-{{where}}.json", "w") as out:
        out.write(json.dumps(report))
"""

DENIED = {"environ": "denied", "signal": "denied", "runtime": "denied", "store": "denied"}

USES_PROBE = "import svprobe_auto, os\ndef main():\n    return os.getuid()\n"


def reports(directory: Path) -> list[dict[str, Any]]:
    """Every probe's report: one file per process and probe (no file is shared between uids)."""
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


@pytest.fixture
def hostile_env(
    tmp_path: Path, offline_uv: Callable[[Path | str], None]
) -> Iterator[tuple[Path, Path]]:
    """A wheelhouse with ``svprobe`` (a ``.pth`` that probes at every interpreter start) and
    ``svprobe-auto`` (a module that probes when imported); the home and the reports dir."""
    home, report = tmp_path / "home", tmp_path / "reports"
    report.mkdir()
    report.chmod(0o777)  # every uid writes its own file here
    code = PROBE.format(
        runtime=os.path.dirname(str(sandvisor.__file__)),
        store=str(make_settings(home).envs_dir),
        report=str(report),
    )
    wheels = tmp_path / "wheels"
    build_wheel(
        wheels,
        "svprobe",
        "1.0",
        code=code,
        extra={"zz_svprobe.pth": "import svprobe; svprobe.probe('pth')\n"},
    )
    build_wheel(
        wheels,
        "svprobe-auto",
        "1.0",
        code="import svprobe\nsvprobe.probe('import')\n",
        requires=["svprobe"],
    )
    offline_uv(wheels)
    yield home, report
    # A probe that got through (a failing run) wrote into the runtime: leave it as it was.
    (Path(os.path.dirname(str(sandvisor.__file__))) / "sv-probe-wrote").unlink(missing_ok=True)


def assert_confined(lines: list[dict[str, Any]], where: str) -> None:
    """The interpreters (uid 0 inside their namespace) ran the probe at ``where``; every
    attempt of every line, theirs and the jobs', was denied."""
    ran = [line for line in lines if line["where"] == where and line["uid"] == 0]
    assert ran, f"no env interpreter ran the {where} probe: {lines}"
    for line in lines:
        assert {key: line[key] for key in DENIED} == DENIED, line


@pytest.mark.parametrize(
    ("settings", "jobs", "where"),
    [
        pytest.param({"templates": True}, 1, "pth", id="pth-in-the-template"),
        pytest.param({"templates": False}, 1, "pth", id="pth-in-a-spawned-host"),
        pytest.param(
            {"templates": True, "adaptive_preload": True, "preload_learn_after": 2},
            3,
            "import",
            id="module-learned-as-a-preload",
        ),
    ],
)
async def test_a_dependency_runs_confined_in_its_env_interpreters(
    hostile_env: tuple[Path, Path], settings: dict[str, Any], jobs: int, where: str
) -> None:
    home, report = hostile_env
    async with Supervisor(make_settings(home, **settings)) as sup:
        assert isinstance(sup.confinement, Confinement)
        for _ in range(jobs):
            response = await sup.run(function_request(USES_PROBE, dependencies=["svprobe-auto"]))
            assert response.success, response.error
            assert response.json_result in sup.privilege.uids
        if sup.templates is not None:
            await sup.templates.trials.settled()
            if where == "import":  # the learned module is imported by the template from now on
                response = await sup.run(
                    function_request(USES_PROBE, dependencies=["svprobe-auto"])
                )
                assert response.success, response.error
    assert_confined(reports(report), where)


PLANTS = """
import os, sys
def main(cwd, report):
    with open(os.path.join(cwd, "svplanted.py"), "w") as module:
        module.write(f"import os\\nopen({report!r}, 'a').write(f'{{os.getuid()}}\\\\n')\\n")
    sys.path.insert(0, cwd)
    import svplanted
    return os.getuid()
"""


async def test_no_template_imports_what_a_job_planted_in_the_worker_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, report = tmp_path / "cwd", tmp_path / "planted.txt"
    cwd.mkdir(mode=0o777)
    cwd.chmod(0o1777)
    monkeypatch.chdir(cwd)
    settings = make_settings(tmp_path / "home", adaptive_preload=True, preload_learn_after=2)
    async with Supervisor(settings) as sup:
        for _ in range(3):
            response = await sup.run(function_request(PLANTS, args=[str(cwd), str(report)]))
            assert response.success, response.error
        assert sup.templates is not None
        await sup.templates.trials.settled()
        uids = {int(line) for line in report.read_text().split()}
    # Only jobs, each as its own identity, ever imported it.
    assert uids and uids <= set(sup.privilege.uids), uids


def test_the_namespace_maps_no_host_root() -> None:
    privilege = decide(make_settings(Path("/nonexistent")))
    confinement = Confinement(19999, 19999, (20000, 20001, 20002, 20010), 20000)
    assert confinement.uid_map() == "0 19999 1\n20000 20000 3\n20010 20010 1\n"
    assert confinement.gid_map() == "0 19999 1\n20000 20000 1\n"
    assert " 0 " not in confinement.uid_map().replace("0 19999", "")
    assert privilege.gid == 20000
