"""What the template tests share: a job that says who runs it, and ways to reach the templates."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import psutil

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.templates import TemplatePool, TemplateProcess

BASE = sys.executable

WHO_AM_I = """
import os, sys
def main():
    return {
        "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
        "python": sys.executable, "forked": "sandvisor.sandbox_child.template" in sys.modules,
    }
"""


def pool_of(sup: Supervisor) -> TemplatePool:
    assert sup.templates is not None
    return sup.templates


def job_children(template: TemplateProcess) -> list[psutil.Process]:
    """The template's children that are jobs: all but the spare it keeps for the next job."""
    return [
        child for child in psutil.Process(template.pid).children() if child.pid != template.spare
    ]


def template_of(sup: Supervisor, python: str = BASE) -> TemplateProcess:
    return pool_of(sup).running[python]


async def ok(sup: Supervisor, request: dict[str, Any]) -> Any:
    response = await sup.run(request)
    assert response.success, response.error
    return response.json_result


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)
