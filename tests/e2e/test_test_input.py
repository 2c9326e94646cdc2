"""``sandvisor serve --test_input JSON``: runpod's one-shot local run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.e2e.conftest import MARKER_VAR, SANDVISOR, kill_leftovers, request_for, serve_env

pytestmark = pytest.mark.e2e


def one_shot(tmp_path: Path, job: dict) -> subprocess.CompletedProcess[str]:
    env = serve_env(tmp_path / "home")
    done = subprocess.run(
        [SANDVISOR, "serve", "--test_input", json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    left = kill_leftovers(env[MARKER_VAR])
    assert not left, f"processes left behind: {left}"
    return done


def test_a_good_job_exits_0_with_its_output(tmp_path: Path) -> None:
    code = "def main(name):\n    print('hello', name)\n    return {'greeting': f'hi {name}'}\n"
    done = one_shot(tmp_path, {"input": request_for(code, args=["ada"])})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "'json_result': {'greeting': 'hi ada'}" in done.stdout
    assert "'stdout': 'hello ada\\n'" in done.stdout


def test_a_failing_job_exits_1_with_its_error(tmp_path: Path) -> None:
    code = "def main():\n    raise ValueError('bad input')\n"
    done = one_shot(tmp_path, {"input": request_for(code)})
    assert done.returncode == 1
    assert "ValueError: bad input" in done.stdout
