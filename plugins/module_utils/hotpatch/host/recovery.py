"""Recovery: finish or undo what a killed engine left in the journal, and retire records of dead processes.

Run by ``recover`` and first by every changing verb, under the host lock. For each open record the process's
bytes decide: every jump in place -> ``applied``; otherwise the originals are restored under quiesce (a process
never keeps a partial set of jumps) and the blob freed once idle. Stage records are settled from the files on disk.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from ..backends.base import Backend, ProcessHandle, ProcessInfo
from ..errors import EngineError, JournalError
from .blob import free_when_idle, release_blob, release_intended
from .coldpatch import settle_stage
from .discovery import identity
from .journal import ApplyJournal, Journal, ProcessRecord, StageJournal
from .quiesce import quiesce_clear
from .rollback import restore_originals, write_ranges, write_states
from .transaction import Options

__all__ = ["live_processes", "recover"]


def live_processes(backend: Backend) -> Dict[Tuple[int, str], ProcessInfo]:
    """Every visible process by identity (pid, start_time)."""
    return {identity(info): info for info in backend.processes()}


def recover(backend: Backend, journal: Journal, options: Options) -> List[Dict[str, Any]]:
    """Settle every open journal record; returns one entry per record touched: journal file, pid or path,
    the state before and after, and a note. Raises JournalError when bytes in a process match neither the
    original nor the journaled jump (an operator must look)."""
    actions: List[Dict[str, Any]] = []
    live = None
    for record in journal.records():
        if isinstance(record, StageJournal):
            if record.state in ("staging", "unstaging"):
                before = record.state
                settle_stage(journal, record)
                actions.append(
                    _action(
                        record.path, before, record.state, record.note, changed=True, module_path=record.module_path
                    )
                )
            if record.final:
                journal.archive(record)
            continue
        if live is None:
            live = live_processes(backend)
        changed = False
        for proc in record.processes:
            if proc.final:
                continue
            before, attention, freed = proc.state, proc.needs_attention, proc.blob_freed
            if (proc.pid, proc.start_time) not in live:
                journal.touch(proc, "retired", "the process exited (or its PID was reused)")
            elif attention:
                _recover_process(backend, journal, record, proc, options)
            if proc.state != before or attention:
                changed = True
                actions.append(
                    _action(
                        record.path,
                        before,
                        proc.state,
                        proc.note,
                        changed=proc.state not in (before, "retired") or proc.blob_freed != freed,
                        pid=proc.pid,
                        name=proc.name,
                    )
                )
        if changed:
            journal.save(record)
        if record.final:
            journal.archive(record)
    return actions


def _recover_process(
    backend: Backend, journal: Journal, record: ApplyJournal, proc: ProcessRecord, options: Options
) -> None:
    try:
        handle = backend.open(proc.pid)
    except EngineError as exc:
        proc.note = f"cannot open the process to recover it: {exc}"
        return
    try:
        _settle(handle, journal, record, proc, options)
    except JournalError:
        raise
    except EngineError as exc:
        proc.note = f"recovery deferred: {exc}"
    finally:
        handle.close()


def _settle(
    handle: ProcessHandle, journal: Journal, record: ApplyJournal, proc: ProcessRecord, options: Options
) -> None:
    if proc.state == "staging" and not proc.blob_mapped:  # killed around the allocation's system call
        journal.touch(proc, "aborted", release_intended(handle, proc))
        return
    if proc.state == "staging":  # no jump was written: the blob is unreachable
        note = release_blob(handle, proc, lambda: journal.save(record), table_registered=False)
        journal.touch(proc, "aborted", note or "apply interrupted while staging; blob freed")
        return
    if proc.state in ("switching", "rolling_back"):
        states = write_states(handle, proc.writes)
        if "other" in states:
            raise JournalError(
                f"journal {record.path}: process {proc.pid} holds bytes that are neither original nor journaled at "
                f"{', '.join(hex(w.address) for w, s in zip(proc.writes, states) if s == 'other')}: inspect it, "
                "then move the file out of the journal directory"
            )
        if proc.state == "switching" and set(states) == {"new"}:
            journal.touch(proc, "applied", "apply interrupted after the switch; completed")
            return
        if set(states) != {"original"}:
            quiesced, busy = quiesce_clear(
                handle, write_ranges(proc.writes), (), options.retries, options.retry_delay_ms
            )
            if quiesced is None:
                proc.note = f"recovery deferred: {busy.reason}"
                return
            try:
                restore_originals(handle, proc.writes)
            finally:
                quiesced.resume()
        final = "aborted" if proc.state == "switching" else "rolled_back"
        journal.touch(proc, final, f"{proc.state} interrupted; original code restored")
        journal.save(record)
    kept = free_when_idle(handle, proc, lambda: journal.save(record), options.retries, options.retry_delay_ms)
    if kept:
        proc.note = kept


def _action(journal_path: str, before: str, after: str, note: str, changed: bool, **where: Any) -> Dict[str, Any]:
    entry: Dict[str, Any] = {
        "journal": os.path.basename(journal_path),
        "from": before,
        "to": after,
        "note": note,
        "changed": changed,
    }
    entry.update(where)
    return entry
