"""Per-process patch transaction: verify, stage, quiesce, switch, resume, journal.

Like a Detours transaction, it commits every function of the package or aborts with nothing changed: a failure
before the switch frees the blob; a failure during the switch restores every byte written so far while the
threads are still stopped, so no thread ever sees a half-written jump.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..backends.base import PROT_RX, Quiesced
from ..errors import BackendError, CallLeftRunning, EngineError, JournalError
from ..package import LONG_JUMP_SIZE, SHORT_JUMP_SIZE, Package, PatchedFunction
from .blob import release_blob
from .codestate import FileHashes, check_image, code_of, describe_other, read_functions
from .discovery import Target
from .faults import fault_point
from .journal import ApplyJournal, Journal, JournalWrite, ProcessRecord
from .jumpwrites import ProcessWrite, short_jump_split, switch_writes
from .quiesce import Range, quiesce_clear
from .relocate import jump_bytes, relocate
from .result import ProcessResult

__all__ = ["Options", "PatchTransaction", "jump_ranges"]


@dataclass(frozen=True)
class Options:
    """Quiesce policy: ``retries`` extra attempts ``retry_delay_ms`` apart; ``activeness_check`` refuses while a
    thread runs in, or will return into, a function being replaced."""

    retries: int = 5
    retry_delay_ms: int = 20
    activeness_check: bool = False


def _split_entries(functions: Sequence[PatchedFunction]) -> Optional[str]:
    """Why the package cannot be hotpatched safely: a function whose short jump a page boundary splits."""
    split = [f.name for f in functions if short_jump_split(f.base_rva)]
    if not split:
        return None
    return (
        f"the entry of {', '.join(split)} is the last byte of a page: its 2-byte jump would straddle two pages, and "
        "an engine killed between them would leave half a jump; use the cold path"
    )


def jump_ranges(package: Package, module_base: int) -> List[Range]:
    """Where no stopped thread may stand while the switch writes: the padding's last 5 bytes and the second
    entry byte. A thread exactly AT the entry is safe: it has not fetched the instruction there yet, and on
    resume decodes whichever two bytes it finds (the old first instruction or the new short jump)."""
    ranges: List[Range] = []
    for function in package.manifest.functions:
        entry = module_base + function.base_rva
        ranges.append((entry - LONG_JUMP_SIZE, entry, f"the padding jump of {function.name}"))
        ranges.append((entry + 1, entry + SHORT_JUMP_SIZE, f"the entry bytes of {function.name}"))
    return ranges


class PatchTransaction:
    """Patch one process with one package. ``run`` never raises for per-process problems: it returns a
    ProcessResult ("patched", "already_patched", "refused" or "failed") and leaves the process on old or new code.
    """

    def __init__(
        self,
        target: Target,
        package: Package,
        journal: Journal,
        record_file: ApplyJournal,
        applied: Optional[ProcessRecord],
        options: Options,
        hashes: FileHashes,
        dry_run: bool = False,
    ) -> None:
        self.target = target
        self.package = package
        self.manifest = package.manifest
        self.journal = journal
        self.file = record_file
        self.applied = applied  # this package's journal record for this very process, if any
        self.options = options
        self.hashes = hashes
        self.dry_run = dry_run
        info = target.info
        self.result = ProcessResult(
            info.pid,
            info.name,
            info.start_time,
            info.windows_pid,
            functions=len(self.manifest.functions),
            module_base=target.module.base,
        )
        self.record: Optional[ProcessRecord] = None
        self._table_registered = False
        self._switch: List[ProcessWrite] = []  # the switch's process writes, planned before the pause

    # -- the pipeline ------------------------------------------------------------------------------------------

    def run(self) -> ProcessResult:
        """verify -> stage -> journal intent -> quiesce -> switch -> resume -> journal; see the module docstring."""
        try:
            if not self.verify():
                return self.result
            if self.dry_run:
                self._set("would_patch", "base", "patched")
                return self.result
            self.stage()
            self.journal_intent()
            quiesced = self.quiesce()
            if quiesced is None:
                return self.result
            self.switch(quiesced)
            self.resume(quiesced)
            self.complete()
        except EngineError as exc:
            self._fail(str(exc))
        return self.result

    def verify(self) -> bool:
        """Refusal policy, base-image pin, and each function's bytes; False when the run ends here."""
        handle, module = self.target.handle, self.target.module
        refusal = handle.refusal() or _split_entries(self.manifest.functions)
        if refusal:
            self._set("refused", "unknown", "unknown", refusal)
            return False
        image = check_image(handle, module, self.manifest, self.hashes)
        if image.image == "patched":
            self._set("already_patched", "patched", "patched", None)
            return False
        if image.image != "base":
            self._set("refused", "unknown", "unknown", image.reason)
            return False
        blob = self.applied.blob_address if self.applied is not None else None
        views = read_functions(handle, module.base, self.manifest, blob)
        code = code_of(views)
        if code == "patched":
            self._set("already_patched", "patched", "patched")
            return False
        if code != "base":
            self._set("refused", "unknown", "unknown", describe_other(views))
            return False
        self.result.code_before = "base"
        return True

    def stage(self) -> None:
        """Allocate the blob near the module, write it relocated, make it RX, register unwind info and CFG
        targets. The allocation is journaled ahead (address and the hash of the blob relocated there, before the
        system call that maps it) and again once it exists. Nothing can reach the blob yet."""
        handle, base = self.target.handle, self.target.module.base
        size = max(self.manifest.blob_size, 1)
        unwind = self.manifest.unwind
        info = self.target.info
        record = ProcessRecord(
            pid=info.pid,
            start_time=info.start_time,
            name=info.name,
            windows_pid=info.windows_pid,
            module_base=base,
            module_path=self.target.module.path,
            blob_address=0,
            blob_size=size,
            unwind_count=unwind.count if unwind else 0,
            blob_mapped=False,
        )
        code = b""

        def intent(address: int) -> None:
            nonlocal code
            code = relocate(self.package.blob, self.manifest.relocations, address, base)
            record.blob_address = address
            record.blob_sha256 = hashlib.sha256(code.ljust(size, b"\0")).hexdigest()
            record.unwind_table = address + unwind.offset if unwind and unwind.count else None
            if self.record is None:
                self.record = record
                self.journal.add_process(self.file, record)
            self.journal.save(self.file)

        try:
            address = handle.allocate_near(base, size, intent=intent)
        except CallLeftRunning:
            # The system call was left to finish on its own thread: the memory may still appear. The record
            # stays as journaled ahead (staging, blob_mapped false), and recovery frees the memory only if it
            # is there, fresh and holding zeros (release_intended).
            if self.record is not None:
                self.journal.touch(record, "staging", "the blob's allocation was left running; recover settles it")
                self.journal.save(self.file)
            raise
        except EngineError:
            if self.record is not None:  # journaled ahead, but the backend left nothing mapped
                record.blob_freed = True
                self.journal.touch(record, "aborted", "the blob could not be allocated; nothing was mapped")
                self.journal.save(self.file)
            raise
        fault_point("apply_after_mmap")
        if record.blob_address != address:  # a backend that did not announce this address
            intent(address)
        record.blob_mapped = True
        self.journal.save(self.file)
        fault_point("apply_after_allocate")
        try:
            handle.write(address, code)
            handle.protect(address, size, PROT_RX)
            fault_point("apply_after_blob")
            if record.unwind_table is not None:
                try:
                    handle.add_function_table(record.unwind_table, record.unwind_count, base)
                except CallLeftRunning:
                    self._table_registered = True  # it may still happen: the blob is kept unless removal works
                    raise
                self._table_registered = True
                fault_point("apply_after_unwind")
            if self.manifest.cfg_targets:
                handle.set_valid_call_targets([address + offset for offset in self.manifest.cfg_targets])
        except EngineError:
            self._abort_staged()
            raise

    def quiesce(self) -> Optional[Quiesced]:
        """Stop every thread with none on the jump bytes (nor, with the activeness check, in a replaced
        function); on persistent conflict abort cleanly and return None."""
        base = self.target.module.base
        guarded: List[Range] = []
        if self.options.activeness_check:
            guarded = [
                (base + f.base_rva, base + f.base_rva + f.size, f"{f.name} (activeness check)")
                for f in self.manifest.functions
            ]
        try:
            quiesced, busy = quiesce_clear(
                self.target.handle,
                jump_ranges(self.package, base),
                guarded,
                self.options.retries,
                self.options.retry_delay_ms,
            )
        except EngineError:
            self._abort_staged()
            raise
        self.result.attempts = busy.attempts
        if quiesced is None:
            self._abort_staged()
            self._set("failed", "base", "base", f"threads stayed busy: {busy.reason}; try again later")
        return quiesced

    def journal_intent(self) -> None:
        """Write ahead, before any thread stops: every write of the switch with its original bytes (the fsync
        stays out of the pause)."""
        if self.record is None:  # narrows the type; a bug if it ever holds
            raise AssertionError("self.record must be set here")
        base = self.target.module.base
        padding: List[JournalWrite] = []
        entries: List[JournalWrite] = []
        for function in self.manifest.functions:
            pad_at, long_jump, entry_at, short_jump = jump_bytes(function, base, self.record.blob_address)
            pad_original = function.padding[len(function.padding) - LONG_JUMP_SIZE :]
            padding.append(JournalWrite(function.name, "padding", pad_at, pad_original.hex(), long_jump.hex()))
            entry_original = function.entry[:SHORT_JUMP_SIZE]
            entries.append(JournalWrite(function.name, "entry", entry_at, entry_original.hex(), short_jump.hex()))
        self.record.writes = padding + entries
        self._switch = switch_writes(self.record.writes)
        self.journal.touch(self.record, "switching")
        try:
            self.journal.save(self.file)
        except OSError as exc:
            self._abort_staged()
            raise JournalError(f"cannot write the journal in {self.journal.dir}: {exc.strerror}") from exc

    def switch(self, quiesced: Quiesced) -> None:
        """Put every function's long jump into its padding and its short jump over its entry (one write when
        both lie in one page, else padding first; see jumpwrites), then flush. Threads are stopped; on any
        failure every byte written so far is restored before resuming."""
        handle = self.target.handle
        fault_point("apply_after_quiesce")
        written: List[JournalWrite] = []
        entry_seen = padding_seen = False
        try:
            for write in self._switch:
                handle.write(write.address, write.data)
                written.extend(write.parts)
                if not write.has_entry and not padding_seen:
                    padding_seen = True
                    fault_point("apply_after_padding")
                elif write.has_entry and not entry_seen:
                    entry_seen = True
                    fault_point("apply_after_entry")
            for write in self._switch:
                handle.flush_instruction_cache(write.address, len(write.data))
        except EngineError as exc:
            reason = self._undo_writes(written)
            self.result.pause_us = quiesced.resume()
            self._abort_staged()
            raise BackendError(f"switch failed and was undone{reason}: {exc}") from exc
        fault_point("apply_after_switch")

    def resume(self, quiesced: Quiesced) -> None:
        """Let the threads run the new code; the pause is reported in microseconds."""
        self.result.pause_us = quiesced.resume()
        fault_point("apply_after_resume")

    def complete(self) -> None:
        """Complete the journal record: the process runs this package's code."""
        if self.record is None:  # narrows the type; a bug if it ever holds
            raise AssertionError("self.record must be set here")
        self.journal.touch(self.record, "applied")
        self.journal.save(self.file)
        fault_point("apply_after_journal")
        self._set("patched", "base", "patched")

    # -- helpers -------------------------------------------------------------------------------------------------

    def _undo_writes(self, written: List[JournalWrite]) -> str:
        handle = self.target.handle
        problems = []
        for write in reversed(written):
            try:
                handle.write(write.address, bytes.fromhex(write.original))
                handle.flush_instruction_cache(write.address, len(write.original) // 2)
            except EngineError as exc:  # pragma: no cover - a write that worked a moment ago failing now
                problems.append(f"0x{write.address:x}: {exc}")
        return f" (could not restore {', '.join(problems)})" if problems else ""

    def _abort_staged(self) -> None:
        """Undo staging: unregister the unwind table, free the blob, mark the record aborted."""
        if self.record is None:
            return
        note = release_blob(self.target.handle, self.record, self._save, self._table_registered)
        self.journal.touch(self.record, "aborted", note)
        self.journal.save(self.file)

    def _save(self) -> None:
        self.journal.save(self.file)

    def _set(self, result: str, before: str, after: str, reason: Optional[str] = None) -> None:
        self.result.result = result
        self.result.code_before = before
        self.result.code_after = after
        self.result.reason = reason

    def _fail(self, reason: str) -> None:
        if self.record is not None and self.record.state == "applied":  # pragma: no cover - nothing fails later
            return
        before = self.result.code_before if self.result.code_before != "unknown" else "unknown"
        self._set("failed", before, before, reason)
