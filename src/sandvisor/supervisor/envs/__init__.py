"""Job environments: a request's dependencies -> a uv venv layered on the base environment.

store.py         EnvStore: plan, lease, list, GC, remove (the upkeep half)
build.py         single-flight uv builds, published atomically (the build half)
layout.py        the store on disk: envs, staging, trash, lock files
keys.py          the env key and the plan of a dependency list
base.py          the supervisor's own environment, the base every env is layered on
requirements.py  dependency strings -> validated, normalized requirements
runtime_pins.py  what the child runtime needs of the packages it imports
sysdeps.py       system_dependencies, with apt-get
uv.py            running the bundled uv
filelock.py      flock file locks usable from asyncio
"""

from sandvisor.supervisor.envs.store import EnvInfo, EnvLease, EnvStore

__all__ = ["EnvInfo", "EnvLease", "EnvStore"]
