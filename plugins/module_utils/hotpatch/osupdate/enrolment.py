"""Hotpatch enrolment of a Windows host: what the OS itself records, read from HKEY_LOCAL_MACHINE.

- Server enrolment (Windows Server 2022/2025 Azure Edition, Server 2025 through Azure Arc): the targeting key
  ``SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Update\\TargetingInfo\\DynamicInstalled\\Hotpatch.<arch>``
  (``amd64`` or ``arm64``) with REG_SZ ``Name`` ("Hotpatch Enrollment Package") and ``Version``. Source:
  Microsoft Learn, "Enable Hotpatch for Azure Edition virtual machines built from ISO" (Windows Server docs).
- ``HotPatchTableSize`` (REG_DWORD, 0x1000 in the same Microsoft procedure) under ``SYSTEM\\CurrentControlSet\\
  Control\\Session Manager\\Memory Management``: the memory reserved per image for hot patch tables; 0 or
  absent means the kernel reserves none.
- Client policy (Windows 11 Enterprise 24H2+ through Windows Autopatch/Intune): REG_DWORD
  ``AllowRebootlessUpdates`` = 1 under ``SOFTWARE\\Microsoft\\PolicyManager\\current\\device\\Update`` (the
  Policy CSP Update/AllowRebootlessUpdates as the MDM stack writes it).
- Arm64 only: compiled hybrid PE (CHPE) must be off: REG_DWORD ``HotPatchRestrictions`` = 1 under
  ``SYSTEM\\CurrentControlSet\\Control\\Session Manager\\Memory Management``, effective after a reboot. Source:
  Microsoft Learn, Windows Autopatch "Hotpatch updates", operating system configuration prerequisites.

Enrolment is local evidence only: the licence and the tenant's policy decide in Microsoft's cloud whether
hotpatches are offered, and nothing on the host shows that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from .registry import Registry

__all__ = ["Enrolment", "read_enrolment", "targeting_key"]

TARGETING_ROOT = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Update\TargetingInfo\DynamicInstalled"
MEMORY_MANAGEMENT = r"SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management"
POLICY_UPDATE = r"SOFTWARE\Microsoft\PolicyManager\current\device\Update"
_ARCH = {"amd64": "amd64", "x86_64": "amd64", "x64": "amd64", "arm64": "arm64", "aarch64": "arm64"}


def targeting_key(arch: str) -> str:
    """The ``Hotpatch.<arch>`` targeting key for a host architecture (``AMD64``, ``ARM64``, ``x86_64``...)."""
    return TARGETING_ROOT + "\\Hotpatch." + _ARCH.get(arch.lower(), arch.lower())


@dataclass(frozen=True)
class Enrolment:
    """Enrolment evidence. ``arch``: ``amd64`` or ``arm64``; ``package_name`` / ``package_version``: the
    targeting key's values (None when the key is absent); ``hotpatch_table_size``: bytes (None when absent);
    ``rebootless_policy``: AllowRebootlessUpdates as bool (None when unset); ``chpe_disabled``: Arm64
    HotPatchRestrictions == 1 (None on amd64, where it does not apply)."""

    arch: str
    package_name: Optional[str]
    package_version: Optional[str]
    hotpatch_table_size: Optional[int]
    rebootless_policy: Optional[bool]
    chpe_disabled: Optional[bool]

    @property
    def state(self) -> str:
        """``enrolled`` (targeting package or client policy present), else ``not_enrolled``."""
        return "enrolled" if self.package_name or self.rebootless_policy else "not_enrolled"

    def as_dict(self) -> Dict[str, Any]:
        return {
            "state": self.state,
            "arch": self.arch,
            "package_name": self.package_name,
            "package_version": self.package_version,
            "hotpatch_table_size": self.hotpatch_table_size,
            "rebootless_policy": self.rebootless_policy,
            "chpe_disabled": self.chpe_disabled,
        }


def read_enrolment(registry: Registry, arch: str) -> Enrolment:
    """Read the enrolment evidence for ``arch`` (``platform.machine()`` on the host); raises RegistryError when
    a read is refused."""
    norm = _ARCH.get(arch.lower(), arch.lower())
    key = targeting_key(norm)
    name = registry.value(key, "Name")
    version = registry.value(key, "Version") if name is not None else None
    table = registry.value(MEMORY_MANAGEMENT, "HotPatchTableSize")
    policy = registry.value(POLICY_UPDATE, "AllowRebootlessUpdates")
    chpe: Optional[bool] = None
    if norm == "arm64":
        restrictions = registry.value(MEMORY_MANAGEMENT, "HotPatchRestrictions")
        chpe = bool(restrictions is not None and restrictions.as_int() == 1)
    policy_value = policy.as_int() if policy is not None else None
    return Enrolment(
        arch=norm,
        package_name=name.as_str() if name is not None else None,
        package_version=version.as_str() if version is not None else None,
        hotpatch_table_size=table.as_int() if table is not None else None,
        rebootless_policy=None if policy_value is None else policy_value == 1,
        chpe_disabled=chpe,
    )
