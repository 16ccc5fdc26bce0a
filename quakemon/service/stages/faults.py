"""Test hooks that inject faults into stage processes, switched on by environment variables (never in production).

QUAKEMON_INJECT_FAULT=cuda   every forward of the inference stage raises a sticky CUDA error after warm-up, so
                             the tests can check that a poisoned GPU makes the daemon exit non-zero.
QUAKEMON_INJECT_HANG=<stage>[:after_s]
                             that stage's loop hangs for good `after_s` seconds (default 0) after its first unit
                             of work, without reporting status, so the tests can check the watchdog.
"""

from __future__ import annotations

import os
import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)

FAULT_ENV = "QUAKEMON_INJECT_FAULT"
HANG_ENV = "QUAKEMON_INJECT_HANG"


class HangInjector:
    """QUAKEMON_INJECT_HANG=<stage>[:after_s]: a stuck stage (no status, no progress).

    The clock starts at the stage's first unit of work, so the hang comes after start-up (and READY).
    """

    def __init__(self, stage: str) -> None:
        name, _, after = os.environ.get(HANG_ENV, "").partition(":")
        self.enabled = name == stage
        self.after = float(after or 0)
        self.at: float | None = None

    def check(self, progress: int) -> None:
        if not self.enabled or progress == 0:
            return
        now = time.monotonic()
        if self.at is None:
            self.at = now + self.after
        if now >= self.at:
            log.warning("inject_hang", note="test hook: this stage now hangs for good")
            while True:
                time.sleep(3600)


def maybe_break_engine(engine: Any) -> None:
    """QUAKEMON_INJECT_FAULT=cuda: replace the engine's model by one whose every forward raises a CUDA error."""
    if os.environ.get(FAULT_ENV) != "cuda":
        return
    log.warning("inject_fault", fault="cuda", note="test hook: every forward now fails")

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    engine.model = broken
