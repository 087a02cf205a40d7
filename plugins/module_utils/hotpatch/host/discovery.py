"""Process discovery: every process that has a module loaded, filtered by executable name or PID."""

from __future__ import annotations

import ntpath
import posixpath
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..backends.base import Backend, ModuleInfo, ProcessHandle, ProcessInfo
from ..errors import BackendError

__all__ = ["Target", "discover", "find_module", "identity", "select"]


@dataclass
class Target:
    """A process with the module loaded, opened for patching; the caller closes ``handle``."""

    info: ProcessInfo
    handle: ProcessHandle
    module: ModuleInfo


def identity(info: ProcessInfo) -> Tuple[int, str]:
    """(pid, start_time): what the journal compares so a reused PID is never taken for the journaled process."""
    return info.pid, info.start_time


def select(processes: Sequence[ProcessInfo], names: Sequence[str], pids: Sequence[int]) -> List[ProcessInfo]:
    """Processes matching the filter: any of ``names`` (case-insensitive) or ``pids`` (PID or Windows PID);
    every process when both are empty."""
    wanted = {n.lower() for n in names}
    chosen = []
    for info in processes:
        matches = info.name.lower() in wanted or info.pid in pids or info.windows_pid in pids
        if matches or not (wanted or pids):
            chosen.append(info)
    return chosen


def find_module(modules: Sequence[ModuleInfo], name: str) -> Optional[ModuleInfo]:
    """The loaded module whose file name equals ``name`` (case-insensitive), or None."""
    want = name.lower()
    for module in modules:
        base = module.name or ntpath.basename(posixpath.basename(module.path))
        if base.lower() == want or ntpath.basename(posixpath.basename(module.path)).lower() == want:
            return module
    return None


def discover(
    backend: Backend, module_name: str, names: Sequence[str] = (), pids: Sequence[int] = ()
) -> Tuple[List[Target], List[str]]:
    """Open every selected process that has ``module_name`` loaded.

    Returns (targets, reasons): processes that cannot be opened are skipped, with a reason only when the
    request named them (a host has many processes the engine may not open and that do not matter).
    """
    targets: List[Target] = []
    reasons: List[str] = []
    explicit = bool(names or pids)
    for info in select(backend.processes(), names, pids):
        try:
            handle = backend.open(info.pid)
        except BackendError as exc:
            if explicit:
                reasons.append(f"{info.name} (pid {info.pid}): cannot open the process: {exc}")
            continue
        try:
            module = find_module(handle.modules(), module_name)
        except BackendError as exc:
            handle.close()
            if explicit:
                reasons.append(f"{info.name} (pid {info.pid}): cannot list its modules: {exc}")
            continue
        if module is None:
            handle.close()
            continue
        targets.append(Target(info, handle, module))
    return targets, reasons
