"""Installing a KB without restart: the DISM command line and what its exit codes mean.

Why DISM and not wusa: ``DISM.exe /Online /Add-Package`` takes both .cab and .msu (Windows 8 / Server 2012
and later), installs through Component Based Servicing directly, and works in a WinRM/PSRP/SSH session.
wusa.exe goes through the Windows Update agent, which refuses to run from a remote session (it fails with
access denied under WinRM), so a remote, unattended install must not depend on it. wusa's codes (0x240006,
0x80240017) are still mapped because the same KB may have been tried with wusa or Windows Update before and
operators paste them in.

The command: ``%SystemRoot%\\System32\\Dism.exe /Online /English /Add-Package /PackagePath:<file> /NoRestart
/Quiet /LogPath:<file>``. ``/English`` keeps the text stable for the log, ``/NoRestart`` suppresses DISM's own
restart (exit 3010 then says one is needed), ``/Quiet`` suppresses prompts (it implies no restart prompt).

Exit codes (sources: Microsoft Learn "System Error Codes" for 3010/1641/5/87/740, "Windows Update error codes
by component" for the WU_* and CBS_E_* values, "Troubleshoot Windows Update error code 0x800f0823"):
see ``EXIT_CODES``; every code maps to an ``Outcome`` with ``result`` ``installed`` | ``reboot_required`` |
``already_installed`` | ``not_applicable`` | ``failed`` and a message that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .runner import system_tool

__all__ = ["EXIT_CODES", "Outcome", "dism_add_package_argv", "outcome_of"]


@dataclass(frozen=True)
class Outcome:
    """What an exit code means: ``result`` (see module docstring), ``symbol`` (the SDK name), ``message``."""

    rc: int
    result: str
    symbol: str
    message: str

    @property
    def ok(self) -> bool:
        """The package is on the host (installed now or before, or nothing to do)."""
        return self.result in ("installed", "reboot_required", "already_installed", "not_applicable")

    @property
    def reboot_required(self) -> bool:
        return self.result == "reboot_required"


# rc (unsigned 32-bit) -> (result, symbol, message)
EXIT_CODES: Dict[int, Tuple[str, str, str]] = {
    0: ("installed", "ERROR_SUCCESS", "installed"),
    3010: ("reboot_required", "ERROR_SUCCESS_REBOOT_REQUIRED", "installed; a restart completes it"),
    0x80070BC2: (
        "reboot_required",
        "HRESULT_FROM_WIN32(ERROR_SUCCESS_REBOOT_REQUIRED)",
        "installed; a restart completes it",
    ),
    1641: ("reboot_required", "ERROR_SUCCESS_REBOOT_INITIATED", "installed and the installer started a restart"),
    0x00240005: ("reboot_required", "WU_S_REBOOT_REQUIRED", "installed; a restart completes it (wusa)"),
    0x00240006: ("already_installed", "WU_S_ALREADY_INSTALLED", "the update is already installed (wusa)"),
    0x80240017: ("not_applicable", "WU_E_NOT_APPLICABLE", "the update does not apply to this host (wusa)"),
    0x800F081E: ("not_applicable", "CBS_E_NOT_APPLICABLE", "the package does not apply to this OS, edition or build"),
    0x800F0922: (
        "failed",
        "CBS_E_INSTALLERS_FAILED",
        "an installer inside the package failed (often a full System Reserved partition or a servicing stack that "
        "needs an update): read the DISM log and CBS.log",
    ),
    0x800F081F: ("failed", "CBS_E_SOURCE_MISSING", "a source file for the package is missing: run DISM /RestoreHealth"),
    0x800F0823: (
        "failed",
        "CBS_E_NEW_SERVICING_STACK_REQUIRED",
        "the package needs a newer servicing stack: install the servicing stack update (SSU) first",
    ),
    0x800F0826: ("failed", "CBS_E_PENDING_VICTIM", "another pending package failed: reboot, then retry"),
    0x800F0827: ("failed", "CBS_E_STACK_SHUTDOWN_REQUIRED", "the servicing stack was updated: retry the install"),
    0x800F0828: ("failed", "CBS_E_INSUFFICIENT_DISK_SPACE", "not enough disk space: free space on the system drive"),
    0x800F0831: ("failed", "CBS_E_STORE_CORRUPTION", "the component store is damaged: run DISM /RestoreHealth"),
    0x80070005: ("failed", "E_ACCESSDENIED", "access denied: run the engine as an Administrator"),
    5: ("failed", "ERROR_ACCESS_DENIED", "access denied: run the engine as an Administrator"),
    740: ("failed", "ERROR_ELEVATION_REQUIRED", "DISM needs an elevated token: connect as an Administrator"),
    87: (
        "failed",
        "ERROR_INVALID_PARAMETER",
        "DISM rejected the command line or the package path: check that path names an .msu or .cab",
    ),
    2: ("failed", "ERROR_FILE_NOT_FOUND", "the package file was not found on the host: copy the KB there first"),
    0x80070002: (
        "failed",
        "ERROR_FILE_NOT_FOUND",
        "the package file was not found on the host: copy the KB there first",
    ),
}


def outcome_of(rc: int) -> Outcome:
    """The Outcome of exit code ``rc`` (signed or unsigned); unknown codes are ``failed`` with the hex code."""
    code = rc & 0xFFFFFFFF
    known = EXIT_CODES.get(code)
    if known is None:
        return Outcome(code, "failed", f"0x{code:08X}", f"DISM failed with 0x{code:08X}: read the DISM log and CBS.log")
    return Outcome(code, known[0], known[1], known[2])


def dism_add_package_argv(package_path: str, log_path: Optional[str] = None) -> List[str]:
    """The exact argv that installs ``package_path`` (.msu or .cab on the host) with no restart."""
    argv = [
        system_tool("System32", "Dism.exe"),
        "/Online",
        "/English",
        "/Add-Package",
        "/PackagePath:" + package_path,
        "/NoRestart",
        "/Quiet",
    ]
    if log_path:
        argv.append("/LogPath:" + log_path)
    return argv
