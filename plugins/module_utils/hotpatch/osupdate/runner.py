"""Running the OS's own tools (DISM.exe, expand.exe, powershell.exe) behind a small interface.

``Runner.run(argv, timeout_s)`` returns a ``Completed``; tests replace it with a strict fake that checks the
exact argv. ``SubprocessRunner`` is the real one: no shell, argv passed as a list (Python quotes each item for
CreateProcess), output decoded as UTF-8 with replacement (DISM /English output is ASCII; console code pages vary).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

__all__ = ["Completed", "Runner", "SubprocessRunner", "system_tool"]


@dataclass(frozen=True)
class Completed:
    """A finished command: ``rc`` exit code as an unsigned 32-bit int (so HRESULTs read as 0x8..), text out/err."""

    argv: Sequence[str]
    rc: int
    stdout: str = ""
    stderr: str = ""


class Runner:
    """Interface: run one command to completion."""

    def run(self, argv: Sequence[str], timeout_s: float) -> Completed:
        """Run ``argv`` (no shell); raises OSError when it cannot start, subprocess.TimeoutExpired on timeout."""
        raise NotImplementedError


class SubprocessRunner(Runner):
    """The real runner (subprocess.run, no shell, no console window inheritance issues)."""

    def __init__(self, env: Optional[Dict[str, str]] = None) -> None:
        self.env = env

    def run(self, argv: Sequence[str], timeout_s: float) -> Completed:
        done = subprocess.run(
            list(argv), capture_output=True, timeout=timeout_s, check=False, env=self.env, stdin=subprocess.DEVNULL
        )
        return Completed(
            list(argv),
            done.returncode & 0xFFFFFFFF,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )


def system_tool(*parts: str) -> str:
    """Absolute path of a tool under %SystemRoot% (never PATH: a writable PATH entry must not pick our DISM).

    ``parts`` start at the Windows directory, e.g. ("System32", "Dism.exe"). A 32-bit Python on 64-bit Windows
    is redirected from System32 to SysWOW64; ``Sysnative`` reaches the native 64-bit tools then.
    """
    root = os.environ.get("SYSTEMROOT") or "C:\\Windows"  # os.environ is case-insensitive on Windows
    names = list(parts)
    if names and names[0] == "System32" and os.environ.get("PROCESSOR_ARCHITEW6432"):
        names[0] = "Sysnative"  # a WOW64 process: System32 would give the 32-bit tools
    return "\\".join([root, *names])
