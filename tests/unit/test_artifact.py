"""Unpacking a deployed app's build artifact: detection, atomic install, hostile archives."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sandvisor.supervisor.errors import DeploymentError
from sandvisor.worker import artifact as artifact_module
from sandvisor.worker.artifact import (
    DEFAULT_ARTIFACT_PATH,
    MARKER_NAME,
    artifact_path,
    is_flash_deployment,
    unpack,
    unpack_wanted,
)

MANIFEST = {"version": "1.0", "resources": {}, "function_registry": {}}


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x = 1\n") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def make_artifact(path: Path, extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """A tar.gz laid out as ``flash build`` lays it out: ``./`` first, manifest at the root."""
    with tarfile.open(path, "w:gz") as tar:
        root = tarfile.TarInfo(".")
        root.type = tarfile.DIRTYPE
        root.mode = 0o755
        tar.addfile(root)
        add_file(tar, "./flash_manifest.json", json.dumps(MANIFEST).encode())
        add_file(tar, "./workers/__init__.py", b"")
        add_file(tar, "./workers/gpu.py", b"def embed(x):\n    return x\n")
        if extra is not None:
            extra(tar)
    return path


def test_detection_follows_worker_flash() -> None:
    assert is_flash_deployment({"RUNPOD_ENDPOINT_ID": "e", "FLASH_RESOURCE_NAME": "gpu"})
    assert is_flash_deployment({"RUNPOD_ENDPOINT_ID": "e", "FLASH_IS_MOTHERSHIP": "true"})
    assert not is_flash_deployment({"FLASH_RESOURCE_NAME": "gpu"})  # not on an endpoint
    assert not is_flash_deployment({"RUNPOD_ENDPOINT_ID": "e"})  # live serverless
    deployed = {"RUNPOD_ENDPOINT_ID": "e", "FLASH_RESOURCE_NAME": "gpu"}
    assert unpack_wanted(deployed)
    for value in ("1", "true", "YES"):
        assert not unpack_wanted({**deployed, "FLASH_DISABLE_UNPACK": value})
    assert unpack_wanted({**deployed, "FLASH_DISABLE_UNPACK": "0"})
    assert artifact_path({}) == DEFAULT_ARTIFACT_PATH
    assert artifact_path({"FLASH_BUILD_ARTIFACT_PATH": "/x.tgz"}) == Path("/x.tgz")


async def test_unpacks_once_and_marks_the_app(tmp_path: Path) -> None:
    archive = make_artifact(tmp_path / "artifact.tar.gz")
    app = tmp_path / "vol" / "app"
    first = await unpack(archive, app)
    assert first.extracted
    assert (app / "workers" / "gpu.py").read_text().startswith("def embed")
    assert (app / MARKER_NAME).read_text().strip() == first.digest
    assert app.stat().st_mode & 0o755 == 0o755  # jobs run as other users
    again = await unpack(archive, app)
    assert not again.extracted and again.digest == first.digest
    assert sorted(p.name for p in app.parent.iterdir()) == ["app", ".app.unpack.lock"][::-1]


async def test_a_new_artifact_replaces_the_old_app_whole(tmp_path: Path) -> None:
    app = tmp_path / "app"
    await unpack(make_artifact(tmp_path / "a.tgz", lambda t: add_file(t, "./old.py")), app)
    second = await unpack(make_artifact(tmp_path / "b.tgz", lambda t: add_file(t, "./new.py")), app)
    assert second.extracted
    assert (app / "new.py").exists() and not (app / "old.py").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".app.")] == [
        ".app.unpack.lock"
    ]


async def test_concurrent_workers_extract_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_artifact(tmp_path / "artifact.tar.gz")
    calls = []
    real = artifact_module.extract_to
    monkeypatch.setattr(artifact_module, "extract_to", lambda *a: (calls.append(a), real(*a))[1])
    results = await asyncio.gather(*(unpack(archive, tmp_path / "app") for _ in range(4)))
    assert len(calls) == 1
    assert sum(result.extracted for result in results) == 1


async def test_a_killed_unpack_leaves_nothing_that_gets_used(tmp_path: Path) -> None:
    app = tmp_path / "app"
    half = tmp_path / ".app.unpack-deadbeef"  # what a worker killed mid-extraction leaves
    (half / "workers").mkdir(parents=True)
    (half / "flash_manifest.json").write_text("{}")
    await unpack(make_artifact(tmp_path / "artifact.tar.gz"), app)
    assert not half.exists()
    assert json.loads((app / "flash_manifest.json").read_text()) == MANIFEST


async def test_a_dir_of_other_files_is_never_replaced(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "mine.txt").write_text("keep me")
    with pytest.raises(DeploymentError, match="did not come from a build artifact"):
        await unpack(make_artifact(tmp_path / "artifact.tar.gz"), app)
    assert (app / "mine.txt").read_text() == "keep me"


async def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match=r"not found .*FLASH_DISABLE_UNPACK"):
        await unpack(tmp_path / "nope.tgz", tmp_path / "app")
    # an app unpacked earlier is still served when the artifact went away
    archive = make_artifact(tmp_path / "artifact.tar.gz")
    await unpack(archive, tmp_path / "app")
    archive.unlink()
    assert not (await unpack(archive, tmp_path / "app")).extracted


def _truncated(path: Path) -> Path:
    data = make_artifact(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _not_a_tar(path: Path) -> Path:
    path.write_bytes(b"this is not an archive\n" * 100)
    return path


HOSTILE: list[tuple[str, Callable[[Path], Path], str]] = [
    (
        "dot-dot path",
        lambda p: make_artifact(p, lambda t: add_file(t, "../escaped.py")),
        r"unsafe member '../escaped.py': a path outside the app dir",
    ),
    (
        "deep dot-dot path",
        lambda p: make_artifact(p, lambda t: add_file(t, "./workers/../../../escaped.py")),
        r"a path outside the app dir",
    ),
    (
        "absolute path",
        lambda p: make_artifact(p, lambda t: add_file(t, "/tmp/escaped.py")),
        r"unsafe member '/tmp/escaped.py': an absolute path",
    ),
    (
        "symlink out",
        lambda p: make_artifact(p, lambda t: add_special(t, "./out", tarfile.SYMTYPE, "../..")),
        r"unsafe member './out': a link out of the app dir",
    ),
    (
        "absolute symlink",
        lambda p: make_artifact(
            p, lambda t: add_special(t, "./passwd", tarfile.SYMTYPE, "/etc/passwd")
        ),
        r"a link to an absolute path",
    ),
    (
        "hardlink out",
        lambda p: make_artifact(
            p, lambda t: add_special(t, "./hard", tarfile.LNKTYPE, "../../etc/passwd")
        ),
        r"unsafe member './hard': a link out of the app dir",
    ),
    (
        "character device",
        lambda p: make_artifact(p, lambda t: add_special(t, "./null", tarfile.CHRTYPE)),
        r"unsafe member './null': a device file or fifo",
    ),
    (
        "block device",
        lambda p: make_artifact(p, lambda t: add_special(t, "./sda", tarfile.BLKTYPE)),
        r"a device file or fifo",
    ),
    (
        "fifo",
        lambda p: make_artifact(p, lambda t: add_special(t, "./pipe", tarfile.FIFOTYPE)),
        r"unsafe member './pipe': a device file or fifo",
    ),
    ("truncated archive", _truncated, r"truncated archive|not a readable tar"),
    ("not a tar", _not_a_tar, r"not a readable tar archive"),
    (
        "no manifest",
        lambda p: (tarfile.open(p, "w:gz").close(), p)[1],
        r"has no flash_manifest.json at its root",
    ),
]


@pytest.mark.parametrize(
    ("archive", "reason"), [(m, r) for _, m, r in HOSTILE], ids=[h[0] for h in HOSTILE]
)
async def test_hostile_or_broken_archives_are_refused_whole(
    tmp_path: Path, archive: Callable[[Path], Path], reason: str
) -> None:
    bad = archive(tmp_path / "artifact.tar.gz")
    app = tmp_path / "vol" / "app"
    with pytest.raises(DeploymentError, match=reason) as caught:
        await unpack(bad, app)
    assert "\n" not in caught.value.summary
    assert not app.exists()  # nothing half-made is left to be used
    assert [p.name for p in app.parent.iterdir()] == [".app.unpack.lock"]
    assert not (tmp_path / "escaped.py").exists() and not Path("/tmp/escaped.py").exists()


UNPACK_IN_A_PROCESS = """
import asyncio, sys
from pathlib import Path
from sandvisor.worker.artifact import unpack
done = asyncio.run(unpack(Path(sys.argv[1]), Path(sys.argv[2])))
print("extracted" if done.extracted else "reused")
"""


def test_workers_in_separate_processes_extract_once(tmp_path: Path) -> None:
    archive = make_artifact(tmp_path / "artifact.tar.gz")
    app = tmp_path / "volume" / "app"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", UNPACK_IN_A_PROCESS, str(archive), str(app)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    said = sorted(worker.communicate(timeout=60)[0].strip() for worker in workers)
    assert said == ["extracted", "reused", "reused"]
    assert (app / "workers" / "gpu.py").is_file()


async def test_an_empty_app_dir_is_filled(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    assert (await unpack(make_artifact(tmp_path / "a.tgz"), tmp_path / "app")).extracted
    assert (tmp_path / "app" / "flash_manifest.json").is_file()
