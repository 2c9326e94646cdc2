"""The ``sandvisor`` command: run | serve | request | envs | doctor (``main.py`` parses).

Imports nothing heavy at module level, so ``sandvisor --help`` answers fast; each command imports
what it needs when it runs.
"""

#: Exit codes of every command: success, the job failed, bad usage or unreadable input.
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
