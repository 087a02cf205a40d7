"""Is a reboot pending, and why: the registry evidence Windows servicing leaves behind.

Checked (all under HKEY_LOCAL_MACHINE), each a reason string in ``PendingReboot.reasons``:

- ``component_servicing``: key ``SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\
  RebootPending`` exists (CBS staged a package that completes at boot; DISM's 3010 leaves it).
- ``windows_update``: key ``SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\
  RebootRequired`` exists (the Windows Update agent installed something that needs a restart).
- ``computer_rename``: ``SYSTEM\\CurrentControlSet\\Control\\ComputerName\\ActiveComputerName`` value
  ``ComputerName`` differs (case-insensitively) from ``...\\ComputerName\\ComputerName`` value ``ComputerName``.
- ``domain_join``: key ``SYSTEM\\CurrentControlSet\\Services\\Netlogon\\JoinDomain`` or ``...\\Netlogon\\
  AvoidSpnSet`` exists (NetJoinDomain completes at the next boot).

And, in ``PendingReboot.optional`` (reported, never counted as pending): ``file_rename_operations``, a non-empty
``PendingFileRenameOperations`` (REG_MULTI_SZ) under ``SYSTEM\\CurrentControlSet\\Control\\Session Manager``.
Installers and antivirus leave entries there that never need an operator's reboot (false positives), so it
does not decide the cold path.

Sources: the same checks as the community pending-reboot tools (PowerShell Gallery's PendingReboot module,
ComputerManagementDsc's PendingReboot resource) and Windows' netsetup paths for the Netlogon keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from .registry import Registry

__all__ = ["PendingReboot", "pending_reboot"]

CBS_REBOOT_PENDING = r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending"
WU_REBOOT_REQUIRED = r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired"
SESSION_MANAGER = r"SYSTEM\CurrentControlSet\Control\Session Manager"
ACTIVE_COMPUTER_NAME = r"SYSTEM\CurrentControlSet\Control\ComputerName\ActiveComputerName"
COMPUTER_NAME = r"SYSTEM\CurrentControlSet\Control\ComputerName\ComputerName"
NETLOGON_JOIN_DOMAIN = r"SYSTEM\CurrentControlSet\Services\Netlogon\JoinDomain"
NETLOGON_AVOID_SPN_SET = r"SYSTEM\CurrentControlSet\Services\Netlogon\AvoidSpnSet"


@dataclass(frozen=True)
class PendingReboot:
    """``reasons``: evidence that a reboot is pending (cold path); ``optional``: weak evidence, reported only."""

    reasons: List[str] = field(default_factory=list)
    optional: List[str] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return bool(self.reasons)


def pending_reboot(registry: Registry) -> PendingReboot:
    """Read the evidence listed in the module docstring; raises RegistryError when a read is refused."""
    reasons: List[str] = []
    if registry.key_exists(CBS_REBOOT_PENDING):
        reasons.append("component_servicing")
    if registry.key_exists(WU_REBOOT_REQUIRED):
        reasons.append("windows_update")
    active = registry.value(ACTIVE_COMPUTER_NAME, "ComputerName")
    configured = registry.value(COMPUTER_NAME, "ComputerName")
    active_name = active.as_str() if active else None
    configured_name = configured.as_str() if configured else None
    if active_name and configured_name and active_name.upper() != configured_name.upper():
        reasons.append("computer_rename")
    if registry.key_exists(NETLOGON_JOIN_DOMAIN) or registry.key_exists(NETLOGON_AVOID_SPN_SET):
        reasons.append("domain_join")
    optional: List[str] = []
    renames = registry.value(SESSION_MANAGER, "PendingFileRenameOperations")
    if renames is not None and renames.as_list():
        optional.append("file_rename_operations")
    return PendingReboot(reasons, optional)
