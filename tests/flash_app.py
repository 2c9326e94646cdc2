"""A deployed Flash app for tests: its modules, the manifest runpod-flash's own ManifestBuilder
writes, and the build artifact laid out as ``flash build`` packs it (``./`` at the root).

Two resources: ``gpu_worker`` (a queue endpoint: ``embed``, ``boom``) and ``api`` (a
load-balanced endpoint whose functions are HTTP routes).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from runpod_flash.cli.commands.build_utils.manifest import ManifestBuilder
from runpod_flash.cli.commands.build_utils.scanner import RemoteFunctionMetadata

GPU_MODULE = """\
def embed(text):
    print(f"embedding {text!r}")
    return {"length": len(text), "upper": text.upper()}


def boom(reason):
    raise ValueError(f"boom: {reason}")
"""

API_MODULE = """\
import time


def add(a, b):
    print(f"adding {a} and {b}")
    return a + b


def hello(name, greeting="hello"):
    return {"message": f"{greeting}, {name}"}


def fail(reason):
    raise RuntimeError(f"route failed: {reason}")


def sleepy(seconds):
    print("sleeping", flush=True)
    time.sleep(float(seconds))
    return "awake"
"""

#: (function, module, resource, http method, http path) of every function of the app.
FUNCTIONS: list[tuple[str, str, str, str | None, str | None]] = [
    ("embed", "workers.gpu", "gpu_worker", None, None),
    ("boom", "workers.gpu", "gpu_worker", None, None),
    ("add", "api.routes", "api", "POST", "/add"),
    ("hello", "api.routes", "api", "GET", "/hello/{name}"),
    ("fail", "api.routes", "api", "POST", "/fail"),
    ("sleepy", "api.routes", "api", "POST", "/sleep"),
]


def manifest_for(build_dir: Path) -> dict[str, Any]:
    metas = [
        RemoteFunctionMetadata(
            function_name=name,
            module_path=module,
            resource_config_name=resource,
            resource_type="LoadBalancerSlsResource" if method else "LiveServerless",
            is_async=False,
            is_class=False,
            file_path=build_dir / (module.replace(".", "/") + ".py"),
            http_method=method,
            http_path=path,
            is_load_balanced=method is not None,
        )
        for name, module, resource, method, path in FUNCTIONS
    ]
    return ManifestBuilder("demo", metas, build_dir=build_dir).build()


def write_build_dir(build_dir: Path) -> Path:
    """The app's files as ``flash build`` leaves them in ``.flash/.build``."""
    for package, source in (("workers", GPU_MODULE), ("api", API_MODULE)):
        (build_dir / package).mkdir(parents=True)
        (build_dir / package / "__init__.py").write_text("")
        name = "gpu.py" if package == "workers" else "routes.py"
        (build_dir / package / name).write_text(source)
    (build_dir / "flash_manifest.json").write_text(json.dumps(manifest_for(build_dir)))
    return build_dir


def make_artifact(tmp: Path) -> Path:
    """``artifact.tar.gz`` of the app, packed as runpod-flash's ``create_tarball`` packs it."""
    build_dir = write_build_dir(tmp / "build")
    artifact = tmp / "artifact.tar.gz"
    with tarfile.open(artifact, "w:gz") as tar:
        tar.add(build_dir, arcname=".", recursive=False)
        for item in sorted(build_dir.iterdir()):
            tar.add(str(item), arcname=f"./{item.relative_to(build_dir)}")
    return artifact


def flash_environ(resource: str, artifact: Path, **extra: str) -> dict[str, str]:
    """The variables RunPod (and ``flash preview``) give a worker of ``resource``."""
    return {
        "RUNPOD_ENDPOINT_ID": f"preview-{resource}",
        "FLASH_RESOURCE_NAME": resource,
        "FLASH_BUILD_ARTIFACT_PATH": str(artifact),
        **extra,
    }
