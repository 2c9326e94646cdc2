"""What a job reports while it runs, as the caller sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stream = Literal["stdout", "stderr", "log", "system"]

#: What marks sandvisor's own lines in a response's output. Added here and nowhere else: the
#: messages themselves (env builds, installs, retries) are plain sentences, and a terminal or a
#: RunPod progress update shows the stream's name instead.
SYSTEM_PREFIX = "[sandvisor] "


@dataclass(frozen=True)
class LogEvent:
    """A chunk of whole lines from one stream of a job (a partial line where another stream
    follows it, or where the job's output ends), in the order the job wrote them.

    ``stream`` is ``stderr`` for what Python's ``sys.stderr`` wrote, ``stdout`` for the rest of
    what reached fds 1 and 2 (one pipe, so raw writes to fd 2, from subprocesses or C code, are
    ``stdout`` too), ``log`` for a logging record or a line an installer (uv, apt-get) printed
    for the job's env (``level`` set), ``system`` for what sandvisor itself says about the job
    (building its env, retries, kills). ``ts`` is the Unix time it was read or recorded.
    """

    stream: Stream
    text: str
    ts: float
    level: str | None = None

    def as_output(self) -> str:
        """The text as it goes into the response's ``stdout``."""
        if self.stream == "log":  # as the job's handler (or an installer) wrote it
            return self.text if self.text.endswith("\n") else f"{self.text}\n"
        if self.stream == "system":
            return (
                f"{SYSTEM_PREFIX}{self.text}"
                if self.text.endswith("\n")
                else f"{SYSTEM_PREFIX}{self.text}\n"
            )
        return self.text
