"""The child's environment: secrets removed, named ones passed, what a child needs added."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandvisor.supervisor import policy
from sandvisor.supervisor.envs import EnvLease
from sandvisor.supervisor.gpus import Gpu, GpuPool
from sandvisor.supervisor.policy import child_environment, is_secret, job_environment
from sandvisor.supervisor.proctree import JOB_ENV_VAR
from sandvisor.supervisor.settings import Settings

WORKER_ENV = {
    "PATH": "/opt/bin:/usr/bin",
    "HOME": "/root",
    "RUNPOD_API_KEY": "rpa_secret",
    "RUNPOD_AI_API_KEY": "rpa_secret2",
    "RUNPOD_WEBHOOK_GET_JOB": "https://api/job-take/$ID?x=1",
    "RUNPOD_WEBHOOK_POST_OUTPUT": "https://api/job-done",
    "RUNPOD_POD_ID": "pod-1",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "AWS_REGION": "eu",
    "HF_TOKEN": "hf_x",
    "GITHUB_TOKEN": "gh",
    "TOKENIZERS_PARALLELISM": "false",
    "MY_COMPANY_KEY": "k",
    "SANDVISOR_MEMORY_MB": "100",
    "PYTHONINSPECT": "1",
    "VIRTUAL_ENV": "/work/.venv",
    "CUDA_HOME": "/usr/local/cuda",
}


def test_worker_secrets_never_reach_the_child() -> None:
    env = child_environment(Settings.from_env({}), WORKER_ENV)
    for name in (
        "RUNPOD_API_KEY",
        "RUNPOD_AI_API_KEY",
        "RUNPOD_WEBHOOK_GET_JOB",
        "RUNPOD_WEBHOOK_POST_OUTPUT",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "HF_TOKEN",
        "GITHUB_TOKEN",
    ):
        assert name not in env, name
    assert "rpa_secret" not in env.values()


def test_ordinary_variables_are_kept() -> None:
    env = child_environment(Settings.from_env({}), WORKER_ENV)
    assert env["PATH"] == "/opt/bin:/usr/bin"
    assert env["RUNPOD_POD_ID"] == "pod-1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["CUDA_HOME"] == "/usr/local/cuda"


def test_configured_secrets_and_pass_vars() -> None:
    settings = Settings.from_env(
        {"SANDVISOR_SECRET_VARS": "MY_COMPANY_*", "SANDVISOR_PASS_VARS": "HF_TOKEN,AWS_REGION"}
    )
    env = child_environment(settings, WORKER_ENV)
    assert "MY_COMPANY_KEY" not in env
    assert env["HF_TOKEN"] == "hf_x"
    assert env["AWS_REGION"] == "eu"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert is_secret("GITHUB_TOKEN", settings)


def test_supervisor_and_interpreter_settings_stay_behind() -> None:
    env = child_environment(Settings.from_env({}), WORKER_ENV)
    assert not any(name.startswith("SANDVISOR_") for name in env)
    assert "PYTHONINSPECT" not in env
    assert "VIRTUAL_ENV" not in env


def test_a_child_gets_what_it_needs_from_an_empty_environment() -> None:
    env = child_environment(Settings.from_env({}), {})
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].endswith("/bin")
    assert env["HOME"]
    assert env["LANG"] == "C.UTF-8"


def test_the_worker_environment_is_not_modified() -> None:
    before = dict(WORKER_ENV)
    child_environment(Settings.from_env({}), WORKER_ENV)
    assert before == WORKER_ENV


def test_a_job_environment_is_the_base_its_mark_its_venv_and_its_gpus(tmp_path: Path) -> None:
    base = child_environment(Settings.from_env({}), WORKER_ENV)
    venv = EnvLease(key="k", python=tmp_path / "bin" / "python", prefix=tmp_path)
    lease = GpuPool([Gpu(0), Gpu(1)]).try_acquire(1)
    assert lease is not None
    env = job_environment(base, "job-1", venv, lease)
    assert env[JOB_ENV_VAR] == "job-1"
    assert env["VIRTUAL_ENV"] == str(tmp_path)
    assert env["PATH"] == f"{tmp_path / 'bin'}:{base['PATH']}"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert JOB_ENV_VAR not in base  # a new dict: the shared base is left alone
    assert job_environment(base, "job-2") == base | {JOB_ENV_VAR: "job-2"}


def test_model_caches_go_to_the_volume_unless_the_worker_names_a_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_env({}, home=tmp_path)
    monkeypatch.setattr(policy, "volume_present", lambda: True)
    assert child_environment(settings, WORKER_ENV)["HF_HOME"] == str(tmp_path / "huggingface")
    own = WORKER_ENV | {"HF_HOME": "/models"}
    assert child_environment(settings, own)["HF_HOME"] == "/models"
    monkeypatch.setattr(policy, "volume_present", lambda: False)
    assert "HF_HOME" not in child_environment(settings, WORKER_ENV)


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("RUNPOD_API_KEY", "k", True),
        ("runpod_api_key", "k", True),
        ("GITHUB_TOKEN", "t", True),
        ("TOKEN", "t", True),
        ("API_KEY", "k", True),
        ("SECRET", "s", True),
        ("KAGGLE_KEY", "k", True),
        ("PRIVATE_KEY", "k", True),
        ("DB_PASS", "p", True),
        ("SMTP_PASSWD", "p", True),
        ("PASSWORD", "p", True),
        ("PASSWD", "p", True),
        ("APP_SECRETS", "s", True),
        ("SENTRY_DSN", "https://k@o.example/1", True),
        ("AZURE_CONNECTION_STRING", "x", True),
        ("DATABASE_URL", "sqlite:///x.db", True),
        ("REDIS_URL", "redis://:hunter2@cache:6379/0", True),
        ("PIP_INDEX_URL", "https://user:tok@index.example/simple", True),
        ("TOKENIZERS_PARALLELISM", "false", False),
        ("PWD", "/app", False),
        ("KEYRING_BACKEND", "null", False),
        ("REDIS_URL", "redis://cache:6379/0", False),
        ("HOMEPAGE", "https://example.com/a:b", False),
    ],
)
def test_secrets_are_known_by_name_in_any_case_and_by_a_url_with_a_password(
    name: str, value: str, secret: bool
) -> None:
    settings = Settings.from_env({})
    assert is_secret(name, settings, value) is secret
    assert (name in child_environment(settings, {name: value})) is not secret
