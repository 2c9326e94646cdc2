"""What a template says of itself once it is ready: its ``ready`` frame, typed.

The field meanings are the template's (``sandbox_child/template.py`` and ``preloading.py``);
``protocol/messages.py`` lists them under ``FrameKind.READY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandvisor.protocol.frames import Frame


@dataclass(frozen=True)
class TemplateReady:
    """A started template: its preloads and what importing them did, and its environment."""

    preloaded: list[str] = field(default_factory=list)
    #: The environment every child it forks starts with (it never changes).
    environ: dict[str, str] = field(default_factory=dict)
    spare: int | None = None  # the pid of its first spare
    preload_failed: dict[str, str] = field(default_factory=dict)  # module -> its import's error
    #: module -> the output or warning its import gave (a job importing it would show that)
    preload_noisy: dict[str, str] = field(default_factory=dict)
    cuda_initialized: bool = False  # a preload did it on import: jobs then cannot use CUDA
    threads: list[str] = field(default_factory=list)  # Python threads a preload left running
    device_open: str | None = None  # a GPU device file a preload opened
    rss_kb: int = 0  # its resident set when ready

    @classmethod
    def from_frame(cls, frame: Frame) -> TemplateReady:
        """The fields of a ``ready`` frame; a missing one takes its default."""
        return cls(
            preloaded=list(frame.get("preloaded") or []),
            environ=dict(frame.get("environ") or {}),
            spare=frame.get("spare"),
            preload_failed=dict(frame.get("preload_failed") or {}),
            preload_noisy=dict(frame.get("preload_noisy") or {}),
            cuda_initialized=bool(frame.get("cuda_initialized")),
            threads=list(frame.get("threads") or []),
            device_open=frame.get("device_open"),
            rss_kb=int(frame.get("rss_kb") or 0),
        )
