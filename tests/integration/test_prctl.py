"""The prctl calls both sides share: a process becomes a subreaper, and the kernel says so."""

from __future__ import annotations

import subprocess
import sys


def test_a_fresh_process_becomes_a_subreaper_and_its_fork_does_not() -> None:
    probe = (
        "import os, sys\n"
        "from sandvisor.prctl import become_subreaper, is_subreaper\n"
        "before = is_subreaper()\n"
        "became = become_subreaper()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(int(is_subreaper()))\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(before, became, is_subreaper(), bool(os.waitstatus_to_exitcode(status)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "True", "True", "False"], done.stderr
