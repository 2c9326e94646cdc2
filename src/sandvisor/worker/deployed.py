"""What a worker knows of its deployed Flash app, for both front ends (queue and HTTP).

At start (:meth:`DeployedApp.prepare`): on a Flash deployment the build artifact is unpacked
into the app dir (``artifact.py``), and a worker that is one resource of an app gets a router
for the functions of the others (``routing.py``). Before each request (:meth:`preflight`):

    unpack failed?            -> that failure, for every request (the worker stays up)
    another resource's code?  -> forwarded there, its answer (or why it could not be)
    else                      -> None: the Supervisor runs it here
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.errors import DeploymentError
from sandvisor.supervisor.outcome import failed
from sandvisor.supervisor.settings import Settings
from sandvisor.worker.artifact import artifact_path, is_flash_deployment, unpack, unpack_wanted
from sandvisor.worker.routing import Router

log = logging.getLogger(__name__)


@dataclass
class DeployedApp:
    """The outcome of the start: the unpack's failure (if any) and the router (if any)."""

    error: DeploymentError | None = None
    router: Router | None = None
    flash: bool = False  # a Flash deployment whose app can be served
    notes: list[str] = field(default_factory=list)  # what the start did, as lines for the log

    @classmethod
    async def prepare(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> DeployedApp:
        """Unpack the artifact when this is a Flash deployment, and build the router.

        Takes: the settings (``app_dir``) and the environment (``os.environ`` by default): the
        Flash variables ``RUNPOD_ENDPOINT_ID``, ``FLASH_RESOURCE_NAME``, ``FLASH_IS_MOTHERSHIP``,
        ``FLASH_DISABLE_UNPACK``, ``FLASH_BUILD_ARTIFACT_PATH``, ``FLASH_ENVIRONMENT_ID``,
        ``RUNPOD_API_KEY``, ``RUNPOD_API_BASE_URL``. Never raises for a bad artifact: the
        failure is kept, logged, and given to every request.
        """
        environ = os.environ if environ is None else environ
        app = cls()
        if unpack_wanted(environ):
            artifact = artifact_path(environ)
            try:
                done = await unpack(artifact, settings.app_dir)
            except DeploymentError as exc:
                app.error = exc
                app.notes.append(f"error: the deployed app cannot be served: {exc.summary}")
                log.error("the deployed app cannot be served: %s", exc)
                return app
            verb = "unpacked" if done.extracted else "already unpacked"
            app.notes.append(f"{verb} {artifact} into {done.app_dir} (sha256 {done.digest[:12]})")
        app.flash = is_flash_deployment(environ)
        app.router = Router.from_env(settings.app_dir, environ)
        if app.router is not None:
            app.notes.append(
                f"resource {app.router.resource}: other resources' functions forwarded"
            )
        return app

    def settings_for(self, settings: Settings) -> Settings:
        """``settings`` with ``flash_preload`` (``runpod``) added to the templates' preload on a
        Flash deployment.

        A deployed module imports ``runpod_flash`` (for ``@remote``), which imports ``runpod``:
        about 2.6 s that every job, a fresh fork of its template, would pay again. Preloaded
        (it is our own dependency, not the app's code), a job importing such a module starts in
        about 0.8 s instead of 3.4 s on the 2-core development VM.
        """
        extra = [name for name in settings.flash_preload if name not in settings.preload]
        if not self.flash or not extra:
            return settings
        return settings.model_copy(update={"preload": [*settings.preload, *extra]})

    async def preflight(self, raw: Any) -> FunctionResponse | None:
        """The answer to ``raw`` when it is not to run here (see the module's table); else None."""
        if self.error is not None:
            return failed(self.error)
        if self.router is not None:
            return await self.router.route(raw)
        return None
