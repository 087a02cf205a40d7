"""Operating-system facts for ``inspect``: Windows version from the registry, or Wine and kernel versions."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

from ..osupdate.facts import windows_facts

__all__ = ["os_facts"]

_NT_KEY = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion"
_REGISTRY_NAMES = {
    "product_name": "ProductName",
    "current_build": "CurrentBuild",
    "ubr": "UBR",
    "edition_id": "EditionID",
    "display_version": "DisplayVersion",
}
_WINE_LOADERS = ("/usr/lib/wine/wine64", "/usr/bin/wine64", "/usr/bin/wine")


def os_facts(platform_name: str) -> Dict[str, Any]:
    """Facts for the platform the backend drives ("windows" or "wine"), plus the engine's Python and host name.

    Windows: product_name, current_build, ubr (update build revision), edition_id, display_version from
    HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion, and pending_reboot / pending_reboot_reasons from the
    servicing, Windows Update and pending-rename registry entries. Wine: wine_version (``wine64 --version``),
    kernel (Linux release), pending_reboot False. Missing values are None; this never raises.
    """
    facts: Dict[str, Any] = {
        "platform": platform_name,
        "hostname": platform.node(),
        "python_version": platform.python_version(),
        "arch": platform.machine(),
    }
    if platform_name == "windows":
        facts.update(_windows())
        reasons = _pending_reboot_reasons()
        facts.update({"pending_reboot": bool(reasons), "pending_reboot_reasons": reasons})
        facts.update(windows_facts())  # osupdate/: VBS, hotpatch enrolment, CHPE, reboot reasons (overrides above)
    else:  # a Wine host never needs a Windows reboot: restarting the program is the cold path
        facts.update({"wine_version": _wine_version(), "kernel": platform.release(), "os": platform.system()})
        facts.update({"pending_reboot": False, "pending_reboot_reasons": []})
    return facts


def _windows() -> Dict[str, Any]:
    values: Dict[str, Any] = dict.fromkeys(_REGISTRY_NAMES)
    if sys.platform == "win32":
        import winreg

        try:
            key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, _NT_KEY)
        except OSError:
            return values
        with key:
            for fact, name in _REGISTRY_NAMES.items():
                with contextlib.suppress(OSError):
                    values[fact] = winreg.QueryValueEx(key, name)[0]
    return values


# Registry evidence of a pending reboot: (hive key, value name or None for "the key exists", reason).
_PENDING_REBOOT = (
    (r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending", None, "component servicing"),
    (r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired", None, "Windows Update"),
    (r"SYSTEM\CurrentControlSet\Control\Session Manager", "PendingFileRenameOperations", "pending file renames"),
)


def _pending_reboot_reasons() -> List[str]:
    reasons: List[str] = []
    if sys.platform == "win32":
        import winreg

        for path, value, reason in _PENDING_REBOOT:
            try:
                with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path) as key:
                    if value is None or winreg.QueryValueEx(key, value)[0]:
                        reasons.append(reason)
            except OSError:
                continue
    return reasons


def _wine_version() -> Optional[str]:
    loader = os.environ.get("WINELOADER") or next((p for p in _WINE_LOADERS if os.path.exists(p)), None)
    loader = loader or shutil.which("wine64") or shutil.which("wine")
    if not loader:
        return None
    try:
        out = subprocess.run([loader, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
