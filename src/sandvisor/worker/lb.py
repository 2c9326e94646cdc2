"""Load-balanced (HTTP) worker: FastAPI + uvicorn in front of one Supervisor.

RunPod's load balancer sends HTTP requests straight to the worker's ``PORT`` (runpod-flash
1.21 sets ``FLASH_ENDPOINT_TYPE=lb`` on such endpoints: ``runtime/resource_provisioner.py``).
What worker-flash serves there (worker-tetra 1.0.0 ``src/lb_handler.py``, runpod-flash
``runtime/lb_handler.py``), and what we answer:

    GET  /ping       204 while warming (unpack, Supervisor, base template), 200 once taking work
                     (RunPod measures cold start by that switch); 503 if the Supervisor failed
    POST /execute    a FunctionRequest, bare or {"input": ...} -> 200 and the FunctionResponse
                     (success or not: runpod-flash's stub raises its error); 400 for a body
                     that is not JSON, 413 for one over ``max_request_bytes`` (not read whole)
    {method} {path}  each route the manifest gives this resource's functions: path, query and
                     JSON-object body are the keyword arguments, the result is the JSON answer;
                     400 bad input (413 a body too large), 422 arguments that do not fit
                     the function, 500 a failed job (its error in the body), 502 a failed
                     forward, 503 an app that cannot be served, 504 a timeout

Every job runs in its own child through ``Supervisor`` (the same limits as the queue path), at
most ``concurrency`` at once (later requests wait their turn), and is cancelled (its process
tree killed) when its client goes away. Its output goes to this process's log in the queue
path's batches (``handler.LogBatcher``), one line a record, prefixed with the job's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sandvisor.protocol.models import ErrorType, FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.errors import DeployedAppError, InvalidRequest
from sandvisor.supervisor.intake import TooLarge, job_input, parse_json, too_large
from sandvisor.supervisor.manifest import load_manifest
from sandvisor.supervisor.outcome import failed, failure
from sandvisor.supervisor.settings import Settings
from sandvisor.worker.deployed import DeployedApp
from sandvisor.worker.handler import drive

log = logging.getLogger(__name__)

#: Paths runpod-flash reserves for the framework (``build_utils/manifest.py`` RESERVED_PATHS).
RESERVED_PATHS = frozenset({"/ping", "/execute"})
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})
#: How a failed job's ``error_type`` reads as an HTTP status on a manifest route.
STATUS_OF: dict[ErrorType | None, int] = {
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.TIMEOUT: 504,
    ErrorType.ROUTING: 502,
    ErrorType.DEPLOYMENT: 503,
    ErrorType.CANCELLED: 503,
}
#: How Python's own TypeError goes on, after "f() ", when a call's arguments do not fit f.
_ARGUMENTS_DO_NOT_FIT = (
    "missing ",
    "got an unexpected keyword argument",
    "takes ",
    "got multiple values",
    "got some positional-only arguments",
)


class LbWorker:
    """The HTTP worker's state: warming, the Supervisor, the deployed app, the job slots."""

    def __init__(self, settings: Settings, environ: Mapping[str, str], concurrency: int) -> None:
        self.settings = settings
        self.environ = environ
        self.slots = asyncio.Semaphore(concurrency)
        self.ready = asyncio.Event()
        self.supervisor: Supervisor | None = None
        self.deployed = DeployedApp()
        self.start_error: str | None = None
        self.routes: list[tuple[str, str, str]] = []  # (method, path, function)

    async def start(self, app: FastAPI) -> None:
        """Unpack, add the manifest's routes, warm the Supervisor; then ``ready`` is set."""
        try:
            self.deployed = await DeployedApp.prepare(self.settings, self.environ)
            for line in self.deployed.notes:
                print(f"sandvisor: {line}", file=sys.stderr, flush=True)
            if self.deployed.error is None:
                self.add_routes(app)
            supervisor = Supervisor(self.deployed.settings_for(self.settings))
            await supervisor.__aenter__()
            self.supervisor = supervisor
        except Exception as exc:  # /ping says so; the platform replaces the worker
            self.start_error = f"the supervisor failed to start: {exc}"
            log.exception("the load-balanced worker failed to start")
        finally:
            self.ready.set()

    async def stop(self) -> None:
        if self.supervisor is not None:
            supervisor, self.supervisor = self.supervisor, None
            await supervisor.__aexit__(None, None, None)

    def add_routes(self, app: FastAPI) -> None:
        """One route per function of this resource that the manifest gives a method and path."""
        resource = self.environ.get("FLASH_RESOURCE_NAME", "")
        try:
            manifest = load_manifest(self.settings.app_dir)
        except DeployedAppError:
            return  # no deployed app: /execute only
        config = (manifest.get("resources") or {}).get(resource) if resource else None
        for function in (config or {}).get("functions") or []:
            method = str(function.get("http_method") or "").upper()
            path = function.get("http_path")
            if method not in METHODS or not isinstance(path, str) or path in RESERVED_PATHS:
                continue
            app.add_api_route(path, self.route_endpoint(function["name"]), methods=[method])
            self.routes.append((method, path, function["name"]))
            print(f"sandvisor: route {method} {path} -> {function['name']}", file=sys.stderr)

    # -- requests ---------------------------------------------------------------------------

    async def answer(self, request: Request, raw: Any) -> FunctionResponse | None:
        """The FunctionResponse for ``raw``; None when the client left before it was ready
        (its job, or its forward, is then cancelled)."""
        await self.ready.wait()
        if self.supervisor is None:
            return failure(ErrorType.LOST, f"lost: {self.start_error or 'the worker is stopping'}")
        job = asyncio.ensure_future(self._answer(raw))
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not job.done():  # the client went away: stop the job and its process tree
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
        return None if job.cancelled() else job.result()

    async def _answer(self, raw: Any) -> FunctionResponse:
        early = await self.deployed.preflight(raw)
        return early if early is not None else await self._run(raw)

    async def _run(self, raw: Any) -> FunctionResponse:
        assert self.supervisor is not None
        job_id = f"lb-{uuid.uuid4().hex[:16]}"
        async with self.slots:
            log.info("job %s started", job_id)
            try:
                response = await drive(
                    self.supervisor,
                    raw,
                    job_id,
                    lambda payload: log_batch(job_id, payload),
                    self.settings.progress_interval_s,
                    flush_at_end=True,
                )
            except asyncio.CancelledError:
                log.info("job %s cancelled: its client went away", job_id)
                raise
        outcome = "ok" if response.success else (response.error or "").partition("\n")[0]
        log.info("job %s finished: %s", job_id, outcome)
        return response

    def route_endpoint(self, function: str) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                kwargs = await route_arguments(request, self.settings.max_request_bytes)
            except InvalidRequest as exc:
                return error_response(failed(exc), body_status(exc))
            raw = {"function_name": function, "kwargs": kwargs, "serialization_format": "json"}
            response = await self.answer(request, raw)
            if response is None:
                return Response(status_code=499)  # nobody reads it: the client left
            if response.success:
                return JSONResponse(response.json_result)
            return error_response(response, route_status(response, function))

        endpoint.__name__ = f"route_{function}"
        return endpoint


def log_batch(job_id: str, payload: dict[str, Any]) -> None:
    """A job's output, as the queue path batches it, into this worker's log."""
    for record in payload.get("logs", []):
        for line in str(record.get("text", "")).rstrip("\n").split("\n"):
            print(f"[{job_id}] {line}", file=sys.stderr)
    if payload.get("logs_left_out_bytes"):
        print(f"[{job_id}] ({payload['logs_left_out_bytes']} bytes left out)", file=sys.stderr)


async def client_gone(request: Request) -> None:
    """Returns when the client has disconnected (uvicorn's ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, read only while it stays within ``max_bytes``.

    Raises :class:`TooLarge` (answered 413) as soon as a ``Content-Length`` says more, or the
    bytes received pass the limit: a larger body is never held whole.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(int(declared), max_bytes, "the body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(
                f"the body is over the limit of {max_bytes} bytes (SANDVISOR_MAX_REQUEST_BYTES)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def route_arguments(request: Request, max_bytes: int) -> dict[str, Any]:
    """Path parameters, then query parameters, then a JSON object body: the keyword arguments.

    As runpod-flash's route wrappers take them (``runtime/lb_handler.py``), without its type
    coercion: we do not import the app's code in the worker, so path and query values stay
    strings. Raises :class:`InvalidRequest` for a body that is not a JSON object, and
    :class:`TooLarge` for one over ``max_bytes``.
    """
    kwargs: dict[str, Any] = dict(request.path_params)
    kwargs.update(request.query_params)
    body = await read_body(request, max_bytes)
    if body.strip():
        data = parse_json(body)
        if not isinstance(data, dict):
            raise InvalidRequest(
                f"the body must be a JSON object of the function's arguments, not "
                f"{type(data).__name__}"
            )
        kwargs.update(data)
    return kwargs


def body_status(error: InvalidRequest) -> int:
    """The HTTP status of a body refused before any job: 413 too large, else 400."""
    return 413 if isinstance(error, TooLarge) else 400


def route_status(response: FunctionResponse, function: str) -> int:
    """The HTTP status of a route's failed job: :data:`STATUS_OF` by its error type, and 422
    when the request's arguments do not fit the function (Python's TypeError naming it, as
    runpod-flash's own routes answer a body that does not fit the signature with 422)."""
    first = (response.error or "").partition("\n")[0]
    prefix = f"TypeError: {function}() "
    if (
        response.error_type is ErrorType.USER_EXCEPTION
        and first.startswith(prefix)
        and first[len(prefix) :].startswith(_ARGUMENTS_DO_NOT_FIT)
    ):
        return 422
    return STATUS_OF.get(response.error_type, 500)


def error_response(response: FunctionResponse, status: int | None = None) -> JSONResponse:
    status = status or STATUS_OF.get(response.error_type, 500)
    body = {
        "error": response.error,
        "error_type": response.error_type.value if response.error_type else None,
        "stdout": response.stdout,
    }
    return JSONResponse(body, status_code=status)


def create_app(settings: Settings, environ: Mapping[str, str], concurrency: int = 1) -> FastAPI:
    """The HTTP app; its :class:`LbWorker` is ``app.state.worker`` once the lifespan began.

    The lifespan warms in the background, so ``/ping`` answers 204 from the first moment
    uvicorn listens; at shutdown running jobs are stopped and the Supervisor closed.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = app.state.worker = LbWorker(settings, environ, concurrency)
        warming = asyncio.ensure_future(worker.start(app))
        try:
            yield
        finally:
            # Not cancelled: a Supervisor cut off half-way into its start would leave its
            # template behind. A stop while warming waits for the warm-up, then undoes it.
            await asyncio.gather(warming, return_exceptions=True)
            await worker.stop()

    app = FastAPI(title="sandvisor load-balanced worker", lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> Response:
        worker: LbWorker = app.state.worker
        if not worker.ready.is_set():
            return Response(status_code=204)
        if worker.supervisor is None:
            return JSONResponse({"status": "failed", "error": worker.start_error}, 503)
        return JSONResponse({"status": "healthy"})

    @app.post("/execute")
    async def execute(request: Request) -> Response:
        worker: LbWorker = app.state.worker
        try:
            data = parse_json(await read_body(request, worker.settings.max_request_bytes))
        except InvalidRequest as exc:
            return JSONResponse(failed(exc).to_wire(), status_code=body_status(exc))
        try:  # bare, or the RunPod job form {"input": ...}, as worker-flash accepts it
            data = job_input(data)
        except InvalidRequest as exc:  # JSON, but no request: answered as an invalid one
            return JSONResponse(failed(exc).to_wire())
        response = await worker.answer(request, data)
        if response is None:
            return Response(status_code=499)
        return JSONResponse(response.to_wire())

    return app


def serve_lb(settings: Settings, environ: Mapping[str, str], host: str, port: int) -> int:
    """Serve HTTP on ``host:port`` until SIGTERM or SIGINT (uvicorn's own handling); 0 after a
    clean stop, 1 when the port could not be had."""
    import uvicorn

    from sandvisor.worker.serve import default_concurrency

    # uvicorn configures only its own loggers; ours (jobs started and ended, forwards) too.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")

    app = create_app(settings, environ, default_concurrency(settings))
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="info")
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
