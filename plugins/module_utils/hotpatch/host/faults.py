"""Named fault points: the engine kills itself at one of them when REBOOTLESS_FAULT_STEP names it.

Tests set ``REBOOTLESS_FAULT_STEP=<step>`` to prove that an engine killed at that step leaves every process
running either the old or the new code and that the next run (``recover``) makes the journal consistent.
The process exits with code 99 through ``os._exit`` (no cleanup, no finally blocks, like SIGKILL).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn, Tuple

__all__ = ["FAULT_ENV", "FAULT_EXIT_CODE", "STEPS", "fault_point"]

FAULT_ENV = "REBOOTLESS_FAULT_STEP"
FAULT_EXIT_CODE = 99

# Every step name the engine checks, in the order a run meets them.
STEPS: Tuple[str, ...] = (
    # apply, per process
    "apply_after_mmap",  # blob memory mapped, the journal names it only as intended (blob_mapped false)
    "apply_after_allocate",  # blob allocated (journal says staging), nothing written yet
    "apply_after_blob",  # relocated blob written and made RX
    "apply_after_unwind",  # unwind table registered in the target
    "apply_after_quiesce",  # journal says switching (written before quiescing), every thread stopped
    "apply_after_padding",  # a long jump written, its short jump not (only when they straddle a page: jumpwrites)
    "apply_after_entry",  # first function: short jump written at its entry (others may still be pending)
    "apply_after_switch",  # every jump written, threads still stopped
    "apply_after_resume",  # threads resumed, journal not yet completed
    "apply_after_journal",  # journal completed (applied)
    # rollback, per process
    "rollback_after_intent",  # journal says rolling_back, nothing restored
    "rollback_after_quiesce",
    "rollback_after_entry",  # first function: original entry bytes restored
    "rollback_after_restore",  # every original byte restored, threads still stopped
    "rollback_after_resume",
    "rollback_before_free",  # jumps gone, unwind table and blob still in the target
    "release_after_table",  # unwind table removed, blob not yet freed (rollback, abort and recovery alike)
    "rollback_after_free",  # blob freed, journal not yet completed
    # stage / unstage (cold path)
    "stage_after_intent",
    "stage_after_rename",  # original renamed aside, patched module not yet in place
    "stage_after_write",  # patched module in place, journal not yet completed
    "unstage_after_intent",
    "unstage_after_rename",  # staged module renamed away, original not yet back
    "unstage_after_restore",  # original back in place, journal not yet completed
)


def _exit_now() -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(FAULT_EXIT_CODE)


# Unit tests running the engine in-process replace this with a function that raises instead of exiting.
exit_hook: Callable[[], None] = _exit_now


def fault_point(step: str) -> None:
    """Die here (exit code 99) when the environment asks for ``step``; otherwise do nothing."""
    if step not in STEPS:  # a typo here would make a fault test silently pass
        raise ValueError(f"unknown fault step {step!r}")
    if os.environ.get(FAULT_ENV) == step:
        exit_hook()
