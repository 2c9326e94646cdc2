"""Whether jobs switch identity, what an identity can reach, and doctor's line, from a fake
filesystem table (mode, owner, group per path): no real device or root needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandvisor.supervisor import policy
from sandvisor.supervisor.privilege import (
    READ,
    SEARCH,
    WRITE,
    access_problem,
    decide,
    device_problems,
    doctor_line,
)
from sandvisor.supervisor.settings import Settings

pytestmark = pytest.mark.timeout(30)

JOB_UID, JOB_GID = 20000, 20000


def entry(kind: int, mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


DIR, CHR, REG = stat.S_IFDIR, stat.S_IFCHR, stat.S_IFREG

TABLE: dict[str, os.stat_result] = {
    "/": entry(DIR, 0o755),
    "/dev": entry(DIR, 0o755),
    "/dev/nvidia0": entry(CHR, 0o666),
    "/dev/nvidiactl": entry(CHR, 0o666),
    "/dev/nvidia1": entry(CHR, 0o660, 0, 44),  # the video group's only
    "/dev/nvidia2": entry(CHR, 0o660, 0, JOB_GID),  # the jobs' group's
    "/root": entry(DIR, 0o700),
    "/root/python": entry(DIR, 0o755),
    "/opt": entry(DIR, 0o755),
    "/opt/env": entry(DIR, 0o755),
    "/opt/env/secret": entry(REG, 0o600),
    "/opt/mine": entry(DIR, 0o700, JOB_UID, JOB_GID),
}


def fake_stat(path: str) -> os.stat_result:
    try:
        return TABLE[path]
    except KeyError:
        raise FileNotFoundError(2, "No such file or directory", path) from None


@pytest.mark.parametrize(
    ("path", "want", "blocked_at"),
    [
        ("/opt/env", READ, None),
        ("/opt/env", WRITE, "/opt/env"),
        ("/opt/env/secret", READ, "/opt/env/secret"),
        ("/root/python", READ, "/root"),
        ("/opt/mine", READ | WRITE | SEARCH, None),
        ("/dev/nvidia0", READ | WRITE, None),
        ("/dev/nvidia1", READ | WRITE, "/dev/nvidia1"),
        ("/dev/nvidia2", READ | WRITE, None),
        ("/nowhere", READ, "/nowhere"),
    ],
)
def test_access_problem_names_the_path_that_stops_a_job_identity(
    path: str, want: int, blocked_at: str | None
) -> None:
    problem = access_problem(path, JOB_UID, JOB_GID, want, fake_stat)
    if blocked_at is None:
        assert problem is None
    else:
        assert problem is not None and blocked_at in problem


def test_device_problems_lists_each_device_a_job_cannot_open() -> None:
    devices = ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia1", "/dev/nvidia2"]
    problems = device_problems(devices, JOB_UID, JOB_GID, fake_stat)
    assert len(problems) == 1
    assert "/dev/nvidia1" in problems[0] and "0660" in problems[0] and "0:44" in problems[0]


def settings_at(tmp_path: Path, **fields: object) -> Settings:
    return Settings.from_env(environ={}, home=tmp_path / "home", gpus="", **fields)


def test_not_root_never_switches_and_says_why(tmp_path: Path) -> None:
    privilege = decide(settings_at(tmp_path), euid=1000)
    assert not privilege.switching
    assert "not root (uid 1000)" in privilege.reason


def test_root_with_an_empty_pool_runs_jobs_as_root_and_says_so(tmp_path: Path) -> None:
    privilege = decide(settings_at(tmp_path, job_uids=""), euid=0)
    assert not privilege.switching and "SANDVISOR_JOB_UIDS is empty" in privilege.reason


def test_root_whose_runtime_job_identities_cannot_read_does_not_switch(tmp_path: Path) -> None:
    def closed(path: str) -> os.stat_result:
        found = os.stat(path)
        if path == "/":
            return entry(DIR, 0o700)  # nothing below it can be reached
        return found

    privilege = decide(settings_at(tmp_path), euid=0, stat_fn=closed)
    assert not privilege.switching
    assert "cannot pass /" in privilege.reason


@pytest.mark.parametrize(
    ("euid", "uids", "devices", "status", "words"),
    [
        (0, "20000-20001", ["/dev/nvidia0", "/dev/nvidia2"], "ok", "jobs run as uids"),
        (0, "20000-20001", ["/dev/nvidia0", "/dev/nvidia1"], "FAIL", "/dev/nvidia1"),
        (0, "", [], "warn", "empty"),
        (1000, "20000-20001", ["/dev/nvidia1"], "warn", "not root"),
        (0, "x", [], "FAIL", "SANDVISOR_JOB_UIDS"),
    ],
)
def test_doctor_line(
    tmp_path: Path, euid: int, uids: str, devices: list[str], status: str, words: str
) -> None:
    def stat_fn(path: str) -> os.stat_result:
        return fake_stat(path) if path.startswith("/dev") else os.stat(path)

    settings = settings_at(tmp_path, job_uids=uids)
    found, line = doctor_line(settings, euid=euid, devices=devices, stat_fn=stat_fn)
    assert (found, words in line) == (status, True), line


def test_private_environment_gives_home_tmp_and_a_pip_site_first_on_the_path() -> None:
    env = policy.private_environment(Path("/p/job"), {"PYTHONPATH": "/opt/lib"})
    assert env == {
        "HOME": "/p/job",
        "TMPDIR": "/p/job/tmp",
        "PIP_TARGET": "/p/job/site",
        "PYTHONPATH": "/p/job/site:/opt/lib",
    }
    assert policy.private_environment(Path("/p/j"), {})["PYTHONPATH"] == "/p/j/site"
