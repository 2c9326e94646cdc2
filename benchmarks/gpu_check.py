"""On a GPU machine: a template that preloads torch never initializes CUDA, and its jobs can.

    python -m benchmarks.gpu_check [--python /path/to/python/with/torch]

Drives one template directly (no Supervisor, so the interpreter only needs torch, msgpack and
cloudpickle): starts it with ``--preload torch``, checks that it holds no CUDA context, then forks
jobs from it that use the GPU, one with ``CUDA_VISIBLE_DEVICES`` empty (it must see no GPU), and
times a job that imports torch (preloaded) against a fresh interpreter that imports it.
Prints one line per check and exits non-zero if one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandvisor.protocol.frames import EndOfStream, read_frame
from sandvisor.protocol.models import FunctionRequest
from sandvisor.supervisor.job import JobSpec
from sandvisor.supervisor.limits import Limits
from sandvisor.supervisor.process import JobPipes
from sandvisor.supervisor.settings import Settings
from sandvisor.supervisor.templates import TemplateProcess

USES_GPU = """
import os, torch
def main():
    x = torch.ones(1024, device="cuda")
    return {"sum": float(x.sum()), "devices": torch.cuda.device_count(),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
"""
SEES_GPU = "import torch\ndef main():\n    return torch.cuda.is_available()\n"
IMPORTS_TORCH = "import torch\ndef main():\n    return torch.__version__\n"


def function(code: str) -> dict[str, Any]:
    return {"function_name": "main", "function_code": code, "serialization_format": "json"}


def job_spec(python: str, request: dict[str, Any], env: dict[str, str], workdir: Path) -> JobSpec:
    """The job as the core describes it: a worker's default limits for a job with a GPU."""
    # With a GPU there is no RLIMIT_AS, which would break CUDA's initialization.
    limits = Limits.resolve(Settings.from_env(environ={}, gpus=""), gpus_available=1)
    return JobSpec(
        job_id=workdir.name,
        request=FunctionRequest.model_validate(request),
        python=python,
        workdir=workdir,
        base_env=env,
        limits=limits,
    )


async def run(template: TemplateProcess, code: str, env: dict[str, str], jobs: Path) -> Any:
    """One job forked from ``template``; its result, or the error it reported."""
    from sandvisor.protocol.frames import encode_frame

    workdir = Path(tempfile.mkdtemp(dir=jobs))
    os.rmdir(workdir)
    pipes = JobPipes.create()
    try:
        # As a job run forked from a template: the environment goes as changes from the template's.
        frame = job_spec(template.python, function(code), env, workdir).job_frame(template.environ)
        pipes.channel.sendall(encode_frame(frame))
        child = await template.fork(pipes)
        pipes.close_child_ends()
        frames = await asyncio.to_thread(read_all, pipes.channel.fileno())
        await child.exited
    finally:
        pipes.close()
    for frame in frames:
        if frame["t"] == "result":
            return frame["fields"]["json_result"]
        if frame["t"] == "error":
            return f"error: {frame['summary']}"
    return f"no result: {frames}"


def read_all(fd: int) -> list[dict[str, Any]]:
    frames = []
    while True:
        try:
            frames.append(read_frame(fd))
        except EndOfStream:
            return frames


def holds_gpu(pid: int) -> bool:
    """A CUDA context means open ``/dev/nvidia*`` descriptors (nvidia-smi may not see our pids)."""
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd).startswith("/dev/nvidia") for fd in fds.iterdir())


async def check(python: str) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src")
    results: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory() as jobs_dir:
        jobs = Path(jobs_dir)
        started = time.perf_counter()
        template = await TemplateProcess.start(python, ["torch"], env)
        start_s = time.perf_counter() - started
        try:
            results.append(("torch preloaded", template.preloaded == ["torch"], f"{start_s:.1f} s"))
            results.append(
                (
                    "template holds no CUDA context",
                    not template.cuda_initialized and not holds_gpu(template.pid),
                    "",
                )
            )
            gpu = await run(template, USES_GPU, env | {"CUDA_VISIBLE_DEVICES": "0"}, jobs)
            ok = isinstance(gpu, dict) and gpu["sum"] == 1024.0
            results.append(("forked job computes on the GPU", ok, str(gpu)))
            hidden = await run(template, SEES_GPU, env | {"CUDA_VISIBLE_DEVICES": ""}, jobs)
            results.append(("CUDA_VISIBLE_DEVICES='' hides it", hidden is False, str(hidden)))
            again = await run(template, USES_GPU, env | {"CUDA_VISIBLE_DEVICES": "0"}, jobs)
            ok = isinstance(again, dict) and again["sum"] == 1024.0
            results.append(("the next forked job too", ok, ""))
            results.append(
                ("template still holds no CUDA context", not holds_gpu(template.pid), "")
            )
            forked = []
            for _ in range(20):
                began = time.perf_counter()
                await run(template, IMPORTS_TORCH, env, jobs)
                forked.append((time.perf_counter() - began) * 1000)
        finally:
            await template.stop()
    began = time.perf_counter()
    subprocess.run([python, "-c", "import torch"], env=env, check=True)
    fresh_ms = (time.perf_counter() - began) * 1000
    forked.sort()
    results.append(
        (
            "job importing torch, forked p50",
            True,
            f"{forked[len(forked) // 2]:.1f} ms vs {fresh_ms:.0f} ms for a fresh `import torch`",
        )
    )
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}  {detail}")
    return all(ok for _, ok, _ in results)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with torch")
    options = parser.parse_args()
    if not has_torch(options.python):
        sys.exit(f"{options.python} cannot import torch: pass --python with one that can")
    sys.exit(0 if asyncio.run(check(options.python)) else 1)


def has_torch(python: str) -> bool:
    """Found without importing it, which takes seconds."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([python, "-c", probe], check=False).returncode == 0


if __name__ == "__main__":
    main()
