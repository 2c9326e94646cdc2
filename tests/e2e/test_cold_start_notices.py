"""A cold start says what it does through RunPod's own progress updates: runpod-python's real
worker loop (``sandvisor serve`` in queue mode) against a fake job API, a job whose env must be
built from an index that holds its wheel back until the test has seen the notice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import ServeProcess, request_for, serve_env
from tests.e2e.fake_runpod import FakeRunPod
from tests.integration.envs_helpers import StallingIndex
from tests.wheelhouse import uv_sources

pytestmark = pytest.mark.e2e


def progress_text(updates: list[Any]) -> str:
    return "".join(record["text"] for update in updates for record in update.get("logs", []))


def test_an_env_build_is_said_in_progress_updates(tmp_path: Path, wheelhouse: Path) -> None:
    with (
        StallingIndex(wheelhouse).running() as index,
        FakeRunPod(hold_s=1.0, lifetime_s=120) as api,
    ):
        env = serve_env(
            tmp_path / "home",
            SANDVISOR_WAIT_NOTICE_INTERVAL_S="0.2",
            SANDVISOR_PROGRESS_INTERVAL_S="0.1",
            **uv_sources(index.url),
        )
        server = ServeProcess([], env | api.worker_env(), tmp_path / "serve.log")
        try:
            job_id = api.submit(
                request_for("def main():\n    return 1\n", dependencies=["tinypkg"])
            )
            api.wait_for(
                lambda: (
                    "still installing dependencies (" in progress_text(api.jobs[job_id].progress)
                ),
                60,
                "a wait notice in the job's progress updates",
            )
            index.release()
            result = api.wait_done(job_id, 60)
        finally:
            left = server.stop()
    assert not left, f"processes left behind: {left}"
    assert result["output"]["success"], result
    said = progress_text(api.jobs[job_id].progress)
    assert "building environment" in said  # the build's own first line went out live too
    assert "still installing dependencies (" in result["output"]["stdout"]
