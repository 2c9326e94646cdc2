"""On a GPU machine: what CUDA-warm spares save a job whose first op is a CUDA kernel.

    python -m benchmarks.gpu_warm_check [jobs]

Through ``Supervisor.run`` in this interpreter (it needs torch), with torch preloaded in the
template and one GPU per job, times ``jobs`` sequential jobs (default 30, after 3 untimed) whose
first line runs a kernel, in three runs: warm spares off (each job creates its CUDA context),
driver-warm (``SANDVISOR_CUDA_WARM_SPARES``, the default), and torch-warm
(``SANDVISOR_CUDA_WARMUP=torch``). Then a 4096x4096 float32 matmul loop inside a job against
the same loop in a bare ``python``. Prints one line per figure with its target from the issue:
first-op job p50 <= 30 ms, matmul >= 99% of bare. Exits non-zero without torch or a GPU.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandvisor.supervisor.core import Supervisor
from sandvisor.supervisor.settings import Settings

FIRST_OP = """
import torch
def main():
    return float(torch.ones(1024, device="cuda").sum())
"""
MATMUL = """
import time, torch
def main(n=4096, rounds=50):
    a = torch.randn(n, n, device="cuda")
    (a @ a).sum().item()  # cuBLAS handle and kernels loaded before the clock
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(rounds):
        b = a @ a
    torch.cuda.synchronize()
    return 2 * n**3 * rounds / (time.perf_counter() - started) / 1e12
"""
BARE = MATMUL + "\nprint(main())\n"


def request(code: str) -> dict[str, Any]:
    return {"function_name": "main", "function_code": code, "serialization_format": "json"}


async def first_op_ms(home: Path, jobs: int, **settings: Any) -> list[float]:
    values = {"home": home, "preload": ["torch"], **settings}
    async with Supervisor(Settings.from_env(environ={}, **values)) as sup:
        times = []
        for index in range(jobs + 3):
            started = time.perf_counter()
            response = await sup.run(request(FIRST_OP))
            if not response.success:
                raise SystemExit(f"a GPU job failed: {response.error}")
            if index >= 3:
                times.append((time.perf_counter() - started) * 1000)
            # The next job's spare is warmed once this one's GPU is free: give it the time a
            # worker has between jobs (a queue's next job is rarely instant).
            await asyncio.sleep(0.5)
        return times


async def main(jobs: int) -> None:
    try:
        import torch
    except ImportError:
        raise SystemExit("needs torch in this interpreter") from None
    if not torch.cuda.is_available():
        raise SystemExit("needs a GPU")
    home = Path(tempfile.mkdtemp(prefix="sandvisor-gpu-warm-"))
    runs = {
        "cold (warm spares off)": {"cuda_warm_spares": False},
        "driver-warm spare": {},
        "torch-warm spare": {"cuda_warmup": "torch"},
    }
    for name, settings in runs.items():
        times = await first_op_ms(home, jobs, **settings)
        p50 = statistics.median(times)
        print(f"first CUDA op in a job, {name}: p50 {p50:.1f} ms (target <= 30 ms), n={jobs}")
    async with Supervisor(Settings.from_env(environ={}, home=home, preload=["torch"])) as sup:
        response = await sup.run(request(MATMUL))
        in_job = float(response.json_result)
    bare = float(
        subprocess.run(
            [sys.executable, "-c", BARE], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    )
    print(
        f"matmul in a job: {in_job:.1f} TFLOP/s, bare python {bare:.1f}: "
        f"{in_job / bare:.1%} (target >= 99%)"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
