"""A job identity's next holder finds nothing of the last one's in the machine's shared places:
owner-only files in /dev/shm and /tmp and SysV shared memory are removed when the uid goes back
to the pool (``supervisor/shared_sweep.py``). Runs as root, where identities are switched."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from tests.helpers import function_request, make_settings

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.shared_sweep import sweep_uids

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="job identities need a root supervisor"),
]

LEAVES = """
import ctypes, os
def main(tag):
    uid = os.getuid()
    paths = [f"/dev/shm/sv-leak-{tag}", f"/tmp/sv-leak-{tag}", f"/tmp/sv-leakdir-{tag}/secret"]
    os.mkdir(f"/tmp/sv-leakdir-{tag}", 0o700)
    for path in paths:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"tenant-A-secret")
        os.close(fd)
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(0, 4096, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
    assert shmid >= 0, ctypes.get_errno()
    return {"uid": uid, "paths": paths, "shmid": shmid}
"""

FINDS = """
import os
def main(paths, shmid):
    found = [path for path in paths if os.path.lexists(path)]
    with open("/proc/sysvipc/shm") as listing:
        ids = [int(row.split()[1]) for row in listing.read().splitlines()[1:]]
    return {"uid": os.getuid(), "found": found, "shm": shmid in ids}
"""


async def test_the_next_holder_of_a_uid_finds_nothing_the_last_one_left(tmp_path: Path) -> None:
    uid = 20060  # a pool of one: the second job gets the first one's uid
    settings = make_settings(tmp_path / "home", job_uids=str(uid))
    tag = os.urandom(6).hex()
    paths = [f"/dev/shm/sv-leak-{tag}", f"/tmp/sv-leak-{tag}", f"/tmp/sv-leakdir-{tag}"]
    try:
        async with Supervisor(settings) as sup:
            left = await asyncio.wait_for(sup.run(function_request(LEAVES, args=[tag])), 60)
            assert left.success, left.error
            assert left.json_result["uid"] == uid
            request = function_request(
                FINDS, args=[left.json_result["paths"], left.json_result["shmid"]]
            )
            found = await asyncio.wait_for(sup.run(request), 60)
            assert found.success, found.error
            assert found.json_result == {"uid": uid, "found": [], "shm": False}
    finally:  # should the sweep have missed them
        for path in paths:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
        sweep_uids([uid], places=())  # its SysV IPC
