"""Run a helper program (uv, apt-get) without blocking the event loop, streaming its output.

The program runs in its own session so that, on cancellation, it and whatever it started (a
package build backend, dpkg) are killed together and reaped before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TAIL_LINES = 40
_ERROR_STARTS = ("error", "\u00d7", "E:")  # uv marks errors with a multiplication sign


class ProgramOutput(str):
    """A line the program printed, told apart from what sandvisor itself says about the same
    work (both reach the same log callback): a job shows the one as ``log``, the other as
    ``system``."""


@dataclass(frozen=True)
class StreamedResult:
    program: str
    returncode: int
    tail: tuple[str, ...]  # last lines of the combined output, for error messages

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe_failure(self) -> str:
        """The program's own message, or what killed it when it said nothing."""
        if self.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"killed by signal {-self.returncode}"
        else:
            how = f"exited with code {self.returncode}"
        said = [line for line in self.tail if line.strip()]
        # Start at the program's own error report when there is one, not at its chatter.
        first_error = next(
            (i for i, line in enumerate(said) if line.lstrip().startswith(_ERROR_STARTS)), 0
        )
        said = said[first_error:]
        if not said:
            return f"{self.program} {how}"
        first = said[0].strip().removeprefix("error:").strip()
        return "\n".join([f"{self.program} {how}: {first}", *said[1:]])


async def run_streaming(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    on_log: Callable[[str], None],
    program: str,
) -> StreamedResult:
    """Run ``argv``, stdout and stderr merged; each line goes to ``on_log`` as it comes."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        limit=1024 * 1024,  # resolver errors can be one long line
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            tail.append(line)
            on_log(ProgramOutput(line))
        returncode = await process.wait()
    except BaseException:
        await asyncio.shield(_kill(process))
        raise
    return StreamedResult(program=program, returncode=returncode, tail=tuple(tail))


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
