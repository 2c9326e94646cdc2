"""``python -m benchmarks`` (``just bench``): every figure of issue 5 in one table.

Figure modules are run in order; each exposes ``async def rows() -> list[Row]``. Modules other
engineers add (``bench_*.py`` with the same function) are run after ours.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import psutil

from benchmarks.common import Row

OURS = ("bench_templates", "bench_load", "bench_process")


def modules() -> list[str]:
    found = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    return [*OURS, *(name for name in found if name not in OURS)]


async def collect(names: list[str]) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            if not hasattr(module, "rows"):
                continue  # a standalone benchmark: python -m benchmarks.<name>
            rows += await module.rows()
        except Exception as exc:  # one broken figure must not hide the others
            rows.append(Row("?", name, "-", note=f"failed: {type(exc).__name__}: {exc}"))
        print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        cpu,
    )
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores ({model}), {memory:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def render(rows: list[Row]) -> str:
    header = ("fig", "measure", "value", "target", "met", "notes")
    cells = [
        (
            r.figure,
            r.measure,
            r.value,
            r.target,
            {True: "yes", False: "NO", None: ""}[r.met],
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header) - 1)]
    lines = []
    for cell in [header, *cells]:
        fixed = "  ".join(text.ljust(width) for text, width in zip(cell, widths, strict=False))
        lines.append(f"{fixed}  {cell[-1]}".rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main() -> None:
    logging.getLogger("sandvisor").setLevel(logging.ERROR)  # preload misses etc. are expected
    names = [a for a in sys.argv[1:]] or modules()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows = asyncio.run(collect(names))
    print(f"sandvisor benchmarks on {machine()}")
    # Other work on the machine moves every figure: say how busy it was.
    print(f"load average (1 min): {load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after")
    print(render(rows))
    print(f"({time.perf_counter() - started:.0f} s; reproduce with `just bench`)")


if __name__ == "__main__":
    main()
