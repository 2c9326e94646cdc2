"""Cross-endpoint routing: a deployed request for another resource's function goes there.

A Flash app is several resources (endpoints); its manifest's ``function_registry`` says which
resource each function belongs to, and ``FLASH_RESOURCE_NAME`` says which one this worker is.
A request without code for a function of another resource is forwarded, as worker-flash does
(worker-tetra 1.0.0 ``src/remote_executor.py``, runpod-flash 1.21
``runtime/production_wrapper.py``):

    queue target:  POST {endpoint}/runsync  {"input": FunctionRequest}   (Bearer RUNPOD_API_KEY)
                   -> {"status": "COMPLETED", "output": FunctionResponse}; IN_QUEUE/IN_PROGRESS
                   are followed on GET {endpoint}/status/{id}
    LB target:     {http_method} {endpoint}{http_path}  with the JSON kwargs (plus "args")
                   -> the function's result as JSON

Unlike worker-flash, nothing is run here when the State Manager or the target cannot be
reached: the function was deployed to another resource for a reason (its GPU, its image, its
secrets), and running it on this machine would fail later or, worse, succeed in the wrong place.
The answer says in one line why it could not be forwarded (``ErrorType.ROUTING``), and the
caller may retry. Requests that carry their own code, and functions of this resource, are not
routed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from sandvisor.protocol.models import ErrorType, FunctionRequest, FunctionResponse
from sandvisor.supervisor.errors import DeployedAppError, InvalidRequest, RoutingError
from sandvisor.supervisor.intake import parse_request
from sandvisor.supervisor.manifest import load_manifest, requested_name
from sandvisor.supervisor.outcome import failed, failure
from sandvisor.worker.state_manager import EndpointDirectory, StateManagerConfig

log = logging.getLogger(__name__)

#: worker-flash's DEFAULT_ENDPOINT_TIMEOUT for a forwarded request, when the request sets none.
DEFAULT_FORWARD_TIMEOUT_S = 300.0
#: How often a queued forwarded job's status is asked for after /runsync came back unfinished.
STATUS_POLL_S = 1.0
#: Added to a forwarded request's own ``limits.timeout_s``: the trip and the target's queue.
FORWARD_MARGIN_S = 30.0
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@dataclass(frozen=True)
class Target:
    """Where a function of another resource is served."""

    resource: str
    load_balanced: bool
    http_method: str | None = None
    http_path: str | None = None


def target_of(manifest: Mapping[str, Any], name: str, current: str) -> Target | None:
    """The other resource that serves ``name``; None when it is this one's or not listed (then
    the local lookup answers with its own clear error)."""
    registry = manifest.get("function_registry")
    resource = registry.get(name) if isinstance(registry, dict) else None
    if not resource or resource == current:
        return None
    resources = manifest.get("resources")
    config = resources.get(resource) if isinstance(resources, dict) else None
    config = config if isinstance(config, dict) else {}
    load_balanced = bool(config.get("is_load_balanced"))
    for function in config.get("functions") or []:
        if isinstance(function, dict) and function.get("name") == name:
            return Target(
                resource, load_balanced, function.get("http_method"), function.get("http_path")
            )
    return Target(resource, load_balanced)


class Router:
    """Forwards deployed requests that belong to other resources of the app.

    Takes: the app dir (its ``flash_manifest.json`` says who serves what), this worker's
    resource name, the endpoint directory, the worker's RunPod API key (sent to queue
    endpoints), the status poll interval and the margin added to a request's own timeout
    (seconds; without ``limits.timeout_s`` a forward may take DEFAULT_FORWARD_TIMEOUT_S).
    Guarantees: :meth:`route` never raises for a request; it answers None (run it here) or the
    forwarded FunctionResponse, a failed one when forwarding was impossible.
    """

    def __init__(
        self,
        app_dir: Path,
        resource: str,
        directory: EndpointDirectory,
        api_key: str = "",
        poll_s: float = STATUS_POLL_S,
        margin_s: float = FORWARD_MARGIN_S,
    ) -> None:
        self.app_dir = app_dir
        self.resource = resource
        self.directory = directory
        self.api_key = api_key
        self.poll_s = poll_s
        self.margin_s = margin_s
        self._manifest: dict[str, Any] | None = None

    @classmethod
    def from_env(cls, app_dir: Path, environ: Mapping[str, str]) -> Router | None:
        """The worker's router, or None when it is no resource of a deployed app."""
        resource = environ.get("FLASH_RESOURCE_NAME", "")
        if not resource:
            return None
        fallback: dict[str, str] = {}
        try:  # flash deploy may have written the endpoints into the app's own manifest
            endpoints = load_manifest(app_dir).get("resources_endpoints")
            fallback = dict(endpoints) if isinstance(endpoints, dict) else {}
        except DeployedAppError:
            pass
        directory = EndpointDirectory(StateManagerConfig.from_env(environ), fallback=fallback)
        return cls(app_dir, resource, directory, environ.get("RUNPOD_API_KEY", ""))

    def target(self, request: FunctionRequest) -> Target | None:
        """The other resource this deployed request belongs to, if any."""
        if request.function_code is not None or request.class_code is not None:
            return None
        try:
            name = requested_name(request)
            if self._manifest is None:
                self._manifest = load_manifest(self.app_dir)
        except DeployedAppError:
            return None  # the local lookup gives the clear error
        return target_of(self._manifest, name, self.resource)

    async def route(self, raw: Any) -> FunctionResponse | None:
        """None to run ``raw`` here; else the answer of the resource it belongs to."""
        try:
            request = parse_request(raw)
        except InvalidRequest:
            return None  # the supervisor answers invalid requests, as the intake finds them
        target = self.target(request) if request is not None else None
        if request is None or target is None:
            return None
        try:
            url = await self.directory.url_of(target.resource)
            log.info("forwarding %s to resource %s at %s", _name(request), target.resource, url)
            if target.load_balanced:
                return await self._forward_lb(request, target, url)
            return await self._forward_queue(request, target, url)
        except (RoutingError, InvalidRequest) as exc:
            return failed(exc)
        except httpx.TimeoutException as exc:
            return failure(
                ErrorType.TIMEOUT,
                f"timed out: resource {target.resource!r} did not answer in time ({one_line(exc)})",
            )
        except httpx.HTTPError as exc:
            return failed(
                RoutingError(f"cannot reach resource {target.resource!r} ({one_line(exc)})")
            )
        except Exception as exc:  # e.g. an endpoint URL httpx cannot use: still an answer
            log.exception("forwarding to resource %s failed", target.resource)
            return failed(
                RoutingError(f"forwarding to resource {target.resource!r} failed ({one_line(exc)})")
            )

    def _timeout(self, request: FunctionRequest) -> float:
        if request.limits is not None and request.limits.timeout_s:
            return request.limits.timeout_s + self.margin_s  # its limit, and the trip
        return DEFAULT_FORWARD_TIMEOUT_S

    async def _forward_queue(
        self, request: FunctionRequest, target: Target, url: str
    ) -> FunctionResponse:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        payload = {"input": request.model_dump(mode="json", exclude_none=True)}
        timeout = self._timeout(request)
        async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
            response = await client.post(f"{url}/runsync", json=payload)
            job = _json_object(response, target)
            waited = 0.0
            while job.get("status") not in FINAL_STATES and job.get("id") and waited < timeout:
                await asyncio.sleep(self.poll_s)
                waited += self.poll_s
                job = _json_object(await client.get(f"{url}/status/{job['id']}"), target)
        return _queue_answer(job, target)

    async def _forward_lb(
        self, request: FunctionRequest, target: Target, url: str
    ) -> FunctionResponse:
        if not target.http_method or not target.http_path:
            raise RoutingError(
                f"the manifest gives no http_method/http_path for {_name(request)} on "
                f"load-balanced resource {target.resource!r}"
            )
        if request.serialization_format != "json":
            raise InvalidRequest(
                f"{_name(request)} is served by load-balanced resource {target.resource!r}, "
                "whose routes take JSON: send it with serialization_format 'json'"
            )
        body: dict[str, Any] = dict(request.kwargs)
        if request.args:  # runpod-flash's ProductionWrapper._execute_remote_lb does the same
            body["args"] = list(request.args)
        async with httpx.AsyncClient(timeout=self._timeout(request)) as client:
            response = await client.request(
                target.http_method, f"{url}{target.http_path}", json=body or None
            )
        if response.is_success:
            try:
                return FunctionResponse(success=True, json_result=response.json())
            except ValueError:
                return FunctionResponse(success=True, json_result=response.text)
        return _lb_error(response, target)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, whatever the message holds."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text or 'no detail'}"


def _name(request: FunctionRequest) -> str:
    """The forwarded function or class, quoted (a routed request always names one)."""
    return repr(requested_name(request))


def _json_object(response: httpx.Response, target: Target) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RoutingError(
            f"resource {target.resource!r} answered {response.status_code}: "
            f"{' '.join(response.text.split())[:300]}"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RoutingError(f"resource {target.resource!r} answered something that is not a job")
    return body


def _queue_answer(job: dict[str, Any], target: Target) -> FunctionResponse:
    """A RunPod job's final state as the FunctionResponse its worker returned."""
    status = job.get("status")
    output = job.get("output")
    if status not in FINAL_STATES:
        raise RoutingError(f"resource {target.resource!r} left the job {status or 'unfinished'}")
    fields = dict(output) if isinstance(output, dict) else {}
    if job.get("error"):  # runpod moves a truthy output["error"] to the job's own error
        fields.update(success=False, error=str(job["error"]))
    if status != "COMPLETED" and "success" not in fields:
        fields.update(success=False)
        fields.setdefault("error", f"the job on resource {target.resource!r} ended {status}")
    try:
        return FunctionResponse.model_validate(fields)
    except ValidationError as exc:
        raise RoutingError(
            f"resource {target.resource!r} answered no FunctionResponse ({exc.error_count()} "
            "errors)"
        ) from exc


def _lb_error(response: httpx.Response, target: Target) -> FunctionResponse:
    """A route's error: sandvisor's own error body is passed on, anything else is named."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error_type = body.get("error_type")
        known = error_type in {member.value for member in ErrorType}
        return FunctionResponse(
            success=False,
            error=body["error"],
            error_type=ErrorType(error_type) if known else ErrorType.USER_EXCEPTION,
            stdout=body.get("stdout") if isinstance(body.get("stdout"), str) else None,
        )
    text = " ".join(response.text.split())[:300]
    return failed(
        RoutingError(f"resource {target.resource!r} answered {response.status_code}: {text}")
    )
