"""``sandvisor doctor`` on this machine: every check answers, a broken store fails the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandvisor.cli.main import main


@pytest.fixture(autouse=True)
def private_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SANDVISOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SANDVISOR_GPUS", "")
    monkeypatch.setenv("SANDVISOR_APP_DIR", str(tmp_path / "app"))
    return tmp_path


def test_a_healthy_worker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[1] for line in lines]
    assert names == [
        "python",
        "uv",
        "store",
        "volume",
        "gpus",
        "privilege",
        "confinement",
        "limits",
        "worker",
        "app",
        "test",
    ]
    assert all(line.startswith(("ok", "warn")) for line in lines), lines
    assert "ran in an isolated child" in lines[-1]


def test_an_unwritable_store_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SANDVISOR_HOME", str(blocker / "home"))
    assert main(["doctor", "--no-job"]) == 1
    assert "FAIL  store" in capsys.readouterr().out


def test_a_bad_setting_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDVISOR_TIMEOUT_S", "soon")
    assert main(["doctor"]) == 1
    assert capsys.readouterr().out.startswith("FAIL  settings     invalid SANDVISOR_TIMEOUT_S")


def test_a_pool_of_job_uids_that_cannot_be_read_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDVISOR_JOB_UIDS", "20000-many")
    assert main(["doctor", "--no-job"]) == 1
    assert "FAIL  privilege    SANDVISOR_JOB_UIDS: '20000-many'" in capsys.readouterr().out


def test_the_privilege_line_says_how_jobs_run(capsys: pytest.CaptureFixture[str]) -> None:
    main(["doctor", "--no-job"])
    lines = capsys.readouterr().out.splitlines()
    line = next(line for line in lines if line.split()[1] == "privilege")
    expected = "jobs run as uids 20000-20063" if os.geteuid() == 0 else "not root"
    assert expected in line, line


def test_the_confinement_line_says_where_env_interpreters_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main(["doctor", "--no-job"])
    out = capsys.readouterr().out.splitlines()
    line = next(line for line in out if line.split()[1] == "confinement")
    if os.geteuid() == 0:
        assert line.startswith("ok") and "user namespace as uid 19999" in line, line
        monkeypatch.setenv("SANDVISOR_CONFINE_ENVS", "0")
        main(["doctor", "--no-job"])
        out = capsys.readouterr().out.splitlines()
        line = next(line for line in out if line.split()[1] == "confinement")
        assert line.startswith("warn") and "env interpreters run as root" in line, line
    else:
        assert line.startswith("warn") and "run as the supervisor" in line, line
