"""A typical Windows host as a strict registry, and the environment that fixes the system tool paths."""

from __future__ import annotations

import pytest

from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate import (
    enrolment,
    facts,
    pending_reboot,
    vbs,
)
from ansible_collections.rebootless.windows.plugins.module_utils.hotpatch.osupdate.registry import RegValue

from .fakes import dword, sz

NT = facts.NT_CURRENT_VERSION
MM = enrolment.MEMORY_MANAGEMENT
HOTPATCH_AMD64 = enrolment.targeting_key("amd64")
HOTPATCH_ARM64 = enrolment.targeting_key("arm64")


@pytest.fixture(autouse=True)
def windows_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """System tools resolve under C:\\Windows\\System32 (a 64-bit Python: no WOW64 redirection)."""
    monkeypatch.setenv("SYSTEMROOT", "C:\\Windows")
    monkeypatch.delenv("PROCESSOR_ARCHITEW6432", raising=False)


def server_2025(**changes: RegValue | None) -> tuple[dict[tuple[str, str], RegValue], list[tuple[str, str]], list[str]]:
    """(values, absent values, absent keys) of an enrolled Windows Server 2025 Datacenter Azure Edition, amd64,
    no reboot pending. ``changes`` replace a value by its short name (None makes it absent)."""
    values: dict[str, tuple[tuple[str, str], RegValue | None]] = {
        "ProductName": ((NT, "ProductName"), sz("Windows Server 2025 Datacenter Azure Edition")),
        "CurrentBuild": ((NT, "CurrentBuild"), sz("26100")),
        "UBR": ((NT, "UBR"), dword(2894)),
        "EditionID": ((NT, "EditionID"), sz("ServerDatacenterAzure")),
        "DisplayVersion": ((NT, "DisplayVersion"), sz("24H2")),
        "HotpatchName": ((HOTPATCH_AMD64, "Name"), sz("Hotpatch Enrollment Package")),
        "HotpatchVersion": ((HOTPATCH_AMD64, "Version"), sz("10.0.26100.2894")),
        "HotPatchTableSize": ((MM, "HotPatchTableSize"), dword(0x1000)),
        "AllowRebootlessUpdates": ((enrolment.POLICY_UPDATE, "AllowRebootlessUpdates"), None),
        "HotPatchRestrictions": ((MM, "HotPatchRestrictions"), None),
        "ActiveComputerName": ((pending_reboot.ACTIVE_COMPUTER_NAME, "ComputerName"), sz("WEB01")),
        "ComputerName": ((pending_reboot.COMPUTER_NAME, "ComputerName"), sz("WEB01")),
        "PendingFileRenameOperations": ((pending_reboot.SESSION_MANAGER, "PendingFileRenameOperations"), None),
        "EnableVirtualizationBasedSecurity": ((vbs.DEVICE_GUARD_KEY, "EnableVirtualizationBasedSecurity"), dword(1)),
    }
    for name, value in changes.items():
        assert name in values, f"unknown host value {name}"
        values[name] = (values[name][0], value)
    present = {key: value for key, value in values.values() if value is not None}
    absent = [key for key, value in values.values() if value is None]
    absent_keys = [
        pending_reboot.CBS_REBOOT_PENDING,
        pending_reboot.WU_REBOOT_REQUIRED,
        pending_reboot.NETLOGON_JOIN_DOMAIN,
        pending_reboot.NETLOGON_AVOID_SPN_SET,
    ]
    return present, absent, absent_keys
