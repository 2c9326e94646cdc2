"""A deployed Flash app's build artifact, unpacked once into the app dir, atomically and safely.

``flash build`` packs the app (its modules, ``flash_manifest.json``, the packages it installed)
into ``artifact.tar.gz`` with the build dir at the archive's root (``./...``:
``runpod_flash/cli/commands/build.py``, ``create_tarball``). RunPod, and ``flash preview``
(``cli/commands/preview.py``), mount it at ``/root/.runpod/artifact.tar.gz``; worker-flash
extracts it into ``/app`` at start when it sees a Flash deployment (worker-tetra 1.0.0,
``src/unpack_volume.py``, ``src/manifest_reconciliation.py:is_flash_deployment``).

What we do differently:

    artifact --sha256--> digest ---- app dir's marker holds it? -- yes --> done (no extraction)
                                        | no (under a file lock beside the app dir)
                                        v
        staging dir beside the app dir <-- tarfile, every member through strict_filter
                                        | marker written, then one rename
                                        v
                                     app dir

- Atomic: the app appears by one ``rename`` of a complete staging dir; a worker killed while
  extracting leaves only a staging dir, removed by the next one that takes the lock.
- Safe: every member passes Python's ``tarfile.data_filter`` (no path or link out of the target,
  no device files or fifos, no setuid bits, no ownership), and we refuse absolute names outright
  (the data filter would strip the ``/``; a Flash build never writes one).
- Once: concurrent workers on one volume take the lock in turn; the first extracts, the others
  find the marker with the same digest and use its work.
- A bad archive is a :class:`DeploymentError`, never a crash: the worker stays up and answers
  every request with it (see ``deployed.py``).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sandvisor.supervisor.errors import DeploymentError
from sandvisor.supervisor.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

#: Where ``flash preview`` and RunPod mount the artifact (worker-flash's DEFAULT_ARTIFACT_PATH).
DEFAULT_ARTIFACT_PATH = Path("/root/.runpod/artifact.tar.gz")
#: In an unpacked app: the sha256 of the artifact it came from.
MARKER_NAME = ".sandvisor-artifact"
_TRUE = {"1", "true", "yes"}  # worker-flash's spelling of FLASH_DISABLE_UNPACK


def is_flash_deployment(environ: Mapping[str, str]) -> bool:
    """True on an endpoint that ``flash deploy`` (or ``flash preview``) made.

    As worker-flash decides it: ``RUNPOD_ENDPOINT_ID`` is set and so is ``FLASH_RESOURCE_NAME``,
    or ``FLASH_IS_MOTHERSHIP`` is ``true`` (``manifest_reconciliation.is_flash_deployment``).
    """
    flash = environ.get("FLASH_IS_MOTHERSHIP") == "true" or bool(environ.get("FLASH_RESOURCE_NAME"))
    return bool(environ.get("RUNPOD_ENDPOINT_ID")) and flash


def unpack_wanted(environ: Mapping[str, str]) -> bool:
    """A Flash deployment, and ``FLASH_DISABLE_UNPACK`` is not ``1``, ``true`` or ``yes``."""
    disabled = environ.get("FLASH_DISABLE_UNPACK", "").strip().lower() in _TRUE
    return is_flash_deployment(environ) and not disabled


def artifact_path(environ: Mapping[str, str]) -> Path:
    """``FLASH_BUILD_ARTIFACT_PATH``, else :data:`DEFAULT_ARTIFACT_PATH`."""
    return Path(environ.get("FLASH_BUILD_ARTIFACT_PATH") or DEFAULT_ARTIFACT_PATH)


@dataclass(frozen=True)
class Unpacked:
    """An app dir ready to serve: ``digest`` of its artifact; ``extracted`` False when another
    worker (or an earlier start) had already unpacked this same artifact there."""

    app_dir: Path
    digest: str
    extracted: bool


def strict_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Python's ``data`` filter, plus: absolute names are refused rather than made relative.

    Raises ``tarfile.FilterError`` for a member we will not write.
    """
    if member.name.startswith(("/", os.sep)):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


def describe(exc: BaseException) -> str:
    """One line saying what is wrong with an archive, from tarfile's, zlib's or the OS's error."""
    if isinstance(exc, tarfile.FilterError):
        kinds = {
            tarfile.AbsolutePathError: "an absolute path",
            tarfile.OutsideDestinationError: "a path outside the app dir",
            tarfile.SpecialFileError: "a device file or fifo",
            tarfile.AbsoluteLinkError: "a link to an absolute path",
            tarfile.LinkOutsideDestinationError: "a link out of the app dir",
        }
        what = next((text for kind, text in kinds.items() if isinstance(exc, kind)), str(exc))
        return f"unsafe member {exc.tarinfo.name!r}: {what}"
    first_line = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
    if isinstance(exc, EOFError):
        return f"truncated archive ({first_line})"
    if isinstance(exc, tarfile.ReadError):
        return f"not a readable tar archive ({first_line})"
    return f"{type(exc).__name__}: {first_line}"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def marker_digest(app_dir: Path) -> str | None:
    try:
        return (app_dir / MARKER_NAME).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def extract_to(artifact: Path, staging: Path, digest: str) -> None:
    """Extract ``artifact`` into the new dir ``staging`` and mark it; DeploymentError if bad."""
    if not hasattr(tarfile, "data_filter"):  # Python < 3.10.12 / 3.11.4 has no safe filter
        raise DeploymentError("this Python's tarfile has no data filter; cannot unpack safely")
    try:
        with tarfile.open(artifact, mode="r:*") as archive:
            archive.extractall(staging, filter=strict_filter)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DeploymentError(
            f"cannot unpack the build artifact {artifact}: {describe(exc)}"
        ) from exc
    if not (staging / MANIFEST_NAME).is_file():
        raise DeploymentError(f"the build artifact {artifact} has no {MANIFEST_NAME} at its root")
    # Jobs run as other users (identities.py): they must read and traverse the app.
    staging.chmod(0o755)
    (staging / MARKER_NAME).write_text(digest + "\n", encoding="ascii")


def install(staging: Path, app_dir: Path) -> None:
    """Put ``staging`` in ``app_dir``'s place with one rename; an older unpacked app goes aside
    first and is then removed. A dir of other files is never replaced."""
    old: Path | None = None
    if app_dir.exists() and any(app_dir.iterdir()):
        if marker_digest(app_dir) is None:
            raise DeploymentError(
                f"{app_dir} holds files that did not come from a build artifact; point "
                "SANDVISOR_APP_DIR at an empty or new directory"
            )
        old = app_dir.with_name(f".{app_dir.name}.old-{secrets.token_hex(4)}")
        app_dir.rename(old)
    os.replace(staging, app_dir)  # onto a missing or empty dir: one atomic step
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(app_dir: Path) -> None:
    """Staging and old dirs left by a worker that died mid-way (only under the lock)."""
    for pattern in (f".{app_dir.name}.unpack-*", f".{app_dir.name}.old-*"):
        for path in app_dir.parent.glob(pattern):
            log.info("removing %s, left by an earlier unpack", path)
            shutil.rmtree(path, ignore_errors=True)


def unpack_locked(artifact: Path, app_dir: Path) -> Unpacked:
    """The unpack itself, called with the lock held: skip, or extract and install."""
    try:
        digest = file_digest(artifact)
    except FileNotFoundError:
        if marker_digest(app_dir) is not None:
            log.warning("no build artifact at %s; serving the app already in %s", artifact, app_dir)
            return Unpacked(app_dir, marker_digest(app_dir) or "", extracted=False)
        raise DeploymentError(
            f"build artifact {artifact} not found (set FLASH_BUILD_ARTIFACT_PATH, or "
            "FLASH_DISABLE_UNPACK=true to serve the app dir as it is)"
        ) from None
    except OSError as exc:
        raise DeploymentError(f"cannot read the build artifact {artifact}: {exc}") from exc
    if marker_digest(app_dir) == digest:
        return Unpacked(app_dir, digest, extracted=False)
    remove_leftovers(app_dir)
    staging = app_dir.with_name(f".{app_dir.name}.unpack-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        extract_to(artifact, staging, digest)
        install(staging, app_dir)
    except OSError as exc:  # e.g. the app dir is a mount point, or the disk is full
        shutil.rmtree(staging, ignore_errors=True)
        raise DeploymentError(f"cannot install the app in {app_dir}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Unpacked(app_dir, digest, extracted=True)


async def unpack(artifact: Path, app_dir: Path) -> Unpacked:
    """Unpack ``artifact`` into ``app_dir`` unless this very artifact is there already.

    Takes: the artifact's path and the app dir (created with its parent when missing).
    Returns: what was done. Raises :class:`DeploymentError` with a one-line reason for a
    missing, unreadable, truncated or hostile archive, or an app dir it must not replace.
    Guarantees: the app dir is the old app or the whole new one (or, for the instant between two
    renames while an old app is replaced, absent), never a part; workers sharing the app dir's
    filesystem extract one at a time (a ``flock`` beside it, dropped by the kernel if its holder
    dies). Cancelling the caller does not stop an unpack under way: the thread holding the lock
    finishes it, so no other worker takes the lock and removes a staging dir still being filled.
    """
    return await asyncio.to_thread(unpack_blocking, artifact, app_dir.absolute())


def unpack_blocking(artifact: Path, app_dir: Path) -> Unpacked:
    """:func:`unpack` on the calling thread: the lock is waited for with a blocking ``flock``."""
    try:
        app_dir.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            app_dir.with_name(f".{app_dir.name}.unpack.lock"),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
    except OSError as exc:
        raise DeploymentError(f"cannot lock {app_dir.parent} to unpack the app: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # never unlinked, unlike the env store's lock files
        return unpack_locked(artifact, app_dir)
    finally:
        os.close(fd)  # drops the lock
