"""Per-process rollback: replay the journal's writes in reverse under quiesce, then free the blob when idle."""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

from ..backends.base import ProcessHandle
from ..errors import BackendError, EngineError
from .blob import free_when_idle
from .discovery import Target
from .faults import fault_point
from .journal import ApplyJournal, Journal, JournalWrite, ProcessRecord
from .jumpwrites import ProcessWrite, restore_writes, torn
from .quiesce import Range, quiesce_clear
from .result import ProcessResult
from .transaction import Options

__all__ = ["RollbackTransaction", "current_bytes", "restore_originals", "write_ranges", "write_states"]


def write_ranges(writes: Sequence[JournalWrite]) -> List[Range]:
    """[start, end) where no thread may stand while the journaled writes are undone: the whole padding jump,
    and the entry bytes after the first (a thread exactly at the entry decodes afresh on resume)."""
    ranges: List[Range] = []
    for w in writes:
        start = w.address + 1 if w.part == "entry" else w.address
        ranges.append((start, w.address + len(w.original) // 2, f"the {w.part} jump of {w.function}"))
    return ranges


# Journaled writes lying within this many bytes of each other are read back with one read (one system call
# instead of two per function inside the pause); farther apart, or unreadable in between, each is read alone.
SPAN_READ_MAX = 0x10000


def current_bytes(handle: ProcessHandle, writes: Sequence[JournalWrite]) -> List[str]:
    """The bytes now at each journaled write's address, as hex like ``JournalWrite.original``."""
    if not writes:
        return []
    low = min(w.address for w in writes)
    high = max(w.address + len(w.original) // 2 for w in writes)
    if high - low <= SPAN_READ_MAX:
        try:
            span = handle.read(low, high - low)
        except EngineError:  # a gap between the functions is unmapped: read each write alone
            pass
        else:
            return [span[w.address - low : w.address - low + len(w.original) // 2].hex() for w in writes]
    return [handle.read(w.address, len(w.original) // 2).hex() for w in writes]


def write_states(handle: ProcessHandle, writes: Sequence[JournalWrite]) -> List[str]:
    """For each journaled write: "original", "new", "torn" (one of them up to a page boundary and the other after
    it: an engine killed inside a cross-page write) or "other", from the bytes in the process now."""
    return [_state(write, current) for write, current in zip(writes, current_bytes(handle, writes))]


def _state(write: JournalWrite, current: str) -> str:
    if current == write.original:
        return "original"
    if current == write.new:
        return "new"
    if torn(write.address, bytes.fromhex(write.original), bytes.fromhex(write.new), bytes.fromhex(current)):
        return "torn"
    return "other"


def restore_originals(
    handle: ProcessHandle,
    writes: Sequence[JournalWrite],
    fault: bool = False,
    planned: Optional[Sequence[ProcessWrite]] = None,
) -> None:
    """Write back every original, the last function first (a function's entry and padding in one write when
    they share a page, else the entry first; see jumpwrites); threads must be stopped. ``planned``:
    ``restore_writes(writes)`` worked out before the pause, used when every jump still holds its new bytes.

    On a failed write, the writes already undone are redone so the process stays on the new code, then the
    BackendError propagates.
    """
    undone: List[ProcessWrite] = []
    first_entry = True
    try:
        currents = current_bytes(handle, writes)
        if planned is not None and all(current == w.new for w, current in zip(writes, currents)):
            pending: Sequence[ProcessWrite] = planned
        else:  # partly restored already (recovery): rewrite only what is not original
            pending = restore_writes([w for w, current in zip(writes, currents) if current != w.original])
        for write in pending:
            handle.write(write.address, write.data)
            undone.append(write)
            if fault and write.has_entry and first_entry:
                first_entry = False
                fault_point("rollback_after_entry")
        for write in pending:
            handle.flush_instruction_cache(write.address, len(write.data))
    except EngineError as exc:
        # Redo whole units, last undone first: a unit restored as one write is redone as one write, and split
        # units come back padding before entry (they were undone entry first).
        for write in reversed(undone):
            with contextlib.suppress(EngineError):  # the same address accepted a write a moment ago
                handle.write(write.address, b"".join(bytes.fromhex(part.new) for part in write.parts))
        raise BackendError(f"rollback write failed and was undone: {exc}") from exc


class RollbackTransaction:
    """Roll one process back to the base code. ``run`` returns "rolled_back", "not_patched",
    "would_roll_back" or "failed"; the process runs old or new code at every moment."""

    def __init__(
        self,
        target: Target,
        journal: Journal,
        record_file: ApplyJournal,
        record: ProcessRecord,
        options: Options,
        dry_run: bool = False,
    ) -> None:
        self.target = target
        self.journal = journal
        self.file = record_file
        self.record = record
        self.options = options
        self.dry_run = dry_run
        info = target.info
        functions = len({w.function for w in record.writes})
        self.result = ProcessResult(
            info.pid, info.name, info.start_time, info.windows_pid, functions=functions, module_base=record.module_base
        )

    def run(self) -> ProcessResult:
        """check bytes -> journal intent -> quiesce -> restore -> resume -> journal -> free the blob when idle."""
        handle = self.target.handle
        try:
            states = write_states(handle, self.record.writes)
            if "other" in states:
                return self._set("failed", "unknown", "unknown", self._other(states))
            if set(states) == {"original"}:  # rolled back by someone else's restore of the bytes: just clean up
                self._set("not_patched", "base", "base")
                self._finish(pause_us=None)
                return self.result
            if self.dry_run:
                return self._set("would_roll_back", "patched", "base")
            self.journal.touch(self.record, "rolling_back")
            self.journal.save(self.file)
            fault_point("rollback_after_intent")
            planned = restore_writes(self.record.writes)  # worked out before the pause, not in it
            quiesced, busy = quiesce_clear(
                handle, write_ranges(self.record.writes), (), self.options.retries, self.options.retry_delay_ms
            )
            self.result.attempts = busy.attempts
            if quiesced is None:
                self.journal.touch(self.record, "applied")
                self.journal.save(self.file)
                return self._set("failed", "patched", "patched", f"threads stayed busy: {busy.reason}; try again later")
            fault_point("rollback_after_quiesce")
            try:
                restore_originals(handle, self.record.writes, fault=True, planned=planned)
            except EngineError:
                quiesced.resume()
                self.journal.touch(self.record, "applied")
                self.journal.save(self.file)
                raise
            fault_point("rollback_after_restore")
            pause = quiesced.resume()
            fault_point("rollback_after_resume")
            self._set("rolled_back", "patched", "base")
            self._finish(pause)
        except EngineError as exc:
            self._set("failed", self.result.code_before, self.result.code_before, str(exc))
        return self.result

    def _finish(self, pause_us: Optional[int]) -> None:
        self.result.pause_us = pause_us
        self.journal.touch(self.record, "rolled_back")
        self.journal.save(self.file)
        note = free_when_idle(
            self.target.handle,
            self.record,
            lambda: self.journal.save(self.file),
            self.options.retries,
            self.options.retry_delay_ms,
        )
        if self.record.blob_freed:
            fault_point("rollback_after_free")
        if note:
            self.record.note = note
            self.result.reason = note
        self.journal.save(self.file)

    def _other(self, states: Sequence[str]) -> str:
        for write, state in zip(self.record.writes, states):
            if state == "other":
                return (
                    f"the {write.part} bytes of {write.function} at 0x{write.address:x} changed since the apply "
                    "(another tool patched them?): not touching them; inspect the process"
                )
        return "unexpected bytes"  # pragma: no cover

    def _set(self, result: str, before: str, after: str, reason: Optional[str] = None) -> ProcessResult:
        self.result.result = result
        self.result.code_before = before
        self.result.code_after = after
        self.result.reason = reason
        return self.result
