"""Internal: what the Wine backend reads from /proc (maps, stat, tasks, status), parsed into small records.

Every reader raises OSError (FileNotFoundError/ProcessLookupError when the process is gone); the backend turns
that into BackendError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

__all__ = [
    "Mapping",
    "boot_id",
    "exe_is_64bit",
    "find_mapping",
    "free_gaps",
    "read_maps",
    "start_ticks",
    "task_ids",
    "tracer_pid",
]


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps: [start, end) with perms like "r-xp", file offset and path ("" when anonymous)."""

    start: int
    end: int
    perms: str
    offset: int
    path: str

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"


def parse_maps(text: str) -> List[Mapping]:
    """Parse the text of /proc/PID/maps (paths may contain spaces; " (deleted)" is kept as the kernel wrote it)."""
    out: List[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[5] if len(parts) > 5 else ""))
    return out


def read_maps(pid: int) -> List[Mapping]:
    with open(f"/proc/{pid}/maps") as handle:
        return parse_maps(handle.read())


def find_mapping(maps: List[Mapping], address: int) -> Optional[Mapping]:
    for mapping in maps:
        if mapping.start <= address < mapping.end:
            return mapping
    return None


def free_gaps(maps: List[Mapping], low: int, high: int) -> List[List[int]]:
    """Unmapped [start, end) ranges clipped to [low, high), lowest first (maps must be sorted, as the kernel
    writes them)."""
    gaps: List[List[int]] = []
    cursor = low
    for mapping in maps:
        if mapping.end <= cursor:
            continue
        if mapping.start >= high:
            break
        if mapping.start > cursor:
            gaps.append([cursor, min(mapping.start, high)])
        cursor = max(cursor, mapping.end)
    if cursor < high:
        gaps.append([cursor, high])
    return gaps


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat: start time in clock ticks after boot (the comm field may hold spaces)."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[19])  # fields[0] is field 3 (state)


_BOOT_ID: Optional[str] = None


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            _BOOT_ID = handle.read().strip()
    return _BOOT_ID


def task_ids(pid: int) -> List[int]:
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task") if name.isdigit())


def tracer_pid(tid: int) -> int:
    """TracerPid from /proc/TID/status (0 when no tracer is attached)."""
    with open(f"/proc/{tid}/status") as handle:
        for line in handle:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def exe_is_64bit(pid: int) -> bool:
    """True when /proc/PID/exe is a 64-bit ELF (the 64-bit Wine loader); a 32-bit wine loader hosts x86 code."""
    with open(f"/proc/{pid}/exe", "rb") as handle:
        ident = handle.read(5)
    return ident[:4] == b"\x7fELF" and ident[4] == 2
