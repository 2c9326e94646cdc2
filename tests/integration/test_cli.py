"""`sandvisor run` as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import EXAMPLES, function_request

SANDVISOR = str(Path(sys.executable).with_name("sandvisor"))


def run_cli(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDVISOR_HOME": str(home)}
    return subprocess.run(
        [SANDVISOR, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env
    )


def test_hello_prints_logs_on_stderr_and_the_result_on_stdout(tmp_path: Path):
    done = run_cli("run", str(EXAMPLES / "hello.json"), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["greeting"] == "hello, sandvisor"
    lines = done.stderr.splitlines()
    assert any(line.endswith("hello, sandvisor, from pid " + line.split()[-1]) for line in lines)
    assert any(" INFO " in f" {line} " and line.endswith("greeted sandvisor") for line in lines)
    assert "\033[" not in done.stderr  # piped: no color


def test_json_prints_the_whole_response(tmp_path: Path):
    done = run_cli("run", str(EXAMPLES / "class_call.json"), "--json", home=tmp_path)
    response = json.loads(done.stdout)
    assert response["success"] is True and response["json_result"] == 42
    assert "counter is now 42" in response["stdout"]


def test_a_bare_request_from_stdin_and_a_repr_result(tmp_path: Path):
    request = function_request(
        "def main():\n    return {1, 2}\n", serialization_format="cloudpickle"
    )
    done = run_cli("run", "-", stdin=json.dumps(request), home=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "{1, 2}"


def test_a_failed_job_exits_1_with_the_reason_first(tmp_path: Path):
    done = run_cli("run", str(EXAMPLES / "failing" / "raising.json"), home=tmp_path)
    assert done.returncode == 1
    assert "sandvisor run: job failed: ZeroDivisionError: division by zero" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ("[1, 2]", "must hold a JSON object, not array"),
    ],
)
def test_unreadable_input_exits_2_without_a_traceback(tmp_path: Path, content, message):
    path = tmp_path / "request.json"
    if content is not None:
        path.write_text(content)
    done = run_cli("run", str(path), home=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_an_invalid_request_is_a_failed_job_without_a_sandvisor_traceback(tmp_path: Path):
    done = run_cli("run", "-", stdin='{"input": {"function_name": 5}}', home=tmp_path)
    assert done.returncode == 1
    assert "invalid request: function_name: Input should be a valid string" in done.stderr
    assert "sandvisor/" not in done.stderr


def test_bad_usage_exits_2(tmp_path: Path):
    assert run_cli("run", home=tmp_path).returncode == 2
    assert run_cli("frobnicate", home=tmp_path).returncode == 2


def test_help_imports_nothing_heavy():
    probe = (
        "import sys, contextlib, io\n"
        "from sandvisor.cli import main as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = {'pydantic', 'runpod', 'cloudpickle', 'psutil', 'asyncio'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_color_marks_time_stream_and_level_as_on_a_terminal(tmp_path: Path):
    done = run_cli("run", str(EXAMPLES / "hello.json"), "--color", "always", home=tmp_path)
    assert done.returncode == 0, done.stderr
    info = next(line for line in done.stderr.splitlines() if line.endswith("greeted sandvisor"))
    assert "\033[32mINFO" in info  # the level, in its color
    assert info.startswith("\033[2m") and "\033[0m" in info  # the time, dimmed
    assert any(
        "stdout" in line and line.endswith("and from a subprocess")
        for line in done.stderr.splitlines()
    )
