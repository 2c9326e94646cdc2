"""``sandvisor serve --test_input JSON``: runpod's one-shot local run."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.conftest import one_shot, request_for

pytestmark = pytest.mark.e2e


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
