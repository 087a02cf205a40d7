"""Virtualization-based security (VBS) state: configured is in the registry, running only in WMI.

Running state: ``Win32_DeviceGuard.VirtualizationBasedSecurityStatus`` (namespace
``root\\Microsoft\\Windows\\DeviceGuard``): 0 off, 1 enabled but not running, 2 running (Microsoft Learn,
"Enable virtualization-based protection of code integrity", validation section; the same values as the
DeviceGuardSmartStatus enum of PowerShell's Get-ComputerInfo). Hotpatches need 2.

Why a subprocess: the running state lives only in the kernel and is exposed through WMI; the registry holds
just the configuration (``SYSTEM\\CurrentControlSet\\Control\\DeviceGuard`` value
``EnableVirtualizationBasedSecurity``), which says nothing about whether the hypervisor actually started.
Calling WMI from Python without pywin32 means COM by hand through ctypes; the OS's own
``powershell.exe -NoProfile -Command Get-CimInstance ... | ConvertTo-Json`` is shorter, present on every
supported Windows, and easy to fake strictly in tests. When it fails, the registry's configured value is
reported (``configured``/``off``) with the failure as ``vbs_error``, never a guess that it runs.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import List, Optional

from .registry import Registry
from .runner import Runner, system_tool

__all__ = ["VBS_QUERY", "VbsState", "powershell_argv", "read_vbs"]

DEVICE_GUARD_KEY = r"SYSTEM\CurrentControlSet\Control\DeviceGuard"
VBS_QUERY = (
    "Get-CimInstance -Namespace root\\Microsoft\\Windows\\DeviceGuard -ClassName Win32_DeviceGuard"
    " | Select-Object -Property VirtualizationBasedSecurityStatus | ConvertTo-Json -Compress"
)
_STATES = {0: "off", 1: "enabled", 2: "running"}


def powershell_argv(command: str) -> List[str]:
    """argv that runs one PowerShell command with the OS's own Windows PowerShell, no profile, no prompts."""
    return [
        system_tool("System32", "WindowsPowerShell", "v1.0", "powershell.exe"),
        "-NoProfile",
        "-NonInteractive",
        "-Command",
        command,
    ]


@dataclass(frozen=True)
class VbsState:
    """``state``: ``running`` / ``enabled`` (not running) / ``off`` from WMI, ``configured`` / ``off`` from the
    registry when WMI failed, None when nothing is known; ``status``: the WMI number (None without WMI);
    ``source``: ``wmi`` or ``registry``; ``error``: why WMI failed."""

    state: Optional[str]
    status: Optional[int]
    source: Optional[str]
    error: Optional[str] = None


def read_vbs(runner: Runner, registry: Registry, timeout_s: float = 60.0) -> VbsState:
    """Ask WMI through PowerShell; on failure fall back to the registry's configuration (see module docstring)."""
    argv = powershell_argv(VBS_QUERY)
    error: Optional[str] = None
    try:
        done = runner.run(argv, timeout_s)
        if done.rc == 0:
            status = _status(done.stdout)
            if status is not None:
                return VbsState(_STATES.get(status, "unknown"), status, "wmi")
            error = f"unexpected Win32_DeviceGuard answer: {done.stdout.strip()[:200]!r}"
        else:
            error = f"powershell exited {done.rc}: {(done.stderr or done.stdout).strip()[:300]}"
    except (OSError, subprocess.SubprocessError) as exc:
        error = f"cannot run powershell: {exc}"
    configured = registry.value(DEVICE_GUARD_KEY, "EnableVirtualizationBasedSecurity")
    if configured is None:
        return VbsState(None, None, None, error)
    state = "configured" if configured.as_int() == 1 else "off"
    return VbsState(state, None, "registry", error)


def _status(stdout: str) -> Optional[int]:
    try:
        value = json.loads(stdout.strip() or "null")
    except ValueError:
        return None
    if isinstance(value, list):  # one instance is expected; ConvertTo-Json makes a list if there are more
        value = value[0] if value else None
    status = value.get("VirtualizationBasedSecurityStatus") if isinstance(value, dict) else None
    return status if isinstance(status, int) and not isinstance(status, bool) else None
