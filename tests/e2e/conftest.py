"""``sandvisor serve`` as a real subprocess, for the end-to-end tests.

A serve process lives for a whole test module (starting one costs runpod's 2.6 s import and a
warm template), so the per-test leak check of ``tests/conftest.py`` is replaced here by a
stricter one at the module's end: every process the server ever started is gone after it stops.
Tests that stop a job check that job's own processes themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.wheelhouse import uv_sources

SANDVISOR = str(Path(sys.executable).with_name("sandvisor"))
STOP_TIMEOUT_S = 20.0
GONE = (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied)
MARKER_VAR = "SANDVISOR_E2E_MARKER"

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Overrides the per-test check: module-long servers are checked when they stop."""
    yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_env(home: Path, wheelhouse: Path | None = None, **extra: str) -> dict[str, str]:
    """The worker's environment: ours minus any RunPod variables, plus a private store."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RUNPOD_", "SANDVISOR_", "UV_"))
    }
    env.update(
        {
            # Inherited by everything the worker starts: finds leftovers even once orphaned.
            MARKER_VAR: uuid.uuid4().hex,
            "SANDVISOR_HOME": str(home),
            "SANDVISOR_GPUS": "",
            "SANDVISOR_GRACE_S": "1",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
            "RUNPOD_LOG_LEVEL": "INFO",
        }
    )
    if wheelhouse is not None:
        env.update(uv_sources(wheelhouse))  # installs from the wheelhouse alone, network off
    env.update(extra)
    return env


class ServeProcess:
    """One ``sandvisor serve`` in its own session; ``stop()`` makes sure it left nothing."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [SANDVISOR, "serve", *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._seen: dict[int, psutil.Process] = {}
        self.marker = env[MARKER_VAR]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for child in found:
            self._seen.setdefault(child.pid, child)
        return found

    def stop(self) -> list[str]:
        """SIGTERM (runpod's graceful shutdown), then SIGKILL the group; what was left, named."""
        self.descendants()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(*GONE):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        return kill_leftovers(self.marker, list(self._seen.values()))


def processes_with_marker(marker: str) -> list[psutil.Process]:
    """Live processes started (at any depth) by the worker whose environment carries ``marker``."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(*GONE):
            if process.environ().get(MARKER_VAR) == marker and process.pid != os.getpid():
                found.append(process)
    return found


def kill_leftovers(marker: str, seen: Sequence[psutil.Process] = ()) -> list[str]:
    """Wait briefly for the worker's processes to go; kill and name any that did not."""
    _, alive = psutil.wait_procs([*seen, *processes_with_marker(marker)], timeout=5)
    left = []
    for process in alive:
        with contextlib.suppress(*GONE):
            left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            process.kill()
    return left


def processes_matching(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def post_json(url: str, payload: Any, timeout: float = 60.0) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def request_for(code: str, name: str = "main", **fields: Any) -> dict[str, Any]:
    return {
        "function_name": name,
        "function_code": code,
        "serialization_format": "json",
        **fields,
    }


def one_shot(tmp_path: Path, job: dict, **environ: str) -> subprocess.CompletedProcess[str]:
    """``sandvisor serve --test_input`` on ``job``, with ``environ`` added to the worker's."""
    env = serve_env(tmp_path / "home", **environ)
    done = subprocess.run(
        [SANDVISOR, "serve", "--test_input", json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    left = kill_leftovers(env[MARKER_VAR])
    assert not left, f"processes left behind: {left}"
    return done
