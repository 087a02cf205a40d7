"""Releasing a blob: unregister its unwind table and free it, only once no thread can run it any more."""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

from ..backends.base import ProcessHandle
from ..errors import EngineError
from .faults import fault_point
from .journal import ProcessRecord
from .quiesce import quiesce_clear

__all__ = ["free_when_idle", "release_blob", "release_intended"]


def release_blob(
    handle: ProcessHandle, record: ProcessRecord, save: Callable[[], None], table_registered: bool = True
) -> str:
    """Delete the unwind table (if one was registered) and free the blob; returns a note ("" when clean).

    Only for a blob no thread can reach: never redirected to, or checked idle by ``free_when_idle``. The record
    is marked ``releasing`` (and saved) first, so a run killed half-way is resumed without freeing twice: a blob
    that is unreadable or holds other bytes than ours (``blob_sha256``) was already freed. When the table is known
    to be registered and cannot be removed, the blob is kept (the target's unwinder still points into it).
    """
    resumed = record.releasing
    if not resumed:
        record.releasing = True
        save()
    notes = []
    if record.unwind_table is not None and not record.table_removed:
        try:
            handle.delete_function_table(record.unwind_table)
        except EngineError as exc:
            if table_registered and not resumed:
                record.releasing = False
                return f"unwind table at 0x{record.unwind_table:x} not removed ({exc}); blob kept"
            notes.append(f"unwind table at 0x{record.unwind_table:x} was not registered ({exc})")
        record.table_removed = True
        fault_point("release_after_table")
    if resumed and not _still_ours(handle, record):
        record.blob_freed = True
        return "; ".join(notes)
    try:
        handle.free(record.blob_address, record.blob_size)
        record.blob_freed = True
    except EngineError as exc:
        notes.append(f"blob at 0x{record.blob_address:x} not freed ({exc})")
    return "; ".join(notes)


def release_intended(handle: ProcessHandle, record: ProcessRecord) -> str:
    """Settle an allocation journaled ahead (``blob_mapped`` false) by an engine that died around the system call:
    free the memory only when it is exactly one fresh private allocation at ``blob_address`` holding zeros
    (mapped, not yet written) or the blob relocated there (``blob_sha256``); anything else is not ours and is
    left alone. Sets ``blob_freed`` (nothing of ours is left either way) and returns a note."""
    record.blob_freed = True
    address = record.blob_address
    if not handle.fresh_region(address, record.blob_size):
        return f"apply interrupted before its blob at 0x{address:x} was mapped; nothing to free"
    data = handle.read(address, record.blob_size)
    if data.count(0) != len(data) and hashlib.sha256(data).hexdigest() != record.blob_sha256:
        return f"memory at 0x{address:x} holds neither zeros nor this blob: not ours, left alone"
    handle.free(address, record.blob_size)
    return f"apply interrupted right after mapping its blob at 0x{address:x}; blob freed"


def _still_ours(handle: ProcessHandle, record: ProcessRecord) -> bool:
    try:
        data = handle.read(record.blob_address, record.blob_size)
    except EngineError:
        return False
    return not record.blob_sha256 or hashlib.sha256(data).hexdigest() == record.blob_sha256


def free_when_idle(
    handle: ProcessHandle, record: ProcessRecord, save: Callable[[], None], retries: int, delay_ms: int
) -> Optional[str]:
    """Free the blob once no thread executes in it nor (best effort) holds a return address into it.

    The jumps must already be gone: after one clean check no thread can enter the blob again, so the table is
    removed and the blob freed with the threads running (on Windows removing a table runs a remote thread, which
    must not wait for a suspended loader-lock holder). Returns None when freed, else why the blob was kept (a
    later run frees it).
    """
    blob = (record.blob_address, record.blob_address + record.blob_size, f"the blob at 0x{record.blob_address:x}")
    quiesced, busy = quiesce_clear(handle, (), (blob,), retries, delay_ms)
    if quiesced is None:
        return f"blob kept for a later run: {busy.reason}"
    quiesced.resume()
    fault_point("rollback_before_free")
    note = release_blob(handle, record, save)
    return note or None
