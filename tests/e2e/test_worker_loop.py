"""runpod-python's real worker loop (``sandvisor serve`` in queue mode) against a fake job API."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tests.e2e.conftest import ServeProcess, processes_matching, request_for, serve_env, wait_until
from tests.e2e.fake_runpod import FakeRunPod

pytestmark = pytest.mark.e2e

CONCURRENCY = 2


class Worker:
    def __init__(self, api: FakeRunPod, server: ServeProcess) -> None:
        self.api = api
        self.server = server


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("worker")
    with FakeRunPod(hold_s=1.0, lifetime_s=300) as api:
        env = serve_env(tmp / "home", SANDVISOR_CONCURRENCY=str(CONCURRENCY)) | api.worker_env()
        server = ServeProcess([], env, tmp / "serve.log")
        try:
            # The first take comes only once the supervisor and its template are warm.
            api.wait_for(lambda: bool(api.takes), 30, "the worker's first job-take")
            yield Worker(api, server)
        finally:
            left = server.stop()
        assert not left, f"processes left behind: {left}"


def test_runs_jobs_at_once(worker: Worker) -> None:
    code = "import time\ndef main():\n    start = time.time()\n    time.sleep(1.0)\n    return [start, time.time()]\n"
    ids = [worker.api.submit(request_for(code)) for _ in range(CONCURRENCY)]
    spans = [worker.api.wait_done(job_id, 30)["output"]["json_result"] for job_id in ids]
    latest_start = max(start for start, _ in spans)
    earliest_end = min(end for _, end in spans)
    assert latest_start < earliest_end, f"the jobs ran one after the other: {spans}"
    assert any(take.batch and take.batch_size == CONCURRENCY for take in worker.api.takes)


def test_no_job_is_lost(worker: Worker) -> None:
    ids = [
        worker.api.submit(request_for("def main(i):\n    return i * i\n", args=[i]))
        for i in range(12)
    ]
    results = [worker.api.wait_done(job_id, 60) for job_id in ids]
    assert [r["output"]["json_result"] for r in results] == [i * i for i in range(12)]
    assert all(len(worker.api.jobs[job_id].taken_at) == 1 for job_id in ids)


def test_live_logs_go_out_as_batched_progress(worker: Worker) -> None:
    code = "import time\ndef main():\n    for i in range(40):\n        print('line', i, flush=True)\n        time.sleep(0.03)\n    return 'ok'\n"
    job_id = worker.api.submit(request_for(code))
    result = worker.api.wait_done(job_id, 30)
    assert result["output"]["stdout"] == "".join(f"line {i}\n" for i in range(40))
    progress = worker.api.jobs[job_id].progress
    assert progress, "no progress update while the job ran"
    # 40 lines over ~1.2 s, at most one update every 0.5 s: a few updates, not one per line.
    running_s = result["output"]["timings"]["run"] / 1000
    assert len(progress) <= running_s / 0.5 + 2, progress
    sent = "".join(record["text"] for update in progress for record in update["logs"])
    assert sent.startswith("line 0\n")


def test_stop_signal_kills_the_job_tree_and_the_worker_goes_on(worker: Worker) -> None:
    marker = "313.37"
    code = (
        "import subprocess, time\n"
        "def main():\n"
        f"    subprocess.Popen(['sleep', '{marker}'])\n"
        "    print('started', flush=True)\n"
        "    time.sleep(300)\n"
    )
    job_id = worker.api.submit(request_for(code))
    worker.api.wait_progress(job_id, 30)  # running, and its first log line went out
    assert processes_matching(marker)
    stopped_at = time.monotonic()
    worker.api.stop(job_id)
    # Grace is 1 s here: SIGTERM, then SIGKILL for whatever is left.
    wait_until(lambda: not processes_matching(marker), 5, "the stopped job's processes to go")
    assert time.monotonic() - stopped_at < 5
    next_id = worker.api.submit(request_for("def main():\n    return 'next'\n"))
    assert worker.api.wait_done(next_id, 30)["output"]["json_result"] == "next"
    assert worker.api.jobs[job_id].result is None  # runpod posts nothing for a stopped job
    assert "Job stopped." in worker.server.log()


def test_a_crashing_job_then_a_normal_one(worker: Worker) -> None:
    crash = "import ctypes\ndef main():\n    print('segfaulting', flush=True)\n    ctypes.string_at(0)\n"
    crashed = worker.api.wait_done(worker.api.submit(request_for(crash)), 30)
    assert "SIGSEGV" in crashed["error"]
    assert crashed["output"]["success"] is False
    assert "segfaulting" in crashed["output"]["stdout"]
    fine = worker.api.wait_done(worker.api.submit(request_for("def main():\n    return 1\n")), 30)
    assert fine["output"] == {"success": True, "json_result": 1, **_extras(fine["output"])}


def _extras(output: dict) -> dict:
    return {key: output[key] for key in ("stdout", "timings") if key in output}


def test_the_worker_pings_with_its_jobs(worker: Worker) -> None:
    wait_until(lambda: len(worker.api.pings) >= 1, 15, "a heartbeat ping")
    assert worker.api.pings[0]["runpod_version"]
