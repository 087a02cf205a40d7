"""Memory of a live Linux process (a Wine-hosted Windows program) from /proc: resident set and mappings.

Used by the soak benchmark and its test to show that repeated apply/rollback cycles do not grow the target:
each blob the engine maps must be freed (or reused) by the rollback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["MemorySample", "alive", "sample", "start_ticks"]


@dataclass(frozen=True)
class MemorySample:
    """One look at a process: ``rss_kib`` (VmRSS, KiB), ``mappings`` (lines of /proc/PID/maps), ``mapped_kib``
    (their total size, KiB), ``exec_anon`` / ``exec_anon_kib`` (anonymous executable mappings: where blobs live),
    ``threads`` (tasks in /proc/PID/task), ``cycle`` (soak cycle the sample was taken after)."""

    cycle: int
    rss_kib: int
    mappings: int
    mapped_kib: int
    exec_anon: int
    exec_anon_kib: int
    threads: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, ticks: int) -> bool:
    """Whether the process ``pid`` that started at ``ticks`` still runs (a reused PID does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X") and start_ticks(pid) == ticks


def sample(pid: int, cycle: int = 0) -> MemorySample:
    """Read /proc/PID/status and /proc/PID/maps; raises FileNotFoundError when the process is gone."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    mappings = mapped = exec_anon = exec_anon_size = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in fields[0].split("-"))
        size = (end - start) // 1024
        mappings += 1
        mapped += size
        if "x" in fields[1] and (len(fields) < 6 or not fields[5].strip()):
            exec_anon += 1
            exec_anon_size += size
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    return MemorySample(cycle, rss, mappings, mapped, exec_anon, exec_anon_size, threads)
