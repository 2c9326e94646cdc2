"""HTTP servers inside a test's event loop: uvicorn on 127.0.0.1, and fakes of RunPod's
State Manager and of a second Flash endpoint that speak the real protocol.

``serving(app)`` binds a free port itself (no race for the port), serves until the block ends,
then stops uvicorn and waits for its lifespan to finish, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from tests.helpers import eventually


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        assert await eventually(lambda: server.started or task.done(), 30), "uvicorn did not start"
        if task.done():
            task.result()  # its error
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)
        sock.close()


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port bound and closed at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class FakeStateManager:
    """RunPod's GraphQL API as runpod-flash's StateManagerClient uses it: the environment's
    active build, then the build's manifest (with ``resources_endpoints``)."""

    manifest: dict[str, Any]
    environment_id: str = "env-1"
    build_id: str = "build-1"
    failing: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/graphql")
        async def graphql(request: Request) -> JSONResponse:
            body = await request.json()
            self.calls.append(body)
            self.authorizations.append(request.headers.get("authorization", ""))
            if self.failing:
                return JSONResponse({"errors": [{"message": "internal error"}]}, 500)
            query, variables = body["query"], body.get("variables", {})
            if "flashEnvironment(" in query:
                known = variables.get("flashEnvironmentId") == self.environment_id
                env = {"id": self.environment_id, "activeBuildId": self.build_id}
                return JSONResponse({"data": {"flashEnvironment": env if known else None}})
            if "flashBuild(" in query:
                build = {"id": self.build_id, "manifest": self.manifest}
                return JSONResponse({"data": {"flashBuild": build}})
            return JSONResponse({"errors": [{"message": "unknown query"}]}, 400)

        return app


@dataclass
class FakeQueueEndpoint:
    """A queue endpoint's ``/runsync`` and ``/status/{id}``: it records each job and answers
    ``answer(input)`` (a FunctionResponse dict) in RunPod's job envelope. ``queued`` makes
    ``/runsync`` come back IN_QUEUE first, as RunPod does when a job outlasts its wait."""

    answer: Any
    queued: bool = False
    jobs: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/runsync")
        async def runsync(request: Request) -> JSONResponse:
            body = await request.json()
            self.jobs.append(body)
            self.authorizations.append(request.headers.get("authorization", ""))
            job_id = f"job-{len(self.jobs)}"
            if self.queued:
                return JSONResponse({"id": job_id, "status": "IN_QUEUE"})
            return JSONResponse(self._done(job_id, body["input"]))

        @app.get("/status/{job_id}")
        async def status(job_id: str) -> JSONResponse:
            body = self.jobs[int(job_id.removeprefix("job-")) - 1]
            return JSONResponse(self._done(job_id, body["input"]))

        return app

    def _done(self, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        output = self.answer(request)
        job = {"id": job_id, "status": "COMPLETED", "output": output}
        if output.get("error"):  # what runpod-python does with a truthy output["error"]
            job["error"] = output["error"]
        return job
