"""Turn the journaled writes of a switch or a restore into as few process writes as stay safe at every moment.

A function's long jump (the last 5 bytes of its padding) and its short jump (the first 2 bytes of its entry) are
adjacent. When those 7 bytes lie in one page they go to the process in one write: a single system call
(a pwrite of /proc/PID/mem, WriteProcessMemory) copies a range within one page wholly or not at all, even when the
engine is killed during it, so the order between the two jumps stops mattering and the pause is one system call
shorter per function. Across a page boundary the kernel copies page by page and a killed engine can stop between
the pages; then the jumps stay two writes in the order that is safe at every moment: padding before entry when
switching (an entry never jumps into padding not yet written), entry before padding when restoring.

The journal keeps one record per jump either way; recovery reads each jump's bytes on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..package import LONG_JUMP_SIZE, SHORT_JUMP_SIZE
from .journal import JournalWrite

__all__ = [
    "ProcessWrite",
    "jumps_in_one_page",
    "restore_writes",
    "short_jump_split",
    "switch_writes",
    "torn",
]

PAGE = 0x1000


@dataclass(frozen=True)
class ProcessWrite:
    """One write into the process: ``data`` at ``address`` (VA), carrying ``parts`` (journaled jumps, address
    order); ``has_entry``: it writes an entry's bytes (callers take the new path, or the old one again). Planned
    before the pause, so the pause only reads fields."""

    address: int
    data: bytes
    parts: Tuple[JournalWrite, ...]
    has_entry: bool


def _write(address: int, data: bytes, parts: Tuple[JournalWrite, ...]) -> ProcessWrite:
    return ProcessWrite(address, data, parts, any(part.part == "entry" for part in parts))


def _one_page(start: int, end: int) -> bool:
    return start // PAGE == (end - 1) // PAGE


def jumps_in_one_page(entry: int) -> bool:
    """Whether a function's two jumps (``entry`` - 5 up to ``entry`` + 2) lie in one page, i.e. are switched
    with one write. ``entry``: VA, or RVA (image bases are page-aligned, so the answer is the same)."""
    return _one_page(entry - LONG_JUMP_SIZE, entry + SHORT_JUMP_SIZE)


def short_jump_split(entry: int) -> bool:
    """Whether the 2-byte short jump at ``entry`` (VA or RVA) is itself split by a page boundary: an engine killed
    between the pages would leave its first byte new and its second old, which no order of writes avoids, so
    such a function is refused (compilers align function entries to 16 bytes; this takes a packed layout)."""
    return not _one_page(entry, entry + SHORT_JUMP_SIZE)


def torn(address: int, original: bytes, new: bytes, current: bytes) -> bool:
    """Whether ``current`` is a write of ``new`` over ``original`` at ``address``, or of ``original`` over ``new``,
    that stopped at a page boundary: the kernel copies a cross-page write page by page, lowest first, and a killed
    engine can stop between them."""
    split = PAGE - address % PAGE
    if not 0 < split < len(new):
        return False
    return current in (new[:split] + original[split:], original[:split] + new[split:])


def _by_function(writes: Sequence[JournalWrite]) -> List[Tuple[JournalWrite, ...]]:
    """The writes grouped per function, functions in first-seen order, each group in address order."""
    groups: Dict[str, List[JournalWrite]] = {}
    for write in writes:
        groups.setdefault(write.function, []).append(write)
    return [tuple(sorted(group, key=lambda w: w.address)) for group in groups.values()]


def _plan(groups: Sequence[Tuple[JournalWrite, ...]], field: str, entry_first: bool) -> List[ProcessWrite]:
    out: List[ProcessWrite] = []
    for group in groups:
        data = [bytes.fromhex(getattr(w, field)) for w in group]
        adjacent = all(a.address + len(d) == b.address for a, d, b in zip(group, data, group[1:]))
        end = group[-1].address + len(data[-1])
        if adjacent and _one_page(group[0].address, end):
            out.append(_write(group[0].address, b"".join(data), group))
            continue
        singles = [_write(w.address, d, (w,)) for w, d in zip(group, data)]
        singles.sort(key=lambda pw: pw.has_entry != entry_first)  # stable: the entry first or last
        out.extend(singles)
    return out


def switch_writes(writes: Sequence[JournalWrite]) -> List[ProcessWrite]:
    """The process writes that put every journaled jump's ``new`` bytes in place, function by function.

    ``writes``: JournalWrite list (any order; padding and entry of a function are paired by name). Raises
    ValueError when a jump's hex is malformed (the journal was written by this engine: a bug).
    """
    return _plan(_by_function(writes), "new", entry_first=False)


def restore_writes(writes: Sequence[JournalWrite]) -> List[ProcessWrite]:
    """The process writes that put the ``original`` bytes of ``writes`` back, the last function first.

    Pass only the jumps that need restoring (a jump already original is left out, so it is never rewritten).
    """
    return _plan(list(reversed(_by_function(writes))), "original", entry_first=True)
