"""Where the other resources of a deployed Flash app live, from RunPod's State Manager.

The State Manager is RunPod's GraphQL API at ``RUNPOD_API_BASE_URL`` (default
``https://api.runpod.io``) ``/graphql``, authenticated with ``RUNPOD_API_KEY``. A worker of a
Flash environment (``FLASH_ENVIRONMENT_ID``) asks it for the environment's active build, then
for that build's manifest, whose ``resources_endpoints`` maps each resource to its endpoint URL
(runpod-flash 1.21: ``runtime/state_manager_client.py``, ``core/api/runpod.py``
``get_flash_environment`` / ``get_flash_build``, ``core/urls.py``).

Endpoints are cached for ``ttl_s`` (runpod-flash's ``DEFAULT_CACHE_TTL``, 300 s) by the clock
the directory is given. When a refresh fails, endpoints already known are kept (as runpod-flash's
``ServiceRegistry`` does) for another TTL and the failure is logged; with none known it is a
:class:`RoutingError`. Concurrent lookups may refresh twice; the directory holds no asyncio lock
because runpod's worker calls it from more than one event loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from sandvisor.supervisor.errors import RoutingError

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.runpod.io"
DEFAULT_TTL_S = 300.0
REQUEST_TIMEOUT_S = 10.0

# The two queries runpod-flash sends (core/api/runpod.py), trimmed to the fields we read.
ENVIRONMENT_QUERY = """
query getFlashEnvironment($flashEnvironmentId: String!) {
  flashEnvironment(flashEnvironmentId: $flashEnvironmentId) { id activeBuildId }
}"""
BUILD_QUERY = """
query getFlashBuild($input: String!) {
  flashBuild(flashBuildId: $input) { id manifest }
}"""


@dataclass(frozen=True)
class StateManagerConfig:
    """How to reach the State Manager: its GraphQL URL, the key, the Flash environment."""

    graphql_url: str
    api_key: str
    environment_id: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StateManagerConfig | None:
        """From ``RUNPOD_API_BASE_URL``, ``RUNPOD_API_KEY`` and ``FLASH_ENVIRONMENT_ID``; None
        when the key or the environment is not set (nothing to ask)."""
        api_key = environ.get("RUNPOD_API_KEY", "")
        environment_id = environ.get("FLASH_ENVIRONMENT_ID", "")
        if not api_key or not environment_id:
            return None
        base = (environ.get("RUNPOD_API_BASE_URL") or DEFAULT_API_URL).strip().rstrip("/")
        return cls(f"{base}/graphql", api_key, environment_id)


async def fetch_manifest(config: StateManagerConfig) -> dict[str, Any]:
    """The manifest of the environment's active build; RoutingError with a one-line reason."""
    async with httpx.AsyncClient(
        timeout=REQUEST_TIMEOUT_S,
        headers={"Authorization": f"Bearer {config.api_key}"},
    ) as client:
        environment = await _query(
            client, config, ENVIRONMENT_QUERY, {"flashEnvironmentId": config.environment_id}
        )
        build_id = (environment.get("flashEnvironment") or {}).get("activeBuildId")
        if not build_id:
            raise RoutingError(
                f"the State Manager knows no active build of environment {config.environment_id}"
            )
        build = await _query(client, config, BUILD_QUERY, {"input": build_id})
    manifest = (build.get("flashBuild") or {}).get("manifest")
    if isinstance(manifest, str):  # a JSON scalar may come back as text
        try:
            manifest = json.loads(manifest)
        except json.JSONDecodeError:
            manifest = None
    if not isinstance(manifest, dict):
        raise RoutingError(f"the State Manager has no manifest for build {build_id}")
    return manifest


async def _query(
    client: httpx.AsyncClient, config: StateManagerConfig, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    try:
        response = await client.post(
            config.graphql_url, json={"query": query, "variables": variables}
        )
        body = response.json()
    except httpx.HTTPError as exc:
        raise RoutingError(
            f"the State Manager at {config.graphql_url} is unreachable "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    except ValueError as exc:
        raise RoutingError(f"the State Manager answered {response.status_code}, not JSON") from exc
    if response.status_code >= 400 or not isinstance(body, dict) or body.get("errors"):
        errors = body.get("errors") if isinstance(body, dict) else None
        reason = "; ".join(str(e.get("message", e)) for e in errors or [] if isinstance(e, dict))
        raise RoutingError(
            f"the State Manager answered {response.status_code}: {reason or str(body)[:200]}"
        )
    data = body.get("data")
    return data if isinstance(data, dict) else {}


class EndpointDirectory:
    """Resource name -> endpoint URL, refreshed from the State Manager every ``ttl_s``.

    Takes: the State Manager's config (None: only ``fallback`` is known, e.g. the
    ``resources_endpoints`` of the app's own manifest), the TTL in seconds, a monotonic clock
    (seconds) and the fetch function (tests give their own clock; the fetch is the real one).
    """

    def __init__(
        self,
        config: StateManagerConfig | None,
        *,
        fallback: Mapping[str, str] | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.ttl_s = ttl_s
        self._clock = clock
        self._endpoints: dict[str, str] = dict(fallback or {})
        self._loaded_at: float | None = None
        self.refreshes = 0  # State Manager round trips that succeeded: for logs and tests

    async def url_of(self, resource: str) -> str:
        """The endpoint URL of ``resource``; RoutingError saying why there is none."""
        if self.config is not None and self._stale():
            await self._refresh()
        url = self._endpoints.get(resource)
        if url:
            return url.rstrip("/")
        if self.config is None:
            raise RoutingError(
                f"no endpoint URL known for resource {resource!r}: the State Manager is not "
                "configured (FLASH_ENVIRONMENT_ID and RUNPOD_API_KEY)"
            )
        known = ", ".join(sorted(self._endpoints)) or "none"
        raise RoutingError(
            f"the State Manager lists no endpoint for resource {resource!r} (known: {known})"
        )

    def _stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self.ttl_s

    async def _refresh(self) -> None:
        assert self.config is not None
        try:
            manifest = await fetch_manifest(self.config)
        except RoutingError as exc:
            if not self._endpoints:
                raise
            # Keep them for another TTL rather than make every request wait on a dead API.
            log.error(
                "refreshing endpoints failed, keeping %d known: %s", len(self._endpoints), exc
            )
            self._loaded_at = self._clock()
            return
        endpoints = manifest.get("resources_endpoints")
        if isinstance(endpoints, dict):
            self._endpoints = {str(k): str(v) for k, v in endpoints.items() if v}
        self._loaded_at = self._clock()
        self.refreshes += 1
