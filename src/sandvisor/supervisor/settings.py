"""One configuration model for the supervisor, read from ``SANDVISOR_*`` variables.

Every field of :class:`Settings` is read from the variable ``SANDVISOR_<FIELD NAME IN CAPS>``.
Lists are comma-separated. Defaults work on a laptop and on a RunPod worker: the store goes on
``/runpod-volume`` when that exists, else under the user cache dir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandvisor.supervisor.oom import cgroup_memory_limit

ENV_PREFIX = "SANDVISOR_"
RUNPOD_VOLUME = Path("/runpod-volume")

#: Variables that never reach a job's child unless named in ``SANDVISOR_PASS_VARS``.
DEFAULT_SECRET_VARS: tuple[str, ...] = (
    "RUNPOD_API_KEY",
    "RUNPOD_AI_API_KEY",
    "RUNPOD_WEBHOOK_*",
    "AWS_*",
)


class SettingsError(ValueError):
    """A ``SANDVISOR_*`` variable holds a value the supervisor cannot use."""


def volume_present() -> bool:
    return RUNPOD_VOLUME.is_dir()


#: The store of a root supervisor without a volume: not under /root, which job identities
#: cannot pass (see ``privilege.py``).
ROOT_HOME = Path("/var/lib/sandvisor")


def default_home() -> Path:
    if volume_present():
        return RUNPOD_VOLUME / "sandvisor"
    if os.geteuid() == 0:
        return ROOT_HOME
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sandvisor"


def default_memory_mb() -> int:
    """Three quarters of the machine's RAM, or of the container's memory limit when lower: our
    watchdog acts well before the kernel's OOM killer."""
    return memory_mb_within(physical_memory_bytes(), cgroup_memory_limit())


def physical_memory_bytes() -> int:
    """The machine's RAM (what /proc/meminfo calls MemTotal), from the C library."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_mb_within(total_bytes: int, limit_bytes: int | None) -> int:
    """MiB a job may use by default: three quarters of RAM, or of the cgroup's limit if lower."""
    return int(min(total_bytes, limit_bytes or total_bytes) * 0.75 // (1024 * 1024))


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Where envs, the uv cache and job working dirs live.
    home: Path = Field(default_factory=default_home)
    # Directory of a deployed Flash app (flash_manifest.json and its modules).
    app_dir: Path = Path("/app")

    # Per-job limits: defaults, and the ceilings a request's own `limits` may raise them to.
    timeout_s: float = 3600.0
    max_timeout_s: float = 24 * 3600.0
    memory_mb: int = Field(default_factory=default_memory_mb)
    max_memory_mb: int | None = None  # None: the default is the ceiling
    cpu_s: float | None = None
    max_procs: int = 512
    max_output_bytes: int = 2 * 1024 * 1024
    max_result_bytes: int = 16 * 1024 * 1024
    max_open_files: int = 4096
    grace_s: float = 3.0
    # How often the watchdog samples a job's process tree.
    watch_interval_s: float = 0.1

    # Environment policy for children.
    secret_vars: list[str] = Field(default_factory=list)
    pass_vars: list[str] = Field(default_factory=list)

    # GPUs: None means detect (NVML, then nvidia-smi); "" means none; "0,1" declares two.
    gpus: str | None = None

    # Dependency environments.
    allow_direct_urls: bool = False
    allow_system_dependencies: bool = False
    env_max_count: int = 64
    env_max_bytes: int = 50 * 1024**3

    # Warm templates.
    templates: bool = True
    preload: list[str] = Field(default_factory=list)
    # Added to `preload` on a Flash deployment: deployed modules import runpod_flash, which
    # imports runpod (see worker/deployed.py).
    flash_preload: list[str] = Field(default_factory=lambda: ["runpod"])
    max_templates: int = 4
    # Learned preloads (supervisor/preload_learning.py): a module that this many jobs of an env
    # imported is tried in a new template of that env, up to the caps below.
    adaptive_preload: bool = True
    preload_learn_after: int = Field(default=2, ge=1)
    preload_max_modules: int = Field(default=32, ge=0)
    preload_max_rss_mb: int = Field(default=4096, ge=1)
    # CUDA-warm spares (supervisor/warm_spares.py): where jobs get GPUs, a spare per free GPU set
    # with the device's primary context retained through this driver library before its job,
    # plus a framework warm-up ("torch") if named; only where, and while, each GPU has this much
    # free memory not counting the spare (MiB), checked every `cuda_warm_check_interval_s`
    # seconds while a warm spare exists (0: only when jobs take or release GPUs).
    cuda_warm_spares: bool = True
    cuda_driver_library: str = "libcuda.so.1"
    cuda_warmup: str = ""
    cuda_warm_min_free_mb: int = Field(default=4096, ge=0)
    cuda_warm_check_interval_s: float = Field(default=5.0, ge=0)

    # Job identities (privilege model): when the supervisor runs as root, each job and actor
    # runs as one of these uids ("20000-20063", "20000-20003,20010"; "" for none), all with
    # the one group ``job_gid`` (so the shared model caches can be group-writable).
    job_uids: str = "20000-20063"
    job_gid: int = 20000
    # Env interpreters (templates, a spawned job's host) then start in a user namespace whose
    # root is this host uid and gid, never a job's (supervisor/confinement.py); off: as root.
    confine_envs: bool = True
    template_uid: int = Field(default=19999, ge=1)

    # Class instances (actors).
    max_instances: int = 32
    instance_ttl_s: float = 1800.0

    # The largest request body the HTTP worker reads (bytes): a larger one is refused with 413
    # before it is held in memory.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1)

    # RunPod worker.
    concurrency: int | None = None
    runpod_stream: bool = False
    # Take the next job as soon as a slot frees (runpod's own loop waits up to 1 s).
    runpod_prompt_take: bool = True
    progress_interval_s: float = 0.5
    # While a job waits to start (its env building, its template starting, GPUs held), a line
    # says so this often (0: never).
    wait_notice_interval_s: float = Field(default=10.0, ge=0)

    @field_validator("secret_vars", "pass_vars", "preload", "flash_preload", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``SANDVISOR_*`` variables, then explicit overrides (CLI flags, tests)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "?"
            raise SettingsError(f"invalid {ENV_PREFIX}{field.upper()}: {first['msg']}") from exc

    @property
    def secret_patterns(self) -> tuple[str, ...]:
        return DEFAULT_SECRET_VARS + tuple(self.secret_vars)

    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def uv_cache_dir(self) -> Path:
        return self.home / "uv-cache"

    @property
    def preloads_dir(self) -> Path:
        """Where each env's learned preloads are kept (one small JSON file per env)."""
        return self.home / "preloads"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def private_dir(self) -> Path:
        """Where each job under an identity gets its private HOME (TMPDIR and pip site in it)."""
        return self.home / "private"

    @property
    def hf_home(self) -> Path:
        """The shared Hugging Face cache jobs fill (on the volume when the store is there)."""
        return self.home / "huggingface"
