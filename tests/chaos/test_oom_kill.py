"""A job the kernel's OOM killer ends is told apart from other SIGKILLs, end to end.

The supervisor runs in a memory cgroup of its own, limited far below the job's own memory limit,
so the kernel acts before sandvisor's limits do, as in a container whose memory is smaller than
the machine's. Needs a cgroup memory controller this test may write (cgroup v1, or v2 with the
memory controller delegated to our cgroup): skipped, saying why, where there is none.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_LIMIT_BYTES = 256 * 1024 * 1024
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Runs inside the cgroup: one job that allocates past the cgroup's limit, then one that must
#: still work; prints both responses.
DRIVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from sandvisor.supervisor.core import Supervisor
    from sandvisor.supervisor.settings import Settings

    HOG = '''
    def main():
        chunks = []
        while True:
            chunks.append(bytearray(16 * 1024 * 1024))  # zero-filled: every page is touched
    '''
    HELLO = "def main():\\n    return 'still here'\\n"

    def request(code):
        return {"function_name": "main", "function_code": code, "serialization_format": "json"}

    async def main(home):
        # Job memory limits far above the cgroup's: only the kernel can stop the hog.
        settings = Settings.from_env(environ={}, home=home, gpus="", memory_mb=8192)
        async with Supervisor(settings) as sup:
            hog = await sup.run(request(HOG))
            hello = await sup.run(request(HELLO))
        print(json.dumps([hog.model_dump(mode="json"), hello.model_dump(mode="json")]))

    asyncio.run(main(sys.argv[1]))
    """
)


def _memory_cgroup_parent() -> tuple[Path, str] | None:
    """Our memory cgroup's directory and its version ("v1" or "v2"), if one can be found."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            found = CGROUP_ROOT / "memory" / path.lstrip("/")
            if found.is_dir():
                return found, "v1"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and (CGROUP_ROOT / "cgroup.controllers").exists():
            found = CGROUP_ROOT / path.lstrip("/")
            if "memory" in (found / "cgroup.subtree_control").read_text().split():
                return found, "v2"
    return None


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A new memory cgroup under ours, limited to ``limit_bytes`` with no swap; its procs file."""
    parent = _memory_cgroup_parent()
    if parent is None:
        pytest.skip("no cgroup memory controller to limit a supervisor with")
    directory, version = parent
    cgroup = directory / f"sandvisor-oom-test-{os.getpid()}"
    try:
        cgroup.mkdir()
        if version == "v1":
            (cgroup / "memory.limit_in_bytes").write_text(str(limit_bytes))
            with contextlib.suppress(FileNotFoundError):  # swap accounting is off
                (cgroup / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        else:
            (cgroup / "memory.max").write_text(str(limit_bytes))
            (cgroup / "memory.swap.max").write_text("0")
    except OSError as exc:
        with contextlib.suppress(OSError):
            cgroup.rmdir()
        pytest.skip(f"cannot make a memory cgroup here ({exc})")
    try:
        yield cgroup / "cgroup.procs"
    finally:
        deadline = time.monotonic() + 10
        while True:  # a cgroup is removed once its last process has been reaped
            try:
                cgroup.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.mark.timeout(120)
def test_a_job_the_kernel_oom_kills_is_reported_as_such_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    with memory_cgroup(CGROUP_LIMIT_BYTES) as procs:
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER)
        # The shell joins the cgroup, then becomes the supervisor: everything it starts is in it.
        joined = f'echo $$ > "{procs}" && exec "$@"'
        finished = subprocess.run(
            ["sh", "-c", joined, "sh", sys.executable, str(driver), str(tmp_path / "home")],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert finished.returncode == 0, finished.stderr
    hog, hello = json.loads(finished.stdout.strip().splitlines()[-1])
    assert hog["success"] is False
    assert hog["error_type"] == "memory_limit", hog["error"]
    assert hog["error"].startswith("killed by the kernel's OOM killer (SIGKILL)"), hog["error"]
    assert hog["error"].endswith("the container ran out of memory (its limit is 256 MB)")
    assert hog["signal"] == 9
    assert hello["success"] is True and hello["json_result"] == "still here", hello["error"]
