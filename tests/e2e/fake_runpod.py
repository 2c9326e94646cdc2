"""A small fake of RunPod's job API on 127.0.0.1, for runpod-python's real worker loop.

URL shapes and variables are those runpod-python 1.12 reads (``serverless/modules/rp_job.py``,
``rp_http.py``, ``rp_ping.py``, ``worker_state.py``):

- ``RUNPOD_WEBHOOK_GET_JOB``: ``.../job-take/$ID?gpu=none``; the loop appends
  ``&job_in_progress=0|1``, and at concurrency > 1 uses ``/job-take-batch/`` with
  ``&batch_size=N``. Answers: 200 with ``{"id", "input"}`` (a list for batch), or 204 after
  holding the request open a while, as the real API does.
- the stop channel, derived by replacing ``/job-take/`` with ``/job-stop/``: a long-poll that
  answers ``{"jobsToStop": [ids]}`` or 204.
- ``RUNPOD_WEBHOOK_POST_OUTPUT``: ``.../job-done/$RUNPOD_POD_ID/$ID?gpu=none`` plus
  ``&isStream=...``; the body is JSON sent as form-encoded text. A body with
  ``"status": "IN_PROGRESS"`` is a progress update, anything else the job's final result.
- ``RUNPOD_WEBHOOK_POST_STREAM``: same shape, ``/job-stream/``, for generator handlers.
- ``RUNPOD_WEBHOOK_PING``: ``.../ping/$RUNPOD_POD_ID?gpu=none``; pings are sent only when
  ``RUNPOD_AI_API_KEY`` and ``RUNPOD_POD_ID`` are both set.

Bounded: long-polls are held at most ``hold_s``, the server stops by itself after
``lifetime_s``, and every wait a test makes on it takes a timeout.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ENDPOINT = "fake-endpoint"


class FakeRunPodError(AssertionError):
    """What a test waited for on the fake did not happen in time."""


@dataclass
class FakeJob:
    id: str
    input: Any
    submitted: float
    taken_at: list[float] = field(default_factory=list)
    done_at: float | None = None
    result: dict[str, Any] | None = None
    progress: list[Any] = field(default_factory=list)
    stream: list[Any] = field(default_factory=list)


@dataclass
class Take:
    """One job-take request as the worker sent it."""

    batch: bool
    batch_size: int | None
    job_in_progress: str | None
    answered: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker killed mid-request (the tests do that) resets its connections: not an error.
        pass


class FakeRunPod:
    def __init__(self, *, hold_s: float = 1.0, lifetime_s: float = 120.0) -> None:
        self.hold_s = hold_s
        self.lifetime_s = lifetime_s
        self.jobs: dict[str, FakeJob] = {}
        self.takes: list[Take] = []
        self.pings: list[dict[str, list[str]]] = []
        self._pending: deque[str] = deque()
        self._stops: list[str] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._closed = False
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeRunPod:
        serve = threading.Thread(target=self._server.serve_forever, name="fake-runpod", daemon=True)
        guard = threading.Timer(self.lifetime_s, self.close)
        guard.daemon = True
        self._threads = [serve, guard]
        serve.start()
        guard.start()
        return self

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._threads[1].cancel()

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker_env(self, worker_id: str = "worker-1") -> dict[str, str]:
        """The variables RunPod sets on a worker, pointing at this fake."""
        base = f"{self.url}/v2/{ENDPOINT}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=none",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=none",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=none",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=none",
            "RUNPOD_PING_INTERVAL": "1000",
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_AI_API_KEY": "fake-key",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }

    # -- what a test does ---------------------------------------------------------------------

    def submit(self, job_input: Any) -> str:
        with self._cond:
            job_id = f"job-{next(self._ids)}"
            self.jobs[job_id] = FakeJob(job_id, job_input, time.monotonic())
            self._pending.append(job_id)
            self._cond.notify_all()
        return job_id

    def stop(self, job_id: str) -> None:
        """Queue a stop signal, as the platform does on cancel or timeout."""
        with self._cond:
            self._stops.append(job_id)
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise FakeRunPodError(f"timed out after {timeout}s waiting for {what}")

    def wait_taken(self, job_id: str, timeout: float = 30.0) -> FakeJob:
        job = self.jobs[job_id]
        self.wait_for(lambda: bool(job.taken_at), timeout, f"{job_id} to be taken")
        return job

    def wait_done(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        job = self.jobs[job_id]
        self.wait_for(lambda: job.result is not None, timeout, f"{job_id} to be done")
        assert job.result is not None
        return job.result

    def wait_progress(self, job_id: str, timeout: float = 30.0) -> list[Any]:
        job = self.jobs[job_id]
        self.wait_for(lambda: bool(job.progress), timeout, f"progress of {job_id}")
        return job.progress

    # -- what the worker does -----------------------------------------------------------------

    def take(self, batch_size: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.hold_s
        with self._cond:
            while not self._pending and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = []
            while self._pending and len(taken) < batch_size:
                job = self.jobs[self._pending.popleft()]
                job.taken_at.append(time.monotonic())
                taken.append({"id": job.id, "input": job.input})
            self._cond.notify_all()
            return taken

    def take_stops(self) -> list[str]:
        deadline = time.monotonic() + self.hold_s
        with self._cond:
            while not self._stops and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            stops, self._stops = self._stops, []
            return stops

    def post(self, kind: str, job_id: str, body: Any) -> bool:
        with self._cond:
            job = self.jobs.get(job_id)
            if job is None:
                return False
            if kind == "job-stream":
                job.stream.append(body)
            elif isinstance(body, dict) and body.get("status") == "IN_PROGRESS":
                job.progress.append(body.get("output"))
            else:
                job.result = body
                job.done_at = time.monotonic()
            self._cond.notify_all()
            return True


def _handler_for(api: FakeRunPod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects from the real API
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body until the client's delayed ACK, adding ~40 ms to every answer.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the tests read state, not access logs

        def _reply(self, status: int, payload: Any = None) -> None:
            body = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self) -> tuple[list[str], dict[str, list[str]]]:
            parts = urlsplit(self.path)
            segments = parts.path.strip("/").split("/")
            if len(segments) < 3 or segments[0] != "v2" or segments[1] != ENDPOINT:
                return [], {}
            return segments[2:], parse_qs(parts.query)

        def do_GET(self) -> None:
            segments, query = self._route()
            kind = segments[0] if segments else ""
            if kind in ("job-take", "job-take-batch"):
                self._take(kind == "job-take-batch", query)
            elif kind == "job-stop":
                stops = api.take_stops()
                self._reply(200, {"jobsToStop": stops}) if stops else self._reply(204)
            elif kind == "ping":
                api.pings.append(query)
                self._reply(200, {})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def _take(self, batch: bool, query: dict[str, list[str]]) -> None:
            size = int(query.get("batch_size", ["1"])[0])
            jobs = api.take(size if batch else 1)
            in_progress = query.get("job_in_progress", [None])[0]
            api.takes.append(Take(batch, size if batch else None, in_progress, len(jobs)))
            if not jobs:
                self._reply(204)
            else:
                self._reply(200, jobs if batch else jobs[0])

        def do_POST(self) -> None:
            segments, _query = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if len(segments) != 3 or segments[0] not in ("job-done", "job-stream"):
                self._reply(404, {"error": f"no route {self.path}"})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._reply(400, {"error": "body is not JSON"})
                return
            known = api.post(segments[0], segments[2], body)
            self._reply(200, {}) if known else self._reply(404, {"error": "unknown job"})

    return Handler
