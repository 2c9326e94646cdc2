"""Helpers shared by tests (importable as ``tests.helpers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandvisor.supervisor.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for tests: a private store, a short grace period, no variables from outside."""
    values: dict[str, Any] = {"home": home, "grace_s": 0.5, "gpus": ""}
    values.update(overrides)
    return Settings.from_env(environ={}, **values)


def function_request(code: str, name: str = "main", **fields: Any) -> dict[str, Any]:
    """A JSON-format request for ``name`` defined by ``code``."""
    return {
        "function_name": name,
        "function_code": code,
        "serialization_format": "json",
        **fields,
    }


def class_request(
    class_name: str, class_code: str, method: str, *args: Any, **fields: Any
) -> dict[str, Any]:
    """A JSON-format call of ``method`` on an instance of ``class_name`` defined by ``class_code``."""
    return {
        "execution_type": "class",
        "class_name": class_name,
        "class_code": class_code,
        "method_name": method,
        "args": list(args),
        "serialization_format": "json",
        **fields,
    }
