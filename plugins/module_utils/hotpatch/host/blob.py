"""Releasing a blob: unregister its unwind table and free it, only once no thread can run it any more."""

from __future__ import annotations

from typing import Optional

from ..backends.base import ProcessHandle
from ..errors import EngineError
from .faults import fault_point
from .journal import ProcessRecord
from .quiesce import quiesce_clear

__all__ = ["free_when_idle", "release_blob"]


def release_blob(handle: ProcessHandle, record: ProcessRecord, table_registered: bool = True) -> str:
    """Delete the unwind table (if one was registered) and free the blob; returns a note ("" when clean).

    Only for a blob no thread can reach: never redirected to, or checked idle by ``free_when_idle``. When the
    table is known to be registered and cannot be removed, the blob is kept (the target's unwinder still points
    into it); when it may never have been registered (the engine died while staging), failing to remove it is
    expected and the blob is freed.
    """
    notes = []
    if record.unwind_table is not None:
        try:
            handle.delete_function_table(record.unwind_table)
        except EngineError as exc:
            if table_registered:
                return f"unwind table at 0x{record.unwind_table:x} not removed ({exc}); blob kept"
            notes.append(f"unwind table at 0x{record.unwind_table:x} was not registered ({exc})")
    try:
        handle.free(record.blob_address, record.blob_size)
        record.blob_freed = True
    except EngineError as exc:
        notes.append(f"blob at 0x{record.blob_address:x} not freed ({exc})")
    return "; ".join(notes)


def free_when_idle(handle: ProcessHandle, record: ProcessRecord, retries: int, delay_ms: int) -> Optional[str]:
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
    note = release_blob(handle, record)
    return note or None
