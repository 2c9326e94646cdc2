"""What an env's template learns to preload from its jobs' imports, and what it keeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandvisor.supervisor.preload_learning import FORMAT, PreloadLearner
from sandvisor.supervisor.preload_trials import trial_problem
from sandvisor.supervisor.template_ready import TemplateReady


def test_a_module_becomes_a_candidate_once_enough_jobs_imported_it() -> None:
    learner = PreloadLearner(None, learn_after=3)
    assert learner.observe(["numpy", "pandas"]) == []
    assert learner.observe(["numpy"]) == []
    assert learner.observe(["numpy", "pandas"]) == ["numpy"]
    assert learner.observe(["numpy", "pandas"]) == ["pandas"]  # numpy is being tried
    assert learner.observe(["numpy", "pandas"]) == []


@pytest.mark.parametrize(
    ("setup", "imports", "expected"),
    [
        pytest.param({"forced": ["numpy"]}, ["numpy"], [], id="forced-is-never-counted"),
        pytest.param({"learned": ["numpy"]}, ["numpy"], [], id="learned-is-not-tried-again"),
        pytest.param({"rejected": ["numpy"]}, ["numpy"], [], id="rejected-is-never-tried"),
        pytest.param({}, ["not-a-name", "a.b", ""], [], id="not-module-names"),
        pytest.param({"max_modules": 1, "learned": ["scipy"]}, ["numpy"], [], id="cap-reached"),
        pytest.param({"max_modules": 2}, ["a", "b", "c"], ["a", "b"], id="cap-cuts-a-batch"),
        pytest.param({}, ["a", "b"], ["a", "b"], id="several-at-once"),
    ],
)
def test_what_is_never_a_candidate(
    setup: dict[str, Any], imports: list[str], expected: list[str]
) -> None:
    learner = PreloadLearner(
        None, setup.get("forced", ()), learn_after=1, max_modules=setup.get("max_modules", 32)
    )
    learner.accept(setup.get("learned", []))
    learner.reject(setup.get("rejected", []), "test")
    assert learner.observe(imports) == expected


def test_learned_and_rejected_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store" / "env.json"
    first = PreloadLearner(path, ["forced_mod"], learn_after=1)
    assert first.observe(["numpy", "threaded", "other"]) == ["numpy", "threaded", "other"]
    first.accept(["numpy"])
    first.reject(["threaded"], "it started threads on import (worker)")
    first.abandon(["other"])
    again = PreloadLearner(path, ["forced_mod"], learn_after=1)
    assert again.learned == ["numpy"]
    assert again.rejected == {"threaded": "it started threads on import (worker)"}
    assert again.preloads == ["forced_mod", "numpy"]
    assert again.observe(["other", "threaded", "numpy"]) == ["other"]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"format": FORMAT + 1, "learned": ["numpy"]}),
        json.dumps({"format": FORMAT, "learned": "numpy", "rejected": []}),
    ],
    ids=["garbage", "not-an-object", "other-format", "wrong-types"],
)
def test_a_bad_file_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "env.json"
    path.write_text(content)
    learner = PreloadLearner(path, learn_after=1)
    assert learner.learned == [] and learner.observe(["numpy"]) == ["numpy"]


def test_a_learned_module_rejected_later_leaves_the_list(tmp_path: Path) -> None:
    learner = PreloadLearner(tmp_path / "env.json", learn_after=1)
    learner.accept(["numpy", "scipy"])
    learner.reject(["numpy"], "the template did not start with it")
    assert PreloadLearner(tmp_path / "env.json").learned == ["scipy"]


def test_an_unwritable_store_only_costs_the_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    learner = PreloadLearner(blocker / "env.json", learn_after=1)  # its parent is a file
    learner.accept(["numpy"])
    assert learner.learned == ["numpy"]


def _template(**fields: Any) -> TemplateReady:
    return TemplateReady(**({"rss_kb": 1024} | fields))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, None),
        ({"cuda_initialized": True}, "it initialized CUDA on import"),
        ({"device_open": "/dev/nvidiactl"}, "it opened /dev/nvidiactl on import"),
        ({"threads": ["pool-1", "watcher"]}, "it started threads on import (pool-1, watcher)"),
        ({"rss_kb": 2049 * 1024}, "the template grew to 2049 MiB (cap 2048 MiB)"),
        ({"rss_kb": 2048 * 1024}, None),
    ],
)
def test_a_trial_template_is_refused_for_what_a_fork_cannot_carry(
    fields: dict[str, Any], problem: str | None
) -> None:
    assert trial_problem(_template(**fields), max_rss_mb=2048) == problem


def test_the_counter_forgets_names_seen_once_when_over_its_cap() -> None:
    learner = PreloadLearner(None, learn_after=3, max_counted=10)
    learner.observe(["numpy", "numpy", "numpy"])  # one job: counted once
    assert learner._counts["numpy"] == 1
    learner.observe(["numpy"])
    for job in range(20):  # a flood of names each seen once
        learner.observe([f"junk{job}_{i}" for i in range(5)])
        assert len(learner._counts) <= 10
    assert learner._counts["numpy"] == 2  # seen twice: kept
    assert learner.observe(["numpy"]) == ["numpy"]


def test_the_counter_keeps_the_most_seen_when_all_are_seen_often() -> None:
    learner = PreloadLearner(None, learn_after=100, max_counted=3)
    for _ in range(2):
        learner.observe(["a", "b", "c", "d", "e"])
    learner.observe(["a", "b"])
    assert set(learner._counts) <= {"a", "b", "c", "d", "e"} and len(learner._counts) <= 3
    assert {"a", "b"} <= set(learner._counts)
