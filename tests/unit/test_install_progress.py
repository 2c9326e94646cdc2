"""What a wait notice says of an env build, from the installer's own lines (uv's non-interactive
reporter as uv 0.13.9 prints it; apt-get's lines only as the latest line)."""

from __future__ import annotations

import pytest

from sandvisor.supervisor.envs.install_progress import InstallProgress, human_size, size_in_bytes

CASES = [
    pytest.param([], None, id="nothing-yet"),
    pytest.param(["", "   "], None, id="blank-lines-only"),
    pytest.param(
        ["Using Python 3.11.7 environment at: /envs/x"],
        "last from the installer: Using Python 3.11.7 environment at: /envs/x",
        id="no-stage-yet-the-latest-line",
    ),
    pytest.param(["Resolved 24 packages in 648ms"], "resolved 24 packages", id="resolved"),
    pytest.param(["Resolved 1 package in 140ms"], "resolved 1 package", id="resolved-one"),
    pytest.param(
        [
            "Resolved 4 packages in 259ms",
            "Downloading pandas (11.8MiB)",
            "Downloading numpy (16.1MiB)",
        ],
        "resolved 4 packages; downloaded 0 B of 27.9 MiB (pandas, numpy still downloading)",
        id="downloads-started",
    ),
    pytest.param(
        [
            "Resolved 4 packages in 259ms",
            "Downloading pandas (11.8MiB)",
            "Downloading numpy (16.1MiB)",
            " Downloaded pandas",
        ],
        "resolved 4 packages; downloaded 11.8 MiB of 27.9 MiB (numpy still downloading)",
        id="one-download-done",
    ),
    pytest.param(
        ["Downloading torch (846.1MiB)", "Downloading nvidia-cudnn-cu12 (1.2GiB)"],
        "downloaded 0 B of 2.0 GiB (torch, nvidia-cudnn-cu12 still downloading)",
        id="gib-sized",
    ),
    pytest.param(
        [f"Downloading pkg{i} (2.0MiB)" for i in range(5)],
        "downloaded 0 B of 10.0 MiB (pkg0, pkg1, pkg2 and 2 more still downloading)",
        id="many-downloads-named-three",
    ),
    pytest.param(
        ["Downloading mystery", "Downloading numpy (16.1MiB)", " Downloaded mystery"],
        "downloaded 1 of 2 files (numpy still downloading)",
        id="a-size-unknown-counts-files",
    ),
    pytest.param(
        ["Resolved 1 package in 221ms", "   Building numpy==2.2.2"],
        "resolved 1 package; building numpy==2.2.2",
        id="building-a-sdist",
    ),
    pytest.param(
        ["   Building numpy==2.2.2", "      Built numpy==2.2.2"],
        "last from the installer: Built numpy==2.2.2",
        id="build-finished",
    ),
    pytest.param(
        [
            "Resolved 4 packages in 259ms",
            "Downloading numpy (16.1MiB)",
            " Downloaded numpy",
            "Prepared 4 packages in 338ms",
        ],
        "resolved 4 packages; downloaded 16.1 MiB of 16.1 MiB; prepared 4 packages, installing",
        id="prepared",
    ),
    pytest.param(
        [
            "Resolved 4 packages in 259ms",
            "Prepared 4 packages in 338ms",
            "Installed 4 packages in 43ms",
            " + numpy==2.4.6",
        ],
        "installed 4 packages, finishing the environment",
        id="installed",
    ),
    pytest.param(
        ["\x1b[1mResolved\x1b[0m 2 packages in 5ms"],
        "resolved 2 packages",
        id="colour-ignored",
    ),
    pytest.param(
        ["Get:1 http://deb.example/debian bookworm/main amd64 libgomp1 amd64 12.2.0 [116 kB]"],
        "last from the installer: Get:1 http://deb.example/debian bookworm/main amd64 libgomp1 amd64 12.2.0 [116 kB]",
        id="apt-get-latest-line",
    ),
]


@pytest.mark.parametrize(("lines", "summary"), CASES)
def test_a_build_is_summed_up_from_its_installer_lines(
    lines: list[str], summary: str | None
) -> None:
    progress = InstallProgress()
    for line in lines:
        progress.feed(line)
    assert progress.summary() == summary


@pytest.mark.parametrize(
    ("number", "unit", "size"),
    [
        ("100", "B", 100),
        ("512.0", "KiB", 512 * 1024),
        ("16.1", "MiB", int(16.1 * 2**20)),
        ("1.2", "GiB", int(1.2 * 2**30)),
        ("1.0", "XB", None),
    ],
)
def test_uv_sizes_are_read_in_binary_units(number: str, unit: str, size: int | None) -> None:
    assert size_in_bytes(number, unit) == size


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (int(16.1 * 2**20), "16.1 MiB"),
        (3 * 2**30, "3.0 GiB"),
    ],
)
def test_sizes_are_shown_as_uv_shows_them(size: int, shown: str) -> None:
    assert human_size(size) == shown
