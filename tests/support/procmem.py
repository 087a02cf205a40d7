"""Memory of a live Linux process (a Wine-hosted Windows program) from /proc: resident set and mappings.

Used by the soak benchmark and its test to show that repeated apply/rollback cycles do not grow the target:
each blob the engine maps must be freed (or reused) by the rollback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.backends._sigframe import CALL_STUB_MARKER

__all__ = ["MemorySample", "alive", "exec_anon_regions", "sample", "start_ticks"]

PAGE = 0x1000


@dataclass(frozen=True)
class MemorySample:
    """One look at a process: ``rss_kib`` (VmRSS, KiB), ``mappings`` (lines of /proc/PID/maps), ``mapped_kib``
    (their total size, KiB), ``exec_anon`` / ``exec_anon_kib`` (anonymous executable mappings: where blobs live,
    not counting pages that are call-stub pages of the Wine backend), ``call_pages`` (such pages: left only by an
    engine killed during a remote call), ``threads`` (tasks in /proc/PID/task), ``cycle`` (soak cycle the sample
    was taken after)."""

    cycle: int
    rss_kib: int
    mappings: int
    mapped_kib: int
    exec_anon: int
    exec_anon_kib: int
    threads: int
    call_pages: int = 0

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
    mappings = mapped = exec_anon = exec_anon_size = call_pages = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in fields[0].split("-"))
        size = (end - start) // 1024
        mappings += 1
        mapped += size
        if "x" in fields[1] and (len(fields) < 6 or not fields[5].strip()):
            stubs = _call_pages(pid, start, end)
            call_pages += stubs
            if stubs * PAGE < end - start:
                exec_anon += 1
                exec_anon_size += size - stubs * PAGE // 1024
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    return MemorySample(cycle, rss, mappings, mapped, exec_anon, exec_anon_size, threads, call_pages)


def _call_pages(pid: int, start: int, end: int) -> int:
    """Pages of [start, end) that are Wine-backend call pages (needs root, like the engine): they begin with the
    call-stub marker, or, as a whole one-page mapping, are all zeros (mapped r-x by an engine killed before it
    wrote the page: a blob is never r-x before it holds code)."""
    count = 0
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            for page in range(start, end, PAGE):
                mem.seek(page)
                data = mem.read(PAGE if end - start == PAGE else len(CALL_STUB_MARKER))
                if data.startswith(CALL_STUB_MARKER) or (end - start == PAGE and not any(data)):
                    count += 1
    except OSError:
        return count
    return count


def exec_anon_regions(pid: int) -> list[str]:
    """Each anonymous executable mapping of ``pid`` as "start-end perms first-16-bytes-hex" (for failure messages)."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if "x" in fields[1] and (len(fields) < 6 or not fields[5].strip()):
            start = int(fields[0].split("-")[0], 16)
            try:
                with open(f"/proc/{pid}/mem", "rb") as mem:
                    mem.seek(start)
                    head = mem.read(16).hex()
            except OSError:
                head = "?"
            out.append(f"{fields[0]} {fields[1]} {head}")
    return out
