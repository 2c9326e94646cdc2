"""The RunPod handler without runpod: the Supervisor on its own thread, called from another loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tests.helpers import function_request, make_settings

from sandvisor.worker import handler as worker
from sandvisor.worker import host as hosting

MARKER = "271.828"


def marked() -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if MARKER in " ".join(p.info["cmdline"] or [])
    ]


async def test_the_handler_answers_the_wire_dict(host: hosting.SupervisorHost) -> None:
    job = {"id": "job-a", "input": function_request("def main(x):\n    return x + 1\n", args=[1])}
    output = await worker.handler(job)
    assert output["success"] is True and output["json_result"] == 2


async def test_a_cancelled_handler_returns_only_once_the_tree_is_gone(
    host: hosting.SupervisorHost,
) -> None:
    code = (
        "import subprocess, time\n"
        "def main():\n"
        f"    subprocess.Popen(['sleep', '{MARKER}'])\n"
        "    time.sleep(300)\n"
    )
    task = asyncio.ensure_future(worker.handler({"id": "job-b", "input": function_request(code)}))
    for _ in range(200):
        if marked():
            break
        await asyncio.sleep(0.05)
    assert marked(), "the job never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not marked()  # gone before the cancel went on, not some time after
    output = await worker.handler(
        {"id": "job-c", "input": function_request("def main():\n    return 1\n")}
    )
    assert output["json_result"] == 1


async def test_a_job_stopped_before_it_began_ends_at_once(host: hosting.SupervisorHost) -> None:
    supervisor = await host.ready()
    request = function_request("def main():\n    return 1\n")
    result, ended = host.spawn(supervisor.run(request))
    result.cancel()
    await asyncio.wait_for(asyncio.wrap_future(ended), 5)
    assert result.cancelled()


async def test_a_supervisor_that_cannot_start_fails_each_job_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    broken = hosting.SupervisorHost(make_settings(blocker / "home"))
    monkeypatch.setattr(hosting, "_host", broken)
    try:
        output = await worker.handler({"id": "x", "input": function_request("def main(): pass\n")})
    finally:
        broken.close()
    assert output["success"] is False
    assert output["error"].startswith("lost: the supervisor failed to start:")


def test_importing_the_handler_does_not_import_runpod() -> None:
    # runpod takes seconds to import: only `sandvisor serve` may pay for it.
    code = "import sys, sandvisor.worker.serve, sandvisor.cli.main as c; c.build_parser()"
    code += "; print('runpod' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
