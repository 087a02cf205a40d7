"""How tests tell a Wine program that crashed from one that exited or was killed as asked.

Measured with Wine 8 here: an unhandled exception makes Wine print ``wine: Unhandled exception 0x80000003 in
thread ... starting debugger...`` (or ``wine: Unhandled page fault ...``) on the program's stderr, start
``winedbg --auto`` (the prefix's AeDebug debugger), whose register dump and backtrace go to the same stderr, and
the program then ends with the low byte of the exception code as its Linux exit status (0x80000003 -> 3,
0xc0000005 -> 5). winedbg is double-forked by Wine (its parent is PID 1, not the test), so a session can only find
it by name: :func:`winedbg_processes`.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["WinedbgProcess", "boot_clock", "crash_lines", "exit_problem", "winedbg_processes"]

# Lines Wine or winedbg write when a program dies of an exception (any WINEDEBUG setting prints them).
_CRASH = re.compile(
    r"^wine: Unhandled|Unhandled exception|starting debugger|^Backtrace:|^Register dump:|^wine: .*(?:fatal|Assertion)"
)


def crash_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` (a Wine program's) that say it crashed; [] when none does."""
    return [line for line in stderr.splitlines() if _CRASH.search(line)]


def exit_problem(name: str, code: int | None, expected: int, killed: bool, stderr: str) -> str | None:
    """Why a stopped Wine program did not end cleanly, or None when it did.

    ``code`` is Popen.returncode (negative: the Linux signal; None: still running), ``expected`` the exit code the
    test asked for (``quit`` -> 0), ``killed`` whether the test itself killed it (then SIGKILL is clean too).
    A crash line on stderr is a problem even for a killed program: it crashed before the kill. The message ends
    with the stderr tail, which holds winedbg's register dump and backtrace when there was a crash."""
    crashed = crash_lines(stderr)
    if code is None:
        what = "is still running"
    elif crashed:
        what = f"crashed (exit {_describe(code)}): {crashed[0]}"
    elif code == expected or (killed and code == -signal.SIGKILL):
        return None
    else:
        what = f"exited with {_describe(code)}, expected {expected}" + (" or SIGKILL" if killed else "")
    tail = "\n".join(stderr.splitlines()[-40:]) or "(empty)"
    return f"{name} {what}\n--- stderr tail ---\n{tail}"


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    # Windows exit codes reach Linux as their low byte: an exception code 0x8000000N / 0xc000000N shows as N.
    return f"code {code}"


@dataclass(frozen=True)
class WinedbgProcess:
    """One ``winedbg`` process seen in /proc: ``key`` (PID, start time in clock ticks) identifies it across PID
    reuse; ``prefix`` is its WINEPREFIX ("" when unreadable, e.g. it has exited and is a zombie nobody reaps);
    ``cmdline`` its arguments (``winedbg --auto <windows pid> <event>`` when Wine started it for a crash);
    ``started`` its start time in seconds on CLOCK_BOOTTIME (compare with :func:`boot_clock`)."""

    key: tuple[int, int]
    prefix: str
    cmdline: str
    started: float
    zombie: bool

    def describe(self) -> str:
        state = "exited (zombie)" if self.zombie else "running"
        return f"winedbg PID {self.key[0]} {state}, prefix {self.prefix or 'unknown'}: {self.cmdline or '(no cmdline)'}"


_TICKS = os.sysconf("SC_CLK_TCK")


def boot_clock() -> float:
    """Seconds since boot, the clock of /proc/PID/stat start times (psutil's epoch times drift from it)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def winedbg_processes() -> dict[tuple[int, int], WinedbgProcess]:
    """Every process whose name starts with ``winedbg``, keyed by (PID, start ticks). ~1 ms for 100 processes:
    reads /proc/PID/comm, then stat and psutil only for the matches."""
    found: dict[tuple[int, int], WinedbgProcess] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", "rb") as comm:
                if not comm.read().startswith(b"winedbg"):
                    continue
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            proc = psutil.Process(int(entry.name))
        except (OSError, psutil.Error):
            continue  # gone since the listing
        fields = stat[stat.rindex(")") + 2 :].split()
        zombie = fields[0] == "Z"
        try:
            prefix = "" if zombie else proc.environ().get("WINEPREFIX", "")
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            prefix, cmdline = "", ""
        key = (int(entry.name), int(fields[19]))  # field 22 of stat: start time in clock ticks since boot
        found[key] = WinedbgProcess(key, prefix, cmdline, key[1] / _TICKS, zombie)
    return found
