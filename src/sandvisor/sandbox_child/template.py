"""A warm template: an interpreter with the runtime (and preloads) imported that forks job children.

It never runs user code and holds no job state. Commands come over a Unix socket as one byte:
``F`` with three descriptors attached (job channel, stdout, stderr) starts a job child; ``P`` is a
ping. Replies are frames on the same socket: ``ready`` once, ``forked`` per ``F`` in order,
``spare`` when it forks a spare (below), ``exit`` when a job child it started is reaped (with
status and rusage), ``pong``. Orphans of jobs come to the template (it is a child subreaper) and
are reaped silently. When the supervisor goes away (end of stream on the socket), the template
kills every job it started, and its spare, and leaves.

A job's child is forked ahead of the job: the template keeps one *spare*, a child forked from it
that has already left the template's session, signals and descriptors, and waits on a socket of
its own for a job's three descriptors. ``F`` hands them to the spare, and the template forks the
next spare once it has answered. So the fork, and the page copies a fresh fork pays for, fall
between jobs rather than inside one. A spare is forked from the template only and is given exactly
one job: every job still gets a fresh child, and nothing of one job is in the next.

A CUDA-warm spare (``W``; ``cuda_warm.py``) is such a spare that warms itself first and then
says so on its socket, with its devices' memory; the template announces it (``warm``) only
then. ``G`` hands a job to the warm spare of a set, ``D`` kills it (see ``protocol/messages.py``).

The job child is made exactly as a spawned one is (``runner.run_job``): its own session, the
job's descriptors only, the job's environment, limits and working dir. What the template imported
stays imported in the child, which is the point: the child starts at the cost of a fork.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from sandvisor.prctl import become_subreaper
from sandvisor.protocol.frames import encode_frame, read_frame
from sandvisor.protocol.messages import (
    ASSIGN_JOB,
    COMMAND_DROP_WARM,
    COMMAND_FORK,
    COMMAND_FORK_WARM,
    COMMAND_PING,
    COMMAND_WARM,
    JOB_FDS,
    KIND,
    SPARE_NAME,
    WARM_FAILED_EXIT,
    FrameKind,
)
from sandvisor.sandbox_child import logs
from sandvisor.sandbox_child.credentials import drop_ahead
from sandvisor.sandbox_child.cuda_warm import warm_up
from sandvisor.sandbox_child.imports import mark_template
from sandvisor.sandbox_child.isolation import (
    close_other_fds,
    name_process,
    own_session,
    reset_signals,
)
from sandvisor.sandbox_child.preloading import (
    cuda_initialized,
    device_open,
    preload,
    preload_threads,
    rss_kb,
)
from sandvisor.sandbox_child.runner import prepare_streams, run_job


class Spare:
    """A child forked ahead of its job, waiting on ``socket`` for the job's descriptors."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.socket = sock


def wait_as_spare(sock: socket.socket, warm: dict[str, Any] | None = None) -> None:
    """The life of a spare: leave the template behind, wait for one job, run it; never returns.

    What a job child does before it knows its job happens here, ahead of the job: its own
    session, default signals, none of the template's descriptors, its output streams and its
    logging (``runner.prepare_streams``). An end of stream (the template stopped, or died) ends
    the spare.
    """
    code = 0
    try:
        reset_signals()
        own_session()
        name_process(SPARE_NAME)
        # The job collects its own garbage as a fresh interpreter would; what the template froze
        # stays out of its collections, so they never touch (and copy) the template's pages.
        gc.enable()
        close_other_fds(keep=sock.fileno())
        drop_ahead()
        channel = prepare_streams()
        if warm is not None:
            try:
                memory = warm_up(warm)  # ahead of the job, as the rest of this (cuda_warm.py)
            except Exception:
                os._exit(WARM_FAILED_EXIT)
            # Warm: the template announces it, with what the driver says of its devices.
            sock.sendall(encode_frame({KIND: FrameKind.WARM, "memory": memory}))
        message, fds, _, _ = socket.recv_fds(sock, 1, JOB_FDS)
        os.close(sock.detach())
        if message == ASSIGN_JOB and len(fds) == JOB_FDS:
            run_job(*fds, prepared=channel)  # never returns
    except BaseException:
        code = 1
    os._exit(code)


class Template:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.live: set[int] = set()
        self.spare: Spare | None = None
        self.warm: dict[str, Spare] = {}  # GPU set -> its CUDA-warm spare, warm-up done
        self.warming: dict[str, Spare] = {}  # GPU set -> its spare still warming up
        self._dropped: set[int] = set()  # warm spares killed on request: reaped silently
        self._fork_error = ""
        self._wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
        # A plain poll object, not ``selectors``: the loop runs once per job, and each page it
        # writes after a fork is a page copied (the spare shares them all).
        self._poll = select.poll()
        self._handlers = {control.fileno(): self._on_command, self._wakeup_r: self._on_sigchld}
        for fd in self._handlers:
            self._poll.register(fd, select.POLLIN)

    def send(self, frame: dict[str, Any]) -> None:
        self.control.sendall(encode_frame(frame))

    def serve(self) -> None:
        handlers = self._handlers
        while True:
            for fd, _ in self._poll.poll():
                # One handler may unwatch another's descriptor within a batch (a warm spare
                # reaped before its socket's event is seen): that event is stale.
                handler = handlers.get(fd)
                if handler is not None and handler() is False:
                    return

    def _on_command(self) -> bool:
        message, fds, _, _ = socket.recv_fds(self.control, 1, JOB_FDS)
        if not message:
            self.kill_jobs()
            return False
        if message == COMMAND_PING:
            self.send({KIND: FrameKind.PONG, "ts": time.time(), "live": len(self.live)})
        elif message == COMMAND_FORK and len(fds) == JOB_FDS:
            self._start_job(*fds)
        elif message == COMMAND_FORK_WARM and len(fds) == JOB_FDS:
            self._start_job(*fds, gpus=str(read_frame(self.control.fileno()).get("gpus")))
        elif message == COMMAND_WARM and not fds:
            self._fork_warm(read_frame(self.control.fileno()))
        elif message == COMMAND_DROP_WARM and not fds:
            self._drop_warm(str(read_frame(self.control.fileno()).get("gpus")))
        else:
            for fd in fds:
                os.close(fd)
            self.send(
                {
                    KIND: FrameKind.FORK_FAILED,
                    "error": f"bad command {message!r} with {len(fds)} fds",
                }
            )
        return True

    def _start_job(
        self, channel_fd: int, stdout_fd: int, stderr_fd: int, gpus: str | None = None
    ) -> None:
        fds = (channel_fd, stdout_fd, stderr_fd)
        try:
            warm = self.warm.pop(gpus, None) if gpus is not None else None
            pid = self._hand_to(warm, fds) if warm is not None else None
            pid = pid if pid is not None else self._hand_to_spare(fds)
        finally:
            # Closed before the next spare is forked: a spare must not hold a job's pipes open.
            for fd in fds:
                os.close(fd)
        if pid is None:
            self.send({KIND: FrameKind.FORK_FAILED, "error": f"fork: {self._fork_error}"})
            return
        self.live.add(pid)
        self.send({KIND: FrameKind.FORKED, "pid": pid})
        self.fork_spare()  # after the answer: the job never waits for the next job's fork

    def _hand_to_spare(self, fds: tuple[int, int, int]) -> int | None:
        """Give the job's descriptors to the spare (forked now if there is none); its pid."""
        for _ in range(2):  # a spare that died since it was forked is replaced, once
            spare, self.spare = self.spare or self._new_spare(), None
            if spare is None:
                return None
            pid = self._hand_to(spare, fds)
            if pid is not None:
                return pid
        return None

    def _hand_to(self, spare: Spare, fds: tuple[int, int, int]) -> int | None:
        """Give the job's descriptors to ``spare``; its pid, or None if it is gone."""
        self._unwatch(spare)
        try:
            socket.send_fds(spare.socket, [ASSIGN_JOB], list(fds))
        except OSError as exc:
            self._fork_error = f"spare {spare.pid} is gone ({exc})"
            return None
        finally:
            spare.socket.close()
        return spare.pid

    def _fork_warm(self, spec: dict[str, Any]) -> None:
        """Fork a spare to warm up for ``spec["gpus"]``, unless that set has one; its pid is said
        once it is warm (:meth:`_on_warm_ready`), and only then may a job be handed to it."""
        gpus = str(spec.get("gpus"))
        if gpus in self.warm or gpus in self.warming:
            return
        spare = self._new_spare(spec)
        if spare is not None:
            self.warming[gpus] = spare
            fd = spare.socket.fileno()
            self._handlers[fd] = lambda: self._on_warm_ready(gpus, spare)
            self._poll.register(fd, select.POLLIN)

    def _on_warm_ready(self, gpus: str, spare: Spare) -> bool:
        """The warming spare of ``gpus`` said it is warm, with its devices' memory (a WARM
        frame): announce it. An end of stream instead means it died warming: SIGCHLD tells."""
        try:
            spare.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # a stale wake-up for a descriptor number reused since: wait on
        except OSError:
            pass
        self._unwatch(spare)
        try:
            memory = read_frame(spare.socket.fileno()).get("memory", [])
        except Exception:  # it died warming up: reaped and reported on SIGCHLD (WARM_LOST)
            return True
        if self.warming.get(gpus) is spare:
            del self.warming[gpus]
            self.warm[gpus] = spare
            self.send({KIND: FrameKind.WARM, "gpus": gpus, "pid": spare.pid, "memory": memory})
        return True

    def _unwatch(self, spare: Spare) -> None:
        fd = spare.socket.fileno()
        if fd >= 0 and self._handlers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def _drop_warm(self, gpus: str) -> None:
        spare = self.warm.pop(gpus, None) or self.warming.pop(gpus, None)
        if spare is None:
            return
        self._unwatch(spare)
        self._dropped.add(spare.pid)
        spare.socket.close()
        with contextlib.suppress(OSError):
            os.kill(spare.pid, signal.SIGKILL)

    def fork_spare(self) -> None:
        """Fork the spare the next job will get, unless there is one; the supervisor hears of it."""
        if self.ensure_spare() and self.spare is not None:
            self.send({KIND: FrameKind.SPARE, "pid": self.spare.pid})

    def ensure_spare(self) -> bool:
        """Fork a spare unless there is one; whether it forked one now."""
        if self.spare is not None:
            return False
        self.spare = self._new_spare()
        return self.spare is not None

    def _new_spare(self, warm: dict[str, Any] | None = None) -> Spare | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError as exc:
            self._fork_error = str(exc)
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            wait_as_spare(theirs, warm)  # never returns
        theirs.close()
        return Spare(pid, ours)

    def _on_sigchld(self) -> bool:
        try:
            while os.read(self._wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return True
            if pid in self.live:
                self.live.discard(pid)
                self.send(
                    {
                        KIND: FrameKind.EXIT,
                        "pid": pid,
                        "status": status,
                        "maxrss_kb": usage.ru_maxrss,
                        "utime": usage.ru_utime,
                        "stime": usage.ru_stime,
                    }
                )
            elif self.spare is not None and pid == self.spare.pid:
                self.spare.socket.close()  # it died waiting; the next job gets a new one
                self.spare = None
            elif pid in self._dropped:
                self._dropped.discard(pid)
            else:
                self._warm_lost(pid, status)

    def _warm_lost(self, pid: int, status: int) -> None:
        for spares in (self.warm, self.warming):
            for gpus, spare in list(spares.items()):
                if spare.pid == pid:
                    del spares[gpus]
                    self._unwatch(spare)
                    spare.socket.close()
                    frame = {KIND: FrameKind.WARM_LOST, "gpus": gpus, "pid": pid, "status": status}
                    self.send(frame)

    def kill_jobs(self) -> None:
        for pid in self.live:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        for spare in [self.spare, *self.warm.values(), *self.warming.values()]:
            if spare is not None:  # perhaps not yet in a session of its own
                with contextlib.suppress(OSError):
                    os.kill(spare.pid, signal.SIGKILL)


def freeze_heap() -> None:
    """Collect once, then move every object to the permanent generation and stop collecting.

    A fork shares the template's pages copy-on-write; a collection in the template or a job that
    walked the preloaded objects would write to (and so copy) all of them. The template allocates
    almost nothing per fork, so it needs no collector of its own.
    """
    gc.collect()
    gc.freeze()
    gc.disable()


def serve_template(control_fd: int, preloads: list[str]) -> None:
    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    become_subreaper()
    failed, noisy = preload(preloads)
    template = Template(control)
    logs.mark_levels()
    mark_template()
    freeze_heap()
    template.ensure_spare()  # after the freeze, so it shares the frozen heap; ``ready`` names it
    template.send(
        {
            KIND: FrameKind.READY,
            "pid": os.getpid(),
            "python": sys.executable,
            "preloaded": [name for name in preloads if name not in failed],
            "preload_failed": failed,
            "preload_noisy": noisy,
            "cuda_initialized": cuda_initialized(),
            "threads": preload_threads(),
            "device_open": device_open(),
            "rss_kb": rss_kb(),
            # What every child starts with: jobs are sent only how theirs differs from it.
            "environ": dict(os.environ),
            "spare": template.spare.pid if template.spare is not None else None,
        }
    )
    try:
        template.serve()
    except (BrokenPipeError, ConnectionResetError):
        template.kill_jobs()
