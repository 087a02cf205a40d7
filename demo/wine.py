"""Run Windows programs under Wine (64-bit) on this Linux machine: prefix, start, find, stop.

A Wine program is one Linux process whose /proc/PID/comm is the .exe name (truncated to 15 characters). Its
first start in a prefix also starts wineserver and Wine's own system programs (services.exe, winedevice.exe,
...); they inherit that program's environment and stay until wineserver shuts down, a few seconds after the
last user program exits, or at once with ``wineserver -k``.

Processes here are identified by (Linux PID, start time in clock ticks since boot), so a recycled PID is
never mistaken for a service; a zombie counts as stopped (PID 1 on this machine does not reap orphans).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_PREFIX",
    "WINE64",
    "WINESERVER",
    "WineError",
    "WineProcess",
    "ensure_prefix",
    "find_programs",
    "is_running",
    "prefix_processes",
    "program_tag",
    "shutdown_prefix_if_idle",
    "start_program",
    "stop_program",
    "wine_environ",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREFIX = REPO_ROOT / ".cache" / "wineprefix-demo"
WINE64 = Path("/usr/lib/wine/wine64")
WINESERVER = Path("/usr/lib/wine/wineserver")
# Environment variable carrying the caller's tag; find_programs() matches it in /proc/PID/environ.
TAG_VAR = "DEMO_FLEET_TAG"
# Programs Wine starts by itself in a prefix; they do not keep a prefix "in use".
WINE_SYSTEM_COMMS = frozenset(
    {
        "wineserver",
        "wineserver64",
        "wine64",
        "wine64-preloader",
        "wine64-preloade",
        "services.exe",
        "winedevice.exe",
        "plugplay.exe",
        "explorer.exe",
        "svchost.exe",
        "rpcss.exe",
        "conhost.exe",
        "start.exe",
        "winemenubuilder",
        "wineboot.exe",
        "rundll32.exe",
    }
)


class WineError(RuntimeError):
    """Wine is missing, a prefix cannot be created, or a program did not start or stop in time."""


@dataclass(frozen=True)
class WineProcess:
    """A running Windows program: Linux PID and its start time (clock ticks since boot, /proc/PID/stat)."""

    pid: int
    start_ticks: int


def wine_environ(prefix: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Wine: our prefix, no debug output, no Mono/Gecko prompts, no display."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", TAG_VAR)}
    env.update({"WINEPREFIX": str(prefix), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml="})
    if extra:
        env.update(extra)
    return env


def ensure_prefix(prefix: Path = DEFAULT_PREFIX, timeout: float = 180.0) -> Path:
    """Create the Wine prefix once (``wine64 wineboot --init``, ~10 s, ~0.7 GB) and return it.

    Concurrent callers serialise on ``<prefix>.lock``; a prefix is complete once ``system.reg`` exists.
    Raises WineError when Wine is not installed or wineboot fails.
    """
    if not WINE64.exists():
        raise WineError(f"{WINE64} not found: install the wine64 Debian package")
    if (prefix / "system.reg").is_file():
        return prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (prefix / "system.reg").is_file():
            return prefix
        try:
            proc = subprocess.run(
                [str(WINE64), "wineboot", "--init"],
                env=wine_environ(prefix),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise WineError(f"wineboot --init did not finish in {timeout:.0f} s; remove {prefix} and retry") from exc
        if proc.returncode != 0 or not (prefix / "system.reg").is_file():
            raise WineError(f"wineboot --init failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return prefix


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces or parentheses: the fields after it start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    except OSError:
        return None


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def program_tag(pid: int) -> str | None:
    """The tag start_program gave this process, or None (not ours, gone, or not readable)."""
    return _environ(pid).get(TAG_VAR)


def _pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def is_running(proc: WineProcess) -> bool:
    """True when proc's PID exists with the same start time and is not a zombie."""
    fields = _stat_fields(proc.pid)
    if not fields:
        return False
    return fields[0] not in ("Z", "X") and int(fields[19]) == proc.start_ticks


def find_programs(exe_name: str, tag: str | None = None) -> list[WineProcess]:
    """Running processes whose comm is exe_name (first 15 characters) and, if tag is given, whose
    environment carries it (as set by start_program). Sorted by PID."""
    comm = exe_name[:15]
    found = []
    for pid in _pids():
        if _comm(pid) != comm:
            continue
        fields = _stat_fields(pid)
        if not fields or fields[0] in ("Z", "X"):
            continue
        if tag is not None and _environ(pid).get(TAG_VAR) != tag:
            continue
        found.append(WineProcess(pid, int(fields[19])))
    return sorted(found, key=lambda p: p.pid)


# Popen objects of programs this Python process started: waited on when stopped, so no zombie is left.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def start_program(
    exe: Path,
    args: list[str],
    *,
    prefix: Path = DEFAULT_PREFIX,
    log: Path,
    tag: str,
    cwd: Path | None = None,
    timeout: float = 20.0,
) -> WineProcess:
    """Start exe under Wine detached (own session, stdin /dev/null, stdout+stderr appended to log) and
    return the Linux process of the program itself.

    tag must be unique per program instance (e.g. "<host dir>|<service>"): it is how the process is found
    again. Raises WineError when the program has not appeared (comm = exe name) within timeout seconds; the
    log then says why.
    """
    ensure_prefix(prefix)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} start {exe} {' '.join(args)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            [str(WINE64), str(exe), *args],
            env=wine_environ(prefix, {TAG_VAR: tag}),
            cwd=str(cwd or exe.parent),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[popen.pid] = popen
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The loader execs in place, so the program is normally popen.pid once Wine has renamed it.
        found = find_programs(exe.name, tag)
        if found:
            return found[0]
        if popen.poll() is not None:
            _CHILDREN.pop(popen.pid, None)
            raise WineError(f"{exe.name} exited with {popen.returncode} at start; see {log}")
        time.sleep(0.02)
    stop_program(WineProcess(popen.pid, _start_ticks(popen.pid) or 0))
    raise WineError(f"{exe.name} did not appear within {timeout:.0f} s; see {log}")


def stop_program(proc: WineProcess, timeout: float = 5.0) -> bool:
    """Stop a program: SIGTERM, then SIGKILL after timeout seconds (a ptrace-stopped process ignores TERM).

    Returns False when it was not running (already gone, or the PID now belongs to another process).
    Raises WineError when it survives SIGKILL for timeout seconds.
    """
    if not is_running(proc):
        _reap(proc.pid, 0.5)
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_running(proc):
            time.sleep(0.01)
        if not is_running(proc):
            break
    _reap(proc.pid)
    if is_running(proc):
        raise WineError(f"PID {proc.pid} survived SIGKILL for {timeout:.0f} s (stuck in the kernel?)")
    return True


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Wait for our own child once it stopped running: a multi-threaded process's zombie leader can only be
    reaped after its last thread exits, a moment after it stopped counting as running."""
    popen = _CHILDREN.pop(pid, None)
    if popen is None:
        return
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        _CHILDREN[pid] = popen


def prefix_processes(prefix: Path = DEFAULT_PREFIX) -> list[tuple[int, str]]:
    """(PID, comm) of every live process running with WINEPREFIX=prefix (programs, Wine's own, wineserver)."""
    want = str(prefix)
    found = []
    for pid in _pids():
        fields = _stat_fields(pid)
        if not fields or fields[0] in ("Z", "X"):
            continue
        if _environ(pid).get("WINEPREFIX") == want:
            found.append((pid, _comm(pid) or "?"))
    return sorted(found)


def shutdown_prefix_if_idle(prefix: Path = DEFAULT_PREFIX, timeout: float = 15.0) -> bool:
    """Stop wineserver and Wine's own programs in prefix, unless a user program still runs there.

    ``wineserver -k`` first; whatever of Wine's own is left after half of timeout seconds gets SIGKILL (a busy
    machine can be slow to let them go). Returns True when no process of the prefix is left, False when a user
    program (another fleet, a test) uses it. Raises WineError when a process of the prefix survives SIGKILL.
    """
    procs = prefix_processes(prefix)
    if any(comm not in WINE_SYSTEM_COMMS for _pid, comm in procs):
        return False
    if not procs:
        return True
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [str(WINESERVER), "-k"],
            env=wine_environ(prefix),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout / 2,
            check=False,
        )
    start = time.monotonic()
    killed = False
    while time.monotonic() < start + timeout:
        left = prefix_processes(prefix)
        if not left:
            return True
        if any(comm not in WINE_SYSTEM_COMMS for _pid, comm in left):
            return False  # a program started meanwhile: it owns the prefix now
        if not killed and time.monotonic() > start + timeout / 2:
            for pid, _comm in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    raise WineError(f"Wine processes of {prefix} survived wineserver -k and SIGKILL: {prefix_processes(prefix)}")
