"""What a job id names: the cancel registry's entry, its processes' marks, its working dir.

A second job with the id of a running one is refused as an invalid request, and the running one
is unaffected (its working dir, its entry for cancel); a later job may reuse the id of one that
ended, and gets a working dir of its own even while the earlier one's is still being removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.helpers import class_request, function_request

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor

# Says it runs, waits for the test's go (a file), then shows that its dir and module are intact.
WAITS = """
import os, time
def main(go):
    print("started", flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    import mine
    return [os.getcwd(), mine.X]
"""
WAITS_CLASS = WAITS + "class Waiter:\n    def wait(self, go):\n        return main(go)\n"


def waiting_request(kind: str, go: Path) -> dict[str, Any]:
    modules = {"mine.py": "X = 7\n"}
    if kind == "function":
        return function_request(WAITS, args=[str(go)], modules=modules)
    return class_request("Waiter", WAITS_CLASS, "wait", str(go), modules=modules)


@pytest.mark.parametrize("kind", ["function", "class"])
async def test_a_duplicate_of_a_running_id_is_refused_and_the_first_is_unaffected(
    supervisor: Supervisor, tmp_path: Path, kind: str
) -> None:
    go = tmp_path / "go"
    first: FunctionResponse | None = None
    async for item in supervisor.stream(waiting_request(kind, go), job_id="same"):
        if isinstance(item, FunctionResponse):
            first = item
        elif "started" in item.text:
            second = await supervisor.run(function_request("def main():\n    return 1\n"), "same")
            assert second.error_type is ErrorType.INVALID_REQUEST
            assert (second.error or "").startswith("invalid request: job id 'same' is already")
            assert supervisor.running_jobs == ["same"]  # still the first's, for cancel
            go.touch()
    assert first is not None and first.success, first and first.error
    workdir, value = first.json_result
    assert value == 7
    assert Path(workdir).parent == supervisor.settings.jobs_dir


async def test_an_id_is_free_again_once_its_job_ended_with_a_dir_of_its_own(
    supervisor: Supervisor,
) -> None:
    code = "import os\ndef main():\n    return os.getcwd()\n"
    earlier = await supervisor.run(function_request(code), job_id="again")
    later = await supervisor.run(function_request(code), job_id="again")
    assert earlier.success and later.success, (earlier.error, later.error)
    # The earlier dir may still be queued for removal: the later job must not be in it.
    assert earlier.json_result != later.json_result
    assert {Path(earlier.json_result).parent, Path(later.json_result).parent} == {
        supervisor.settings.jobs_dir
    }
