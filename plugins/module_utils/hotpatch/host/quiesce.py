"""Bounded quiesce: stop every thread, and retry while a thread is where the engine must not write or free.

A conflict is a thread whose instruction pointer lies in a byte range about to change (the jump bytes), or, when
asked, a thread whose instruction pointer or candidate return addresses lie in a guarded range (activeness check
over the patched functions; the blob before it is freed). The engine resumes, waits ``delay_ms`` (doubling after
each attempt, at most 2 s) and tries again, at most ``retries`` more times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ..backends.base import ProcessHandle, Quiesced, ThreadState

__all__ = ["Busy", "Range", "quiesce_clear"]

_MAX_DELAY_MS = 2000

Range = Tuple[int, int, str]  # [start, end) VA and what it is, for the reason


@dataclass
class Busy:
    """Why the last attempt could not proceed, and how many attempts were made."""

    reason: str
    attempts: int


def quiesce_clear(
    handle: ProcessHandle,
    writes: Sequence[Range],
    guarded: Sequence[Range] = (),
    retries: int = 5,
    delay_ms: int = 20,
) -> Tuple[Optional[Quiesced], Busy]:
    """Stop every thread with none in ``writes`` (IP) nor in ``guarded`` (IP or stack).

    Returns (quiesced, info) with every thread stopped, or (None, info) with every thread running and
    ``info.reason`` saying which thread was in the way on the last attempt. Raises BackendError from the backend.
    """
    reason = ""
    for attempt in range(1, retries + 2):
        quiesced = handle.quiesce(with_stacks=bool(guarded))
        try:
            conflict = _conflict(quiesced.threads, writes, guarded)
        except BaseException:
            quiesced.resume()
            raise
        if conflict is None:
            return quiesced, Busy("", attempt)
        quiesced.resume()
        reason = conflict
        if attempt <= retries and delay_ms:
            # Doubling the wait: with more busy threads than CPUs, a preempted thread can need a whole scheduling
            # round to move on, and a fixed short wait kept catching it at the same instruction.
            time.sleep(min(delay_ms * 2 ** (attempt - 1), _MAX_DELAY_MS) / 1000.0)
    return None, Busy(f"{reason} on each of {retries + 1} attempts", retries + 1)


def _conflict(threads: Sequence[ThreadState], writes: Sequence[Range], guarded: Sequence[Range]) -> Optional[str]:
    # Runs inside the pause: a thread whose IP is outside the span of all write ranges skips their loop (nearly
    # every thread; 16 threads x 20 ranges cost ~15 us otherwise).
    low = min((start for start, _end, _what in writes), default=0)
    high = max((end for _start, end, _what in writes), default=0)
    for thread in threads:
        if low <= thread.rip < high:
            for start, end, what in writes:
                if start <= thread.rip < end:
                    return f"thread {thread.tid} was executing at 0x{thread.rip:x} inside {what}"
        for start, end, what in guarded:
            if start <= thread.rip < end:
                return f"thread {thread.tid} was executing at 0x{thread.rip:x} inside {what}"
            for address in thread.stack:
                if start <= address < end:
                    return f"thread {thread.tid} has a return address 0x{address:x} into {what} on its stack"
    return None
