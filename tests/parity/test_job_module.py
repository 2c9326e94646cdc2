"""The job's code as a real module, forked from a template and spawned: what the table does not
cover (start modes, the CLI, instances across calls, requests refused before they run)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import cloudpickle
import pytest
from tests.helpers import ROOT, class_request, function_request, make_settings
from tests.parity.harness import expected_of, run_baseline, run_sandvisor
from tests.parity.scenarios import ALL

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.core import Supervisor

#: The issue's dataclass job, as the parity table holds it.
DATACLASS_JOB = next(scenario for scenario in ALL if scenario.id == "dataclass_asdict").source


@pytest.fixture(params=["template", "spawn"])
async def sup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Supervisor]:
    settings = make_settings(tmp_path / "home", templates=request.param == "template")
    async with Supervisor(settings) as running:
        yield running


async def test_a_dataclass_job_returns_its_fields(sup: Supervisor):
    response = await sup.run(function_request(DATACLASS_JOB))
    assert response.success, response.error
    assert response.json_result == {"x": 1.5, "y": 2.0}


@pytest.mark.parametrize("templates", [True, False], ids=["template", "spawn"])
async def test_the_job_path_is_its_dir_and_its_environment_not_the_workers_cwd(
    templates: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The worker runs from the repository, whose tests/ is a package a job must not see.
    monkeypatch.chdir(ROOT)
    code = (
        "import os, sys\n"
        "def main():\n"
        "    try:\n"
        "        import tests\n"
        "        found = tests.__file__\n"
        "    except ImportError:\n"
        "        found = None\n"
        "    return {'first': sys.path[0], 'cwd': os.getcwd(), 'path': sys.path, 'tests': found}\n"
    )
    settings = make_settings(tmp_path / "home", templates=templates)
    async with Supervisor(settings) as supervisor:
        response = await supervisor.run(function_request(code))
    assert response.success, response.error
    result = response.json_result
    assert result["tests"] is None
    assert result["first"] == result["cwd"]
    assert str(ROOT) not in result["path"] and "" not in result["path"]


SPAWNED_ROWS = (
    "sys_path_and_cwd_are_the_jobs",
    "name_file_spec_and_sys_modules",
    "mp_spawn_pool_with_job_class",
    "get_type_hints_future_module",
)


@pytest.mark.parametrize("row", SPAWNED_ROWS)
async def test_a_spawned_job_answers_as_plain_python(
    row: str, spawn_supervisor: Supervisor, tmp_path: Path
):
    """The table runs on a template's forks; these rows again on a fresh interpreter's job."""
    scenario = next(scenario for scenario in ALL if scenario.id == row)
    sandvisor, baseline = await asyncio.gather(
        run_sandvisor(spawn_supervisor, scenario), run_baseline(scenario, tmp_path / "python")
    )
    assert sandvisor == expected_of(scenario, baseline)


async def test_a_result_of_a_job_class_reaches_a_caller_without_its_module(supervisor: Supervisor):
    code = DATACLASS_JOB.replace("return asdict(Point(1.5, 2.0))", "return Point(1.5, 2.0)")
    response = await supervisor.run(function_request(code, serialization_format="cloudpickle"))
    assert response.success, response.error
    assert "function_code" not in sys.modules  # pickled by value: nothing to import here
    point = cloudpickle.loads(base64.b64decode(response.result))
    assert (type(point).__module__, type(point).__qualname__) == ("function_code", "Point")
    assert (point.x, point.y) == (1.5, 2.0)


INSTANCE_CODE = """
import copy, pickle, sys
from dataclasses import dataclass

@dataclass
class Entry:
    key: str

class Store:
    def __init__(self):
        self.entries = []

    def add(self, key):
        self.entries.append(Entry(key))
        copied = pickle.loads(pickle.dumps(self.entries))
        return {
            "keys": [entry.key for entry in copy.deepcopy(copied)],
            "module": sys.modules[Entry.__module__].__file__.rsplit("/", 1)[-1],
        }
"""


async def test_an_instance_keeps_its_module_between_calls(supervisor: Supervisor):
    first = class_request("Store", INSTANCE_CODE, "add", "a", instance_id="store-1")
    response = await supervisor.run(first)
    assert response.success, response.error
    again = class_request(
        "Store", INSTANCE_CODE, "add", "b", instance_id="store-1", create_new_instance=False
    )
    response = await supervisor.run(again)
    assert response.success, response.error
    assert response.json_result == {"keys": ["a", "b"], "module": "class_code.py"}


@pytest.mark.parametrize(
    ("class_name", "method", "summary"),
    [
        ("Slow", "missing", "method_name 'missing' is not a method of class 'Slow'"),
        ("HELPER", "__call__", "class_name 'HELPER' is not a class in class_code"),
        ("Slow", "__call__", "method_name '__call__' is not a method of class 'Slow'"),
    ],
    ids=["missing-method", "not-a-class", "not-callable"],
)
async def test_a_bad_class_request_is_refused_before_the_constructor_runs(
    supervisor: Supervisor, tmp_path: Path, class_name: str, method: str, summary: str
):
    marker = tmp_path / "constructed"
    code = (
        f"HELPER = 1\n"
        f"class Slow:\n"
        f"    def __init__(self):\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        f"    def work(self):\n"
        f"        return 1\n"
    )
    response = await supervisor.run(class_request(class_name, code, method))
    assert response.error_type == ErrorType.INVALID_REQUEST
    assert response.error.splitlines()[0] == f"invalid request: {summary}"
    assert not marker.exists()


async def test_a_module_named_as_the_jobs_own_code_is_refused(supervisor: Supervisor):
    for name in ("function_code.py", "function_code/__init__.py"):
        request = function_request(DATACLASS_JOB, modules={name: "X = 1\n"})
        response = await supervisor.run(request)
        assert response.error_type == ErrorType.INVALID_REQUEST, response
        assert f"modules key {name!r} takes the name of the request's own code" in response.error


def test_sandvisor_run_of_a_dataclass_request(tmp_path: Path):
    request_file = tmp_path / "point.json"
    request_file.write_text(json.dumps({"input": function_request(DATACLASS_JOB)}))
    sandvisor = Path(sys.executable).with_name("sandvisor")
    done = subprocess.run(
        [str(sandvisor), "run", str(request_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SANDVISOR_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"x": 1.5, "y": 2.0}
