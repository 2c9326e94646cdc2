"""A job that wears another job's marks: it names its own orphan with a concurrent job's process
name (``PR_SET_NAME`` needs no privilege, and names are world-readable) and gives it that job's
``SANDVISOR_JOB_ID``. With job identities the uid is the only mark that counts, so the victim's
limits never see the orphan, the victim's end never signals it, and it still goes with the
attacker's own job. The real path: these run as root, and are skipped where the supervisor
cannot switch identities.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.chaos.chaos_helpers import HELLO
from tests.helpers import eventually, function_request

from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.proctree import JOB_ENV_VAR, TreeSample, job_comm
from sandvisor.supervisor.watchdog import Breach, Watchdog

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="job identities need a root supervisor"),
]

# Waits for ``release`` (bounded): a job that only holds its limits and its marks.
VICTIM = """
import os, time
def main(release):
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"
"""

# Forks a detached orphan (setsid, double fork: adopted by the template or the host) that takes
# the victim's name (or, for "environ", execs with only the victim's job variable), hogs
# ``kind``, then reports its pid and the attacker's uid in ``report`` and stays. The attacker itself stays until ``release`` exists (bounded).
ATTACKER = r"""
import ctypes, json, os, sys, time
def main(comm, env_var, victim_id, kind, report, release):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if kind == "environ":  # an exec'd process whose environment names the victim
                code = (
                    "import json, os, sys, time\n"
                    "with open(sys.argv[1] + '.tmp', 'w') as handle:\n"
                    "    json.dump({'pid': os.getpid(), 'uid': os.getuid()}, handle)\n"
                    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
                    "time.sleep(120)\n"
                )
                os.execve(sys.executable, [sys.executable, "-c", code, report], {env_var: victim_id})
            ctypes.CDLL(None).prctl(15, comm.encode(), 0, 0, 0)
            if kind == "memory":
                hog = bytearray(300 << 20)
                for i in range(0, len(hog), 4096):
                    hog[i] = 1
            elif kind == "procs":
                for _ in range(8):
                    if os.fork() == 0:
                        time.sleep(120)
                        os._exit(0)
            elif kind == "cpu":
                spent = time.process_time() + 2.5
                while time.process_time() < spent:
                    pass
            with open(report + ".tmp", "w") as handle:
                json.dump({"pid": os.getpid(), "uid": os.getuid()}, handle)
            os.rename(report + ".tmp", report)
            time.sleep(120)
            os._exit(0)
        os._exit(0)
    os.wait()
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "attacked"
"""

#: Limits of the victim, per row: each is crossed by what the attacker's orphan holds.
VICTIM_LIMITS: dict[str, dict[str, Any]] = {
    "memory": {"memory_mb": 200},
    "procs": {"max_procs": 4},
    "cpu": {"cpu_s": 1.0},
    "end": {},
    "environ": {},
}


@pytest.fixture
def samples(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, TreeSample]]:
    """Every watchdog sample taken from here on, with its job's id."""
    taken: list[tuple[str, TreeSample]] = []
    original = Watchdog.check

    def check(self: Watchdog, sample: TreeSample | None = None) -> Breach | None:
        if sample is None:
            sample = self.tree.sample()
        taken.append((self.tree.job_id, sample))
        return original(self, sample)

    monkeypatch.setattr(Watchdog, "check", check)
    return taken


def processes_of(uid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        info = process.info
        if info["uids"] is not None and info["uids"].real == uid and info["status"] != "zombie":
            found.append(process)
    return found


@pytest.fixture
def attacker_uids() -> Iterator[list[int]]:
    """Uids whose processes the test kills on the way out, should the supervisor not have."""
    uids: list[int] = []
    yield uids
    for uid in uids:
        for process in processes_of(uid):
            process.kill()


def start(
    sup: Supervisor, code: str, job_id: str, *args: Any, **fields: Any
) -> asyncio.Future[Any]:
    request = function_request(code, args=list(args), **fields)
    return asyncio.ensure_future(asyncio.wait_for(sup.run(request, job_id=job_id), 60))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("kind", list(VICTIM_LIMITS))
async def test_a_job_wearing_another_jobs_marks_touches_only_itself(
    identity_sup: Supervisor,
    tmp_path: Path,
    kind: str,
    samples: list[tuple[str, TreeSample]],
    attacker_uids: list[int],
) -> None:
    sup = identity_sup
    victim_id, attacker_id = f"victim-{uuid.uuid4().hex}", f"attacker-{uuid.uuid4().hex}"
    report = tmp_path / "orphan.json"
    victim_release, attacker_release = tmp_path / "victim-go", tmp_path / "attacker-go"
    limits = {"timeout_s": 60, **VICTIM_LIMITS[kind]}
    victim = start(sup, VICTIM, victim_id, str(victim_release), limits=limits)
    assert await eventually(lambda: any(job == victim_id for job, _ in samples), within_s=30)
    attacker = start(
        sup,
        ATTACKER,
        attacker_id,
        job_comm(victim_id),
        JOB_ENV_VAR,
        victim_id,
        kind,
        str(report),
        str(attacker_release),
    )
    try:
        assert await eventually(report.exists, within_s=30)
        orphan = json.loads(report.read_text())
        attacker_uids.append(orphan["uid"])
        marked = psutil.Process(orphan["pid"])
        assert marked.name() == job_comm(victim_id) or marked.environ() == {JOB_ENV_VAR: victim_id}
        # The victim's watchdog looks at the tree a few times while the orphan holds its hog.
        seen = len(samples)
        victim_samples = lambda: [s for job, s in samples[seen:] if job == victim_id]  # noqa: E731
        assert await eventually(lambda: len(victim_samples()) >= 3, within_s=30)
        assert all(orphan["pid"] not in sample.pids for sample in victim_samples())
        victim_release.touch()
        response: FunctionResponse = await victim
        assert response.success and response.json_result == "done", response.error
        assert alive(orphan["pid"])  # the victim's end did not signal the attacker's process
    finally:
        attacker_release.touch()
        answer: FunctionResponse = await attacker
    assert answer.success and answer.json_result == "attacked", answer.error
    # Ended with its own job: nothing of the attacker's uid is left.
    assert not alive(orphan["pid"])
    assert processes_of(orphan["uid"]) == []
    assert (await sup.run(HELLO)).success
