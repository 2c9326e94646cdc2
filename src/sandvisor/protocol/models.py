"""Wire models, field for field those of runpod-flash 1.21 (``runpod_flash.protos.remote_execution``).

A runpod-flash client sends ``FunctionRequest.model_dump(exclude_none=True)`` as a job's input and
rebuilds ``FunctionResponse(**output)`` from what we return, so names, defaults and validation
match theirs. Unknown request fields are ignored, as pydantic does by default. We add a few
optional fields: ``limits`` on requests, ``error_type``/``exit_code``/``signal``/``timings`` on
responses; runpod-flash's client ignores response fields it does not know.

Where runpod-flash takes any string we take only what its client sends and its worker runs:
``execution_type`` is ``function`` or ``class``, ``serialization_format`` ``cloudpickle`` or
``json``, and an ``instance_id`` is a name (:data:`INSTANCE_ID_PATTERN`; runpod-flash makes
``<ClassName>_<hex>``). The values inside a request are checked further by the supervisor's
intake (``supervisor/intake.py``), which every entry point goes through.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: An instance id names a live instance in logs and answers: letters, digits, ``_``, ``.``,
#: ``-``, at most 128, not starting with ``.`` or ``-`` (a job id's alphabet; a leading ``_``
#: is allowed, as runpod-flash names instances after their class).
INSTANCE_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class ErrorType(str, Enum):
    """Why a job failed; one value per cause a person would act on differently."""

    USER_EXCEPTION = "user_exception"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    PROCESS_LIMIT = "process_limit"
    OUTPUT_LIMIT = "output_limit"
    RESULT_TOO_LARGE = "result_too_large"
    SIGNAL = "signal"
    EXIT = "exit"
    CANCELLED = "cancelled"
    DEPENDENCY_INSTALL = "dependency_install"
    INVALID_REQUEST = "invalid_request"
    LOST = "lost"
    # A deployed Flash app this worker cannot serve: its build artifact could not be unpacked.
    DEPLOYMENT = "deployment"
    # A function of another resource could not be forwarded: the State Manager or the target
    # endpoint is unreachable, or the target answered with an HTTP error.
    ROUTING = "routing"


class RequestLimits(BaseModel):
    """Per-request limits; each may lower the supervisor's default or raise it up to its ceiling."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    timeout_s: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    cpu_s: float | None = Field(default=None, gt=0)
    max_procs: int | None = Field(default=None, gt=0)
    max_output_bytes: int | None = Field(default=None, ge=0)
    max_result_bytes: int | None = Field(default=None, ge=0)
    max_open_files: int | None = Field(default=None, gt=0)
    gpus: int | None = Field(default=None, ge=0)


class FunctionRequest(BaseModel):
    function_name: str | None = None
    function_code: str | None = None
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[str] | None = None
    system_dependencies: list[str] | None = None
    modules: dict[str, str] = Field(default_factory=dict)

    execution_type: Literal["function", "class"] = "function"
    class_name: str | None = None
    class_code: str | None = None
    constructor_args: list[Any] = Field(default_factory=list)
    constructor_kwargs: dict[str, Any] = Field(default_factory=dict)
    method_name: str = "__call__"
    instance_id: str | None = None
    create_new_instance: bool = True

    accelerate_downloads: bool = True
    serialization_format: Literal["cloudpickle", "json"] = "cloudpickle"

    # sandvisor's own, optional: absent means the supervisor's defaults.
    limits: RequestLimits | None = None

    @field_validator("instance_id")
    @classmethod
    def _instance_id_is_a_name(cls, value: str | None) -> str | None:
        """Refuse an id that is not a name (:data:`INSTANCE_ID_PATTERN`); None passes."""
        if value is not None and not INSTANCE_ID_PATTERN.fullmatch(value):
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise ValueError(
                f"{shown!r} ({len(value)} characters) is not 1-128 letters, digits, '_', '.'"
                " or '-' (not starting with '.' or '-')"
            )
        return value

    @model_validator(mode="after")
    def validate_execution_requirements(self) -> FunctionRequest:
        """A function request names its function, a class request its class (runpod-flash's
        rule; the code may be absent: a deployed app's)."""
        if self.execution_type == "function":
            if self.function_name is None:
                raise ValueError('function_name is required when execution_type is "function"')
        elif self.execution_type == "class" and self.class_name is None:
            raise ValueError('class_name is required when execution_type is "class"')
        return self


class FunctionResponse(BaseModel):
    success: bool
    result: str | None = None
    json_result: Any | None = None
    error: str | None = None
    stdout: str | None = None
    instance_id: str | None = None
    instance_info: dict[str, Any] | None = None

    # sandvisor's own; runpod-flash clients ignore them.
    error_type: ErrorType | None = None
    exit_code: int | None = None
    signal: int | None = None
    # Milliseconds: "env" (getting the environment: a lookup, or a build), "start" (from launch
    # to the child running the job), "run" (running it, to its answer or end), "total" (all of
    # it, env included); "retried": 1.0 when the job was started again after its template died.
    # A failure found before the job started (an invalid request) has none; an internal error
    # only "total".
    timings: dict[str, float] | None = None
    # The result as the CLI shows it (pretty JSON or repr), made in the child so the caller never
    # unpickles user data; only when asked for, and never sent on the wire.
    result_display: str | None = Field(default=None, exclude=True)

    def to_wire(self) -> dict[str, Any]:
        """The dict a RunPod handler returns: JSON-able, with our extras left out when unset."""
        return self.model_dump(mode="json", exclude_none=True) | {"success": self.success}
