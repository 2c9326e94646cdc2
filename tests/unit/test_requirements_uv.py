"""What uv sees of the supervisor's environment when it builds an env."""

from __future__ import annotations

from pathlib import Path

from sandvisor.supervisor.envs.uv import uv_environ
from sandvisor.supervisor.settings import Settings


def test_uv_gets_our_uv_settings_but_not_secrets_or_redirections(tmp_path: Path) -> None:
    settings = Settings.from_env(environ={}, home=tmp_path, secret_vars="MY_SECRET")
    env = uv_environ(
        settings,
        {
            "PATH": "/usr/bin",
            "HTTPS_PROXY": "http://proxy:3128",
            "UV_INDEX_URL": "https://mirror.example/simple",
            "UV_INDEX_PRIVATE_PASSWORD": "hunter2",  # uv's own credentials stay
            "UV_CACHE_DIR": "/elsewhere",
            "UV_PYTHON": "/usr/bin/python3",
            "VIRTUAL_ENV": "/some/venv",
            "RUNPOD_API_KEY": "rp",
            "MY_SECRET": "s",
            "HF_TOKEN": "hf",
        },
    )
    assert env["PATH"] == "/usr/bin"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert env["UV_INDEX_PRIVATE_PASSWORD"] == "hunter2"
    assert env["UV_CACHE_DIR"] == str(tmp_path / "uv-cache")
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    for gone in ("UV_PYTHON", "VIRTUAL_ENV", "RUNPOD_API_KEY", "MY_SECRET", "HF_TOKEN"):
        assert gone not in env
