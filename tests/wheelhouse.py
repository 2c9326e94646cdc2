"""Tiny pure-Python wheels built offline, and the uv variables that make installs use them alone.

``build_wheel(dir, "tinypkg", "1.0")`` writes ``tinypkg-1.0-py3-none-any.whl``: one module
``tinypkg`` whose ``__version__`` is the version, so a test can check which copy it imported.
``make_wheelhouse(dir)`` writes the set the env tests use (the ``wheelhouse`` fixture).
``repack_installed(dir, "cloudpickle")`` wheels an installed pure-Python distribution as it is.
``uv_sources(source)`` is what makes uv install from a wheelhouse (or a local index) and nothing
else; the ``offline_uv`` fixture applies it to a test.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.utils import canonicalize_name


def build_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    requires: Iterable[str] = (),
    code: str = "",
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write a wheel of module ``name`` (dashes become underscores) into ``directory``;
    ``extra``: more files at the top of the wheel (a ``.pth``, say), path -> text."""
    dist = canonicalize_name(name).replace("-", "_")
    module = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = "\n".join(
        [
            "Metadata-Version: 2.1",
            f"Name: {name}",
            f"Version: {version}",
            *(f"Requires-Dist: {r}" for r in requires),
            "",
        ]
    )
    files = {
        f"{module}.py": f"__version__ = {version!r}\n{code}".encode(),
        f"{info}/METADATA": metadata.encode(),
        **{path: text.encode() for path, text in (extra or {}).items()},
    }
    return _write_wheel(directory, dist, version, files)


def repack_installed(directory: Path, name: str) -> Path:
    """A wheel of the installed distribution ``name`` (pure Python only), its files unchanged."""
    installed = importlib.metadata.distribution(name)
    dist = canonicalize_name(installed.metadata["Name"]).replace("-", "_")
    info = f"{dist}-{installed.version}.dist-info"
    files: dict[str, bytes] = {}
    for path in installed.files or ():
        if path.suffix == ".pyc" or path.name in ("RECORD", "INSTALLER", "REQUESTED", "WHEEL"):
            continue
        # The dist-info directory's spelling varies between installers; a wheel's is fixed.
        parts = (info, *path.parts[1:]) if path.parts[0].endswith(".dist-info") else path.parts
        files["/".join(parts)] = path.locate().read_bytes()
    return _write_wheel(directory, dist, installed.version, files)


def _write_wheel(directory: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    info = f"{dist}-{version}.dist-info"
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: sandvisor-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [f"{path},{_digest(data)},{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,", ""]).encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def make_wheelhouse(directory: Path) -> Path:
    build_wheel(directory, "tinypkg", "1.0")
    build_wheel(directory, "tinypkg", "2.0")
    build_wheel(directory, "tinydep", "1.0", requires=["tinypkg==1.0"])
    build_wheel(directory, "six", "1.16.0")  # the base has six 1.17: a pin must win
    return directory


def _digest(data: bytes) -> str:
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


#: uv's variables that say where packages come from; a test sets or clears all of them at once,
#: so the developer's own settings never decide whether a test reaches the public index.
UV_SOURCE_VARS = (
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_OFFLINE",
)


def uv_sources(source: Path | str) -> dict[str, str]:
    """The uv variables under which installs come from ``source`` alone.

    ``source``: a wheelhouse directory, read with uv's network off (``UV_OFFLINE``: any request
    fails at once), or the URL of a package index served on this machine, which then is the only
    index uv asks. Returns the variables to set; every other name in :data:`UV_SOURCE_VARS` must
    be unset (:func:`with_uv_sources` does both for a whole environment).
    """
    if isinstance(source, Path):
        return {"UV_FIND_LINKS": str(source), "UV_OFFLINE": "1"}
    return {"UV_DEFAULT_INDEX": source}


def with_uv_sources(environ: Mapping[str, str], source: Path | str) -> dict[str, str]:
    """``environ`` with its uv source variables replaced by :func:`uv_sources` of ``source``."""
    kept = {key: value for key, value in environ.items() if key not in UV_SOURCE_VARS}
    return {**kept, **uv_sources(source)}
