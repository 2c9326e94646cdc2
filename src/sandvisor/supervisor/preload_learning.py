"""Which modules an env's template should import ahead of its jobs, learned from what they import.

A job child forked from a template reports the top-level modules it imported that its template
had not (``sandbox_child/imports.py``). :class:`PreloadLearner` counts them per env; a module that
``learn_after`` jobs imported becomes a *candidate*, which the pool tries by starting a template
that imports it too (``templates.py``). A template that came up clean makes its candidates
*learned*; one whose import failed, started a thread, opened a GPU device, initialized CUDA or
grew the template past its caps makes them *rejected*, never tried again. Learned and rejected
modules are kept in a small JSON file, so a restarted worker's first template imports them.

Nothing here imports a module or touches a process; the pool does, off any job's path.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

#: The file's format; a file of another version is ignored (learning starts over).
FORMAT = 1


def record_path(store: Path, python: str | Path) -> Path:
    """Where the learned preloads of the env whose interpreter is ``python`` are kept, in the
    directory ``store`` (``Settings.preloads_dir``): the record lives and dies with its env."""
    return store / f"{hashlib.sha256(str(python).encode()).hexdigest()[:16]}.json"


class PreloadLearner:
    """What one env's jobs import, counted, and what its template learned or refused.

    ``path``: where the learned and rejected lists are kept (None: not kept). ``forced``: the
    configured preloads (``SANDVISOR_PRELOAD``), always imported, never counted. ``learn_after``:
    how many jobs must import a module before it is tried. ``max_modules``: at most this many
    learned modules per env. ``max_counted``: at most this many names counted at once; over it,
    the names seen once are forgotten (and, were that not enough, all but the most seen), so
    what jobs report, honestly or not, never grows the worker's memory without bound.
    """

    def __init__(
        self,
        path: Path | None,
        forced: Iterable[str] = (),
        learn_after: int = 2,
        max_modules: int = 32,
        max_counted: int = 4096,
    ) -> None:
        self.path = path
        self.forced = list(forced)
        self.learn_after = max(1, learn_after)
        self.max_modules = max(0, max_modules)
        self.max_counted = max(1, max_counted)
        self.learned: list[str] = []
        self.rejected: dict[str, str] = {}  # module -> why
        self._counts: collections.Counter[str] = collections.Counter()
        self._trying: set[str] = set()
        self._load()

    @property
    def preloads(self) -> list[str]:
        """What a template of this env imports: the forced list, then the learned one."""
        return self.forced + [name for name in self.learned if name not in self.forced]

    def observe(self, modules: Iterable[str]) -> list[str]:
        """Count one job's imports (each name once); the modules that have just become
        candidates (now being tried: :meth:`accept`, :meth:`reject` or :meth:`abandon` each of
        them later)."""
        known = set(self.forced) | set(self.learned) | set(self.rejected) | self._trying
        room = self.max_modules - len(self.learned) - len(self._trying)
        ready: list[str] = []
        for name in dict.fromkeys(modules):
            if name in known or not name.isidentifier():
                continue
            self._counts[name] += 1
            if self._counts[name] >= self.learn_after and len(ready) < room:
                ready.append(name)
        self._trying.update(ready)
        if len(self._counts) > self.max_counted:
            self._forget()
        return ready

    def _forget(self) -> None:
        """Over ``max_counted`` names: forget those seen once, then, if still over, all but the
        most seen (ties: the first counted stay)."""
        counts = collections.Counter({n: c for n, c in self._counts.items() if c > 1})
        if len(counts) > self.max_counted:
            counts = collections.Counter(dict(counts.most_common(self.max_counted)))
        self._counts = counts

    def accept(self, modules: Iterable[str]) -> None:
        """Candidates a template imported cleanly: learned, and kept."""
        for name in modules:
            self._trying.discard(name)
            if name not in self.learned:
                self.learned.append(name)
        self._save()

    def reject(self, modules: Iterable[str], why: str) -> None:
        """Candidates (or learned modules) a template must not import: never tried again."""
        for name in modules:
            self._trying.discard(name)
            if name in self.learned:
                self.learned.remove(name)
            self.rejected[name] = why
            log.info("preload %s refused: %s", name, why)
        self._save()

    def abandon(self, modules: Iterable[str]) -> None:
        """Candidates whose try ended without a verdict (the pool closed): counted afresh."""
        for name in modules:
            self._trying.discard(name)
            self._counts.pop(name, None)

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring learned preloads in %s: %s", self.path, exc)
            return
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return
        learned, rejected = data.get("learned"), data.get("rejected")
        if isinstance(learned, list):
            self.learned = [n for n in learned if isinstance(n, str) and n.isidentifier()]
        if isinstance(rejected, dict):
            self.rejected = {str(k): str(v) for k, v in rejected.items()}
        self.learned = [n for n in self.learned if n not in self.rejected][: self.max_modules]

    def _save(self) -> None:
        """Write the lists atomically (a temp file renamed over the old one); a failure to
        write is logged, not raised: learning is an optimization."""
        if self.path is None:
            return
        data = {"format": FORMAT, "learned": self.learned, "rejected": self.rejected}
        temp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".preload-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(temp, self.path)
        except OSError as exc:
            log.warning("cannot keep learned preloads in %s: %s", self.path, exc)
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
