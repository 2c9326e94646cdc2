"""Helpers shared by tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from sandvisor.protocol.models import FunctionResponse
from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.events import LogEvent
from sandvisor.supervisor.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for tests: a private store, a short grace period, no variables from outside,
    and templates that do not learn preloads (a trial's extra template would show in tests that
    count processes); the tests of learning, and the parity table, turn it on."""
    values: dict[str, Any] = {"home": home, "grace_s": 0.5, "gpus": "", "adaptive_preload": False}
    values.update(overrides)
    return Settings.from_env(environ={}, **values)


def function_request(code: str, name: str = "main", **fields: Any) -> dict[str, Any]:
    """A JSON-format request for ``name`` defined by ``code``."""
    return {
        "function_name": name,
        "function_code": code,
        "serialization_format": "json",
        **fields,
    }


def class_request(
    class_name: str, class_code: str, method: str, *args: Any, **fields: Any
) -> dict[str, Any]:
    """A JSON-format call of ``method`` on an instance of ``class_name`` defined by ``class_code``."""
    return {
        "execution_type": "class",
        "class_name": class_name,
        "class_code": class_code,
        "method_name": method,
        "args": list(args),
        "serialization_format": "json",
        **fields,
    }


def process_gone(pid: int) -> bool:
    """The process has ended (a zombie waiting to be reaped counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> bool:
    """Whether ``condition()`` becomes true within ``within_s``, checked every 20 ms."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def streamed(
    sup: Supervisor, request: dict[str, Any]
) -> tuple[list[LogEvent], FunctionResponse]:
    """Every event ``sup.stream`` gives for ``request``, and the response that ends them."""
    events: list[LogEvent] = []
    response: FunctionResponse | None = None
    async for item in sup.stream(request):
        if isinstance(item, FunctionResponse):
            response = item
        else:
            events.append(item)
    assert response is not None, "the stream ended without a response"
    return events, response
