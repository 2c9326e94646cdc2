"""One failure family: what the supervisor refuses, or cannot provide, for a request.

Each error carries what its response needs: the :class:`ErrorType`, a one-line ``summary`` (the
reason alone, without the first words that ``outcome.failure`` puts in front for its type, such as
"invalid request: ") and a ``detail`` (more lines, may be empty). ``str(error)`` is the summary,
then the detail on the lines after it. The core turns any of them into a ``FunctionResponse``
in one place (``outcome.failed``).

    SandvisorError
      InvalidRequest          the request cannot run as given (ErrorType.INVALID_REQUEST)
        LimitsError             a limit above what this supervisor allows
        DeployedAppError        deployed code the app directory cannot provide
        RequirementRejected     a dependency string we will not hand to uv
      EnvError                the job's environment (venv, system packages) cannot be had
      DeploymentError         the deployed Flash app cannot be served (ErrorType.DEPLOYMENT)
      RoutingError            a function of another resource cannot be forwarded
                              (ErrorType.ROUTING)
"""

from __future__ import annotations

from sandvisor.protocol.models import ErrorType


class SandvisorError(Exception):
    """A request's failure as data: ``error_type``, ``summary`` (one line), ``detail``."""

    error_type: ErrorType = ErrorType.LOST

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(f"{summary}\n{detail}" if detail else summary)
        self.summary = summary
        self.detail = detail


class InvalidRequest(SandvisorError):
    """The request cannot be run as given; the summary says what is wrong, in one line."""

    error_type = ErrorType.INVALID_REQUEST


class LimitsError(InvalidRequest):
    """A request asks for a limit above what this supervisor allows."""


class DeployedAppError(InvalidRequest):
    """A request names deployed code that the app directory cannot provide."""


class RequirementRejected(InvalidRequest):
    """A dependency string the supervisor will not hand to uv; the message names it and why."""

    def __init__(self, text: str, reason: str) -> None:
        shown = text if len(text) <= 120 else text[:117] + "..."
        super().__init__(f"dependency {shown!r} rejected: {reason}")
        self.text = text
        self.reason = reason


class EnvError(SandvisorError):
    """A job's environment could not be provided: a failed install (``DEPENDENCY_INSTALL``,
    the default) or dependencies refused before anything ran (``INVALID_REQUEST``).

    ``message``: its first line is the summary, the rest (uv's or apt's output) the detail.
    """

    def __init__(self, message: str, error_type: ErrorType = ErrorType.DEPENDENCY_INSTALL) -> None:
        summary, _, detail = message.partition("\n")
        super().__init__(summary, detail)
        self.error_type = error_type


class DeploymentError(SandvisorError):
    """The deployed Flash app cannot be served: its build artifact is missing, truncated or
    hostile. Found once at start; every request then answers with it."""

    error_type = ErrorType.DEPLOYMENT


class RoutingError(SandvisorError):
    """A request for a function of another resource could not be forwarded there: the State
    Manager or the target endpoint is unreachable, or the target answered with an HTTP error."""

    error_type = ErrorType.ROUTING
