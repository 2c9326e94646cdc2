"""One class instance: its id, its actor process, and the bookkeeping of its calls."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sandvisor.protocol.models import ErrorType
from sandvisor.supervisor.actor_process import ActorProcess, Exchange
from sandvisor.supervisor.envs import EnvLease
from sandvisor.supervisor.gpus import GpuLease
from sandvisor.supervisor.limits import Limits

if TYPE_CHECKING:  # the context is the caller's; only its stop is waited for here
    from sandvisor.supervisor.context import JobContext


def new_instance_id(class_name: str) -> str:
    """A fresh instance id for ``class_name``: ``ClassName_<8 hex>``."""
    return f"{class_name}_{uuid.uuid4().hex[:8]}"


def refused(exchange: Exchange) -> bool:
    """The actor answered that the request itself is invalid (not that the method failed)."""
    error = exchange.report.error
    return error is not None and error.get("kind") == ErrorType.INVALID_REQUEST.value


def now_iso() -> str:
    """Now, as the ISO 8601 UTC time that ``instance_info`` reports."""
    return datetime.now(timezone.utc).isoformat()


@dataclass(eq=False)
class Instance:
    """One instance id's actor and its bookkeeping."""

    instance_id: str
    class_name: str
    actor: ActorProcess
    limits: Limits  # the creating request's: memory, processes and CPU hold for the actor's life
    lease: EnvLease | None = None
    gpu_lease: GpuLease | None = None  # held for the actor's life: its CUDA state lives on them
    created_at: str = field(default_factory=now_iso)
    last_used: str = field(default_factory=now_iso)
    last_used_at: float = field(default_factory=time.monotonic)
    method_calls: int = 0
    pending: int = 0  # calls queued or running
    started: bool = False
    retired: bool = False  # takes no new calls; stops when its queue is empty
    gone: str | None = None  # why its actor is no longer usable
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # FIFO: calls run in arrival order

    def info(self, answer: dict[str, Any], recreated: bool) -> dict[str, Any]:
        """The response's ``instance_info``; ``answer``: the actor's pid and memory, if any."""
        return {
            "class_name": self.class_name,
            "created_at": self.created_at,
            "method_calls": self.method_calls,
            "last_used": self.last_used,
            "pid": answer.get("pid", self.actor.pid),
            "memory": answer.get("memory"),
            "recreated": recreated,
            "alive": self.gone is None,
        }

    async def turn(self, run: JobContext) -> tuple[ErrorType, str] | None:
        """Wait for the instance's lock (then held), or for the call to be stopped (its reason).

        A call cancelled while it waits its turn is answered at once and never reaches the
        actor: stopping it there would kill an instance that other calls are using.
        """
        turn = asyncio.ensure_future(self.lock.acquire())
        stop = asyncio.ensure_future(run.stopped())
        try:
            await asyncio.wait({turn, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not turn.done():
                turn.cancel()
                await asyncio.gather(turn, return_exceptions=True)
        if turn.done() and not turn.cancelled():
            if stop.done() and not stop.cancelled():
                self.lock.release()
                return stop.result()
            return None
        return stop.result()
