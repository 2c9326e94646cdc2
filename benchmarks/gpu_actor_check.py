"""On a GPU machine: a class instance keeps its CUDA tensors between calls, and frees them when it goes.

    python -m benchmarks.gpu_actor_check [--python /path/to/python/with/torch]

Drives the actor protocol directly over a template that preloads torch (no Supervisor, so the
interpreter only needs torch, msgpack and cloudpickle): creates an instance that puts 1 GiB on
the GPU, calls it a few times (the tensor stays, and each call reuses it), then ends it and
checks that the GPU memory came back. Prints one line per check and exits non-zero if one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check import has_torch, holds_gpu, job_spec
from sandvisor.protocol.frames import encode_frame, read_frame, write_frame
from sandvisor.supervisor.process import JobPipes
from sandvisor.supervisor.templates import TemplateProcess

HOLDS_A_GIB = """
import torch

class Model:
    def __init__(self):
        self.weights = torch.ones(256 * 1024 * 1024, device="cuda")  # 1 GiB of float32
        self.calls = 0

    def step(self):
        self.calls += 1
        self.weights.mul_(2)
        return {"calls": self.calls, "first": float(self.weights[0]),
                "ptr": self.weights.data_ptr()}
"""
FREE_GPU_MIB = (
    "import torch\ndef main():\n    free, _ = torch.cuda.mem_get_info()\n    return free >> 20\n"
)


def answer(fd: int) -> dict[str, Any]:
    """The next created/result/error frame (logs skipped)."""
    while True:
        frame = read_frame(fd)
        if frame["t"] in ("created", "result", "error"):
            return frame


async def free_mib(template: TemplateProcess, env: dict[str, str], jobs: Path) -> int:
    from benchmarks.gpu_check import run

    return int(await run(template, FREE_GPU_MIB, env, jobs))


async def check(python: str) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src")
    env["CUDA_VISIBLE_DEVICES"] = "0"
    results: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory() as jobs_dir:
        jobs = Path(jobs_dir)
        template = await TemplateProcess.start(python, ["torch"], env)
        try:
            before = await free_mib(template, env, jobs)
            request = {
                "execution_type": "class",
                "class_name": "Model",
                "class_code": HOLDS_A_GIB,
                "serialization_format": "json",
            }
            # As an actor process sends it: the whole environment, marked as an actor.
            spec = job_spec(template.python, request, env, jobs / "actor")
            frame = spec.job_frame() | {"actor": True}
            pipes = JobPipes.create()
            pipes.channel.sendall(encode_frame(frame))
            child = await template.fork(pipes)
            pipes.close_child_ends()
            fd = pipes.channel.fileno()
            began = time.perf_counter()
            created = await asyncio.to_thread(answer, fd)
            create_ms = (time.perf_counter() - began) * 1000
            results.append(
                ("instance created on the GPU", created["t"] == "created", f"{create_ms:.0f} ms")
            )
            while_alive = await free_mib(template, env, jobs)
            results.append(
                (
                    "its GiB is held between calls",
                    before - while_alive >= 1024,
                    f"{before - while_alive} MiB",
                )
            )
            replies, times = [], []
            for seq in range(1, 6):
                began = time.perf_counter()
                write_frame(
                    fd,
                    {
                        "t": "call",
                        "seq": seq,
                        "method_name": "step",
                        "args": [],
                        "kwargs": {},
                        "serialization_format": "json",
                    },
                )
                replies.append(await asyncio.to_thread(answer, fd))
                times.append((time.perf_counter() - began) * 1000)
            values = [reply["fields"]["json_result"] for reply in replies]
            same = len({value["ptr"] for value in values}) == 1
            ok = (
                same
                and [v["calls"] for v in values] == [1, 2, 3, 4, 5]
                and values[-1]["first"] == 32.0
            )
            results.append(
                (
                    "state and tensor persist across calls",
                    ok,
                    f"{sorted(times)[2]:.2f} ms per call (p50)",
                )
            )
            results.append(("the actor holds the GPU", holds_gpu(child.pid), ""))
            pipes.channel.close()  # end of stream: the actor leaves
            await child.exited
            pipes.close()
            after = await free_mib(template, env, jobs)
            results.append(
                (
                    "its memory comes back when it ends",
                    after >= before - 64,
                    f"{after} MiB free, {before} before",
                )
            )
            results.append(("template holds no CUDA context", not holds_gpu(template.pid), ""))
        finally:
            await template.stop()
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}  {detail}")
    return all(ok for _, ok, _ in results)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_actor_check")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with torch")
    options = parser.parse_args()
    if not has_torch(options.python):
        sys.exit(f"{options.python} cannot import torch: pass --python with one that can")
    sys.exit(0 if asyncio.run(check(options.python)) else 1)


if __name__ == "__main__":
    main()
