"""How far an env build has got, from its installer's own lines: for the wait notices.

A job waiting for its env hears every ``SANDVISOR_WAIT_NOTICE_INTERVAL_S`` how long it has
waited (``supervisor/heartbeat.py``); this module adds what the build has done. uv says little
when its output is not a terminal, but what it says is enough to count with. Its
non-interactive reporter prints, per astral-sh/uv pull request 11165 (uv 0.5.27 and later; these
exact lines seen from uv 0.13.9)::

    Resolved 24 packages in 648ms
    Downloading torch (846.1MiB)          <- only downloads over 1 MiB, or of unknown size
     Downloaded torch
       Building numpy==2.2.2              <- a source distribution being built
          Built numpy==2.2.2
    Prepared 4 packages in 338ms
    Installed 4 packages in 43ms

Any other installer (apt-get for system dependencies) is summed up by its latest line.
"""

from __future__ import annotations

import re

_RESOLVED = re.compile(r"^Resolved (\d+) packages? in ")
_DOWNLOADING = re.compile(r"^Downloading (\S+)(?: \(([\d.]+)([KMGT]?i?B)\))?$")
_DOWNLOADED = re.compile(r"^Downloaded (\S+)$")
_BUILDING = re.compile(r"^Building (\S+)$")
_BUILT = re.compile(r"^Built (\S+)$")
_PREPARED = re.compile(r"^Prepared (\d+) packages? in ")
_INSTALLED = re.compile(r"^Installed (\d+) packages? in ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: uv's byte units (binary, as its ``human_readable_bytes`` prints them), in bytes.
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

#: At most this many names of unfinished downloads or builds in one notice.
_NAMES_SHOWN = 3


def size_in_bytes(number: str, unit: str) -> int | None:
    """``("846.1", "MiB")`` -> 887_199_334; None for a unit uv does not print."""
    scale = _UNITS.get(unit)
    return None if scale is None else int(float(number) * scale)


def human_size(size: int) -> str:
    """Bytes as uv writes them, one decimal in the largest binary unit under the size."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f} {unit}"
    return f"{size} B"


def _packages(count: int) -> str:
    return f"{count} package" if count == 1 else f"{count} packages"


def _names(pending: list[str]) -> str:
    shown = ", ".join(pending[:_NAMES_SHOWN])
    more = len(pending) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


class InstallProgress:
    """Fed an installer's lines one by one (:meth:`feed`); says where the install is
    (:meth:`summary`). Lines it does not know only become the latest line."""

    def __init__(self) -> None:
        self.resolved: int | None = None
        self.prepared: int | None = None
        self.installed: int | None = None
        #: name -> size in bytes (None: uv did not say), in the order downloads started
        self.downloads: dict[str, int | None] = {}
        self.downloaded: set[str] = set()
        self.building: dict[str, None] = {}  # ordered set of builds not finished
        self.latest: str | None = None

    def feed(self, line: str) -> None:
        """Take one line of the installer's output (surrounding space and colour ignored)."""
        text = _ANSI.sub("", line).strip()
        if not text:
            return
        self.latest = text
        if match := _RESOLVED.match(text):
            self.resolved = int(match[1])
        elif match := _DOWNLOADING.match(text):
            size = size_in_bytes(match[2], match[3]) if match[2] else None
            self.downloads[match[1]] = size
        elif match := _DOWNLOADED.match(text):
            self.downloaded.add(match[1])
        elif match := _BUILDING.match(text):
            self.building[match[1]] = None
        elif match := _BUILT.match(text):
            self.building.pop(match[1], None)
        elif match := _PREPARED.match(text):
            self.prepared = int(match[1])
        elif match := _INSTALLED.match(text):
            self.installed = int(match[1])

    def summary(self) -> str | None:
        """One clause per stage reached, e.g. ``resolved 24 packages; downloaded 120.0 MiB of
        900.0 MiB (torch still downloading)``; the latest line when no uv stage was seen;
        None before any line."""
        if self.installed is not None:
            return f"installed {_packages(self.installed)}, finishing the environment"
        parts = []
        if self.resolved is not None:
            parts.append(f"resolved {_packages(self.resolved)}")
        if self.downloads:
            parts.append(self._downloads())
        if self.building:
            parts.append(f"building {_names(list(self.building))}")
        if self.prepared is not None:
            parts.append(f"prepared {_packages(self.prepared)}, installing")
        if parts:
            return "; ".join(parts)
        return f"last from the installer: {self.latest}" if self.latest else None

    def _downloads(self) -> str:
        pending = [name for name in self.downloads if name not in self.downloaded]
        sizes = self.downloads.values()
        if all(size is not None for size in sizes):
            done = sum(
                size or 0 for name, size in self.downloads.items() if name in self.downloaded
            )
            said = f"downloaded {human_size(done)} of {human_size(sum(s or 0 for s in sizes))}"
        else:
            said = f"downloaded {len(self.downloads) - len(pending)} of {len(self.downloads)} files"
        if pending:
            said += f" ({_names(pending)} still downloading)"
        return said
